"""Biased attention: distances → bias families → backends (dense, tiled scan, flex) → MHA."""

from bsatnp.attention.biases import AttentionBias, BiasSpec, DistanceBias
from bsatnp.attention.functional import BACKENDS, biased_attention, choose_backend
from bsatnp.attention.mha import BiasedMultiheadAttention

__all__ = [
    "BACKENDS",
    "AttentionBias",
    "BiasSpec",
    "BiasedMultiheadAttention",
    "DistanceBias",
    "biased_attention",
    "choose_backend",
]
