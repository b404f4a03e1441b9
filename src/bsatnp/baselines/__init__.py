"""Baselines and references: exact GP oracle, TNP-D, TE-TNP, ConvCNP, local averages."""

from bsatnp.baselines.idw import (
    IDW,
    KNearestMean,
    LocalAverage,
    Persistence,
    calibrated_local_averages,
)
from bsatnp.models.convcnp import ConvCNP, ConvCNPConfig
from bsatnp.models.tetnp import TETNP, TETNPConfig
from bsatnp.models.tnpd import TNPD, TNPDConfig
from bsatnp.tasks.oracle import gp_posterior

__all__ = [
    "IDW", "TETNP", "TNPD", "ConvCNP", "ConvCNPConfig", "KNearestMean", "LocalAverage",
    "Persistence", "TETNPConfig", "TNPDConfig", "calibrated_local_averages", "gp_posterior",
]
