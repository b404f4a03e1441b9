"""Models: the BSA-TNP, its configuration, blocks and likelihood heads."""

from bsatnp.models.bsatnp import BSATNP
from bsatnp.models.config import BSATNPConfig
from bsatnp.models.heads import masked_nll

__all__ = ["BSATNP", "BSATNPConfig", "masked_nll"]
