"""Baselines and references: the exact GP oracle, TNP-D and training-free local averages."""

from bsatnp.baselines.gp_oracle import gp_posterior
from bsatnp.baselines.idw import IDW, KNearestMean, LocalAverage
from bsatnp.models.tnpd import TNPD, TNPDConfig

__all__ = ["IDW", "TNPD", "KNearestMean", "LocalAverage", "TNPDConfig", "gp_posterior"]
