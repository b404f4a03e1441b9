"""Baselines and references in one place, for comparisons.

The exact GP oracle, the paper's neural baselines (TNP-D, TE-TNP, ConvCNP) and the
training-free local averages (IDW, k-NN mean, persistence).

Every model here is a :class:`~bsatnp.models.base.NeuralProcess` family defined under
:mod:`bsatnp.models`; this namespace gathers them for comparisons.
"""

from bsatnp.models.convcnp import ConvCNP, ConvCNPConfig
from bsatnp.models.local_average import (
    IDW,
    LOCAL_AVERAGES,
    KNearestMean,
    LocalAverage,
    Persistence,
    calibrated_local_averages,
)
from bsatnp.models.tetnp import TETNP, TETNPConfig
from bsatnp.models.tnpd import TNPD, TNPDConfig
from bsatnp.tasks.oracle import gp_posterior

__all__ = [
    "IDW", "LOCAL_AVERAGES", "TETNP", "TNPD", "ConvCNP", "ConvCNPConfig", "KNearestMean",
    "LocalAverage", "Persistence", "TETNPConfig", "TNPDConfig", "calibrated_local_averages",
    "gp_posterior",
]
