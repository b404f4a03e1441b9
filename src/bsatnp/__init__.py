"""bsatnp: Biased Scan Attention Transformer Neural Processes in PyTorch.

For your own data: :class:`Predictor` (load, condition, predict in original units,
fine-tune), :func:`grid` (target grids) and :class:`bsatnp.data.Schema`; for models and
tasks: :class:`Batch`, :mod:`bsatnp.models`, :mod:`bsatnp.tasks`.
"""

from bsatnp.batch import Batch
from bsatnp.data.tables import grid
from bsatnp.predictor import Conditioned, Predictor

__version__ = "0.1.0"

__all__ = ["Batch", "Conditioned", "Predictor", "__version__", "grid"]
