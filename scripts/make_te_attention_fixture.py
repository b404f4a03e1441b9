"""Write the TE-attention parity fixture from the reference package (dl4bi), not from ours.

Run it with the Python of a separate environment that has the reference and JAX (never
this project's environment; dl4bi has no licence, so nothing of it is imported here):

    python -m venv /tmp/refenv && /tmp/refenv/bin/pip install "dl4bi[cpu]==0.1.3"
    /tmp/refenv/bin/python scripts/make_te_attention_fixture.py \
        tests/fixtures/dl4bi_te_attention.npz

It builds the reference's translation-equivariant multi-head attention as its TE-TNP uses
it (one dense projection each for queries, keys, values and output; the kernel MLP of
ReLU layers over ``[per-head dot products, s_q − s_k]``; no location update), small (width
24, 4 heads, q/k/v width 32, kernel ``[16, 16, 4]``, 3 location features), initialises it,
moves every parameter by Gaussian noise (so that zero biases cannot hide a wrong mapping),
and runs it on random inputs with some keys masked. The ``.npz`` holds the parameters
(``param:['kernel']['Dense_0']['kernel']``..., flax layout: a dense kernel is
``[in, out]``, read by :func:`bsatnp.io.reference_weights.load_dl4bi_params`), the inputs and the
output; ``tests/test_tetnp.py`` loads them into :class:`bsatnp.models.tetnp.TEMultiheadAttention`.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from dl4bi.core.attention import TEMultiHeadAttention
from dl4bi.core.mlp import MLP

WIDTH, HEADS, QKV, PHI, DIM_S = 24, 4, 32, 16, 3
B, LQ, LK = 2, 5, 7


def main(path: str) -> None:
    """Build, perturb and run the reference layer; save parameters, inputs and output."""
    layer = TEMultiHeadAttention(
        num_heads=HEADS, proj_qs=MLP([QKV]), proj_ks=MLP([QKV]), proj_vs=MLP([QKV]),
        proj_out=MLP([WIDTH]), kernel=MLP([PHI, PHI, HEADS]))
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    qs = jax.random.normal(keys[0], (B, LQ, WIDTH))
    ks = jax.random.normal(keys[1], (B, LK, WIDTH))
    qs_s = jax.random.normal(keys[2], (B, LQ, DIM_S))
    ks_s = jax.random.normal(keys[3], (B, LK, DIM_S))
    mask = np.ones((B, LK), dtype=bool)
    mask[0, 5:] = False  # two padded keys in task 0, one in task 1
    mask[1, 2] = False
    params = layer.init(keys[4], qs, ks, ks, qs_s, ks_s, mask)
    leaves, tree = jax.tree_util.tree_flatten(params)
    noise = jax.random.split(keys[5], len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, noise)])
    out, _, _ = layer.apply(params, qs, ks, ks, qs_s, ks_s, jnp.asarray(mask))
    arrays = {"qs": qs, "ks": ks, "qs_s": qs_s, "ks_s": ks_s, "mask": mask, "out": out}
    for keypath, value in jax.tree_util.tree_flatten_with_path(params["params"])[0]:
        name = "".join(f"['{getattr(p, 'key', p)}']" for p in keypath)
        arrays[f"param:{name}"] = value
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    print(f"wrote {path}: {len(arrays) - 6} parameter arrays, output {np.load(path)['out'].shape}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
