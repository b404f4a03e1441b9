"""bsatnp: Biased Scan Attention Transformer Neural Processes in PyTorch."""

from bsatnp.batch import Batch

__version__ = "0.1.0"

__all__ = ["Batch", "__version__"]
