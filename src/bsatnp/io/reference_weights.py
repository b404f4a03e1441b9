"""Load parameters of the reference JAX implementation (dl4bi) into our models.

Into a :class:`BSATNP`, or into the TE attention of :class:`~bsatnp.models.tetnp.TETNP`
(its parity fixture).

The reference stores parameters by Flax path, e.g. ``['KRBlock_0']['attn']['proj_qs']
['Dense_0']['kernel']``, with Dense kernels as ``[in, out]``. This module only maps names
and transposes; it is used by the parity test and to import pretrained reference models.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from bsatnp.models.bsatnp import BSATNP
from bsatnp.models.tetnp import TEMultiheadAttention


def _flax_key(*path: str) -> str:
    return "".join(f"['{p}']" for p in path)


def _dense(prefix: tuple[str, ...], ours: str) -> dict[str, tuple[str, bool]]:
    return {
        f"{ours}.weight": (_flax_key(*prefix, "kernel"), True),
        f"{ours}.bias": (_flax_key(*prefix, "bias"), False),
    }


def _layernorm(prefix: tuple[str, ...], ours: str) -> dict[str, tuple[str, bool]]:
    return {
        f"{ours}.weight": (_flax_key(*prefix, "scale"), False),
        f"{ours}.bias": (_flax_key(*prefix, "bias"), False),
    }


def dl4bi_name_map(model: BSATNP) -> dict[str, tuple[str, bool]]:
    """Our state-dict name → (reference Flax path, whether to transpose).

    Supports the default 2D-GP architecture with a single ``s`` bias. Inside a KRBlock the
    reference names its pre-attention norm ``norm`` and its pre-FFN norm ``LayerNorm_0``.
    """
    names: dict[str, tuple[str, bool]] = {
        "embed.obs.weight": (_flax_key("embed_obs", "embedding"), False),
        **_layernorm(("LayerNorm_0",), "embed.norm"),
        **_layernorm(("LayerNorm_1",), "norm"),
    }
    for n in range(len(model.embed.mlp.layers)):
        names.update(_dense(("embed_all", f"Dense_{n}"), f"embed.mlp.layers.{n}"))
    for n in range(len(model.head.mlp.layers)):
        names.update(_dense(("head", f"Dense_{n}"), f"head.mlp.layers.{n}"))
    for b in range(len(model.blocks)):
        blk, ours = f"KRBlock_{b}", f"blocks.{b}"
        names.update(_layernorm((blk, "norm"), f"{ours}.norm1"))
        names.update(_layernorm((blk, "LayerNorm_0"), f"{ours}.norm2"))
        for ref, mine in (("proj_qs", "proj_q"), ("proj_ks", "proj_k"), ("proj_vs", "proj_v"),
                          ("proj_out", "proj_out")):
            names.update(_dense((blk, "attn", ref, "Dense_0"), f"{ours}.attn.{mine}"))
        for n in range(2):
            names.update(_dense((blk, "ffn", f"Dense_{n}"), f"{ours}.ffn.layers.{n}"))
        for p in ("a", "b"):
            names[f"{ours}.attn.bias.terms.0.{p}"] = (
                _flax_key(blk, "attn", "attn", f"s_bias_{p}"), False
            )
    return names


def te_attention_name_map(attn: TEMultiheadAttention) -> dict[str, tuple[str, bool]]:
    """Our state-dict name → (reference Flax path, whether to transpose) for one TE attention.

    The reference's ``TEMultiHeadAttention``: one Dense per projection, the kernel MLP φ.
    """
    names: dict[str, tuple[str, bool]] = {}
    for ref, mine in (("proj_qs", "proj_q"), ("proj_ks", "proj_k"), ("proj_vs", "proj_v"),
                      ("proj_out", "proj_out")):
        names.update(_dense((ref, "Dense_0"), mine))
    for n in range(len(attn.phi.layers)):
        names.update(_dense(("kernel", f"Dense_{n}"), f"phi.layers.{n}"))
    return names


def load_dl4bi_params(model: BSATNP | TEMultiheadAttention,
                      params: Mapping[str, np.ndarray]) -> None:
    """Copy reference parameters ``{flax path: array}`` into ``model`` in place.

    Raises:
        ValueError: If a parameter is missing, has the wrong shape, or the model has
            parameters the reference does not (an unsupported architecture).
    """
    names = (te_attention_name_map(model) if isinstance(model, TEMultiheadAttention)
             else dl4bi_name_map(model))
    state = model.state_dict()
    missing_here = sorted(set(state) - set(names))
    if missing_here:
        raise ValueError(
            f"no reference parameter for {missing_here[:5]} (unsupported architecture)"
        )
    new_state = {}
    for ours, (ref, transpose) in names.items():
        if ref not in params:
            raise ValueError(f"reference parameters lack {ref}")
        value = torch.as_tensor(np.asarray(params[ref]))
        value = value.T if transpose else value
        if tuple(value.shape) != tuple(state[ours].shape):
            raise ValueError(
                f"{ref}: shape {tuple(value.shape)} does not fit {ours} {tuple(state[ours].shape)}"
            )
        new_state[ours] = value.to(state[ours].dtype)
    model.load_state_dict(new_state)
