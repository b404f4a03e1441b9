"""Biased attention: distances → bias families → backends (dense, tiled scan, flex) → MHA."""

from bsatnp.attention.biases import AttentionBias, BiasSpec, DistanceBias
from bsatnp.attention.functional import BACKENDS, biased_attention, choose_backend
from bsatnp.attention.mha import BiasedMultiheadAttention
from bsatnp.attention.runtime import AttentionRuntime, attention_runtime

__all__ = [
    "BACKENDS",
    "AttentionBias",
    "AttentionRuntime",
    "BiasSpec",
    "BiasedMultiheadAttention",
    "DistanceBias",
    "attention_runtime",
    "biased_attention",
    "choose_backend",
]
