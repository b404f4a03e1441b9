"""bsatnp: Biased Scan Attention Transformer Neural Processes in PyTorch.

For your own data: :class:`Predictor` (load, condition, predict in original units,
fine-tune), :func:`choose_neighbours` (the neighbourhood size, fitted on held-out rows),
:func:`grid` (target grids), :func:`aggregate` (areal sums or means of joint samples)
and :class:`bsatnp.data.Schema`; for models and
tasks: :class:`Batch`, :mod:`bsatnp.models`, :mod:`bsatnp.tasks`. ``Predictor``,
``Conditioned`` and ``grid`` are imported on first use, so ``import bsatnp.tasks`` stays
free of the model zoo.
"""

from typing import Any

from bsatnp.batch import Batch

__version__ = "0.1.0"

__all__ = ["Batch", "Conditioned", "Predictor", "__version__", "aggregate", "choose_neighbours",
           "grid"]

_LAZY = {"Predictor": "bsatnp.predictor", "Conditioned": "bsatnp.conditioned",
         "grid": "bsatnp.data.tables", "choose_neighbours": "bsatnp.holdout",
         "aggregate": "bsatnp.joint_data"}


def __getattr__(name: str) -> Any:
    """Import the high-level API on first access (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bsatnp' has no attribute {name!r}")
