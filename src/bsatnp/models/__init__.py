"""Models: the :class:`NeuralProcess` contract, the BSA-TNP and its parts; baselines beside."""

from bsatnp.models.base import NeuralProcess
from bsatnp.models.bsatnp import BSATNP
from bsatnp.models.config import BSATNPConfig

__all__ = ["BSATNP", "BSATNPConfig", "NeuralProcess"]
