"""Time the reference JAX BSA-TNP (dl4bi 0.1.3) on one benchmark case; prints one JSON line.

Run by the python of a separate environment where ``dl4bi`` (and JAX) is installed, never by
ours: this file imports only dl4bi, jax, flax, optax, numpy and the standard library.
``benchmarks/forward.py --reference-python PATH`` calls it once per case and round.

The model is the paper's 2D-GP configuration (SPEC §1–§3, 475,770 parameters; the parameter
tree matches ``fixtures/dl4bi_bsatnp_2dgp_fixture.npz``): locations feed the RBF-network
attention bias only, 6 KRBlocks with 4 heads and 128-wide projections, GELU MLPs.
Compilation is timed apart (ahead-of-time ``lower().compile()``), then one untimed first
execution, then ``--repeats`` timed executions, each waited for with ``block_until_ready``.

Usage (standalone):
    /path/to/refenv/bin/python benchmarks/reference_runner.py --case 512x1024 --threads 1
    /path/to/refenv/bin/python benchmarks/reference_runner.py --case train --repeats 3
    /path/to/refenv/bin/python benchmarks/reference_runner.py --versions
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time


def limit_cpus(threads: int) -> list[int]:
    """Confine this process to its first ``threads`` allowed CPUs; call before importing jax.

    XLA sizes its CPU thread pools from the CPUs the process may run on, so the affinity mask
    is what bounds JAX's parallelism (``XLA_FLAGS`` has no flag for an intra-op thread count).
    """
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    for tid in os.listdir("/proc/self/task"):  # also threads started before now (normally none)
        with contextlib.suppress(ProcessLookupError):  # a thread that has ended since
            os.sched_setaffinity(int(tid), cpus)
    return cpus


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("dl4bi", "jax", "jaxlib", "flax", "optax", "numpy")}


def build_model():
    """The 2D-GP BSA-TNP from dl4bi's public modules."""
    import flax.linen as nn
    from dl4bi.core.attention import BiasedScanAttention, MultiHeadAttention
    from dl4bi.core.bias import Bias
    from dl4bi.core.mlp import MLP
    from dl4bi.core.transformer import KRBlock
    from dl4bi.meta_learning.bsa_tnp import BSATNP

    def no_location_token(_s):  # s enters through the attention bias only
        return None

    attention = MultiHeadAttention(
        attn=BiasedScanAttention(bias={"s": Bias.build_rbf_network_bias(num_heads=4, num_basis=5)}),
        num_heads=4,
        proj_qs=MLP([128]), proj_ks=MLP([128]), proj_vs=MLP([128]), proj_out=MLP([64]),
    )
    return BSATNP(
        num_blks=6,
        embed_s=no_location_token,
        embed_all=MLP([256, 128, 64], nn.gelu),
        blk=KRBlock(attn=attention, ffn=MLP([256, 64], nn.gelu)),
        head=MLP([256, 64, 2], nn.gelu),
    )


def random_inputs(B: int, n_ctx: int, n_test: int, min_valid: int | None, seed: int = 0) -> dict:
    """Random 2D-GP-shaped inputs on [−2, 2]²; ``min_valid`` draws per-task valid counts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = {
        "s_ctx": rng.uniform(-2, 2, (B, n_ctx, 2)),
        "f_ctx": rng.standard_normal((B, n_ctx, 1)),
        "s_test": rng.uniform(-2, 2, (B, n_test, 2)),
        "f_test": rng.standard_normal((B, n_test, 1)),
    }
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    if min_valid is not None:
        valid = rng.integers(min_valid, n_ctx, (B, 1))
        arrays["mask_ctx"] = np.arange(n_ctx)[None] < valid
    return arrays


def load_inputs(path: str) -> dict:
    import numpy as np

    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def run_forward(arrays: dict, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    model = build_model()
    rss_after_import = peak_rss_mb()
    inputs = {k: jnp.asarray(v) for k, v in arrays.items() if k != "f_test"}
    inputs.setdefault("mask_ctx", None)
    params = model.init(jax.random.key(0), **inputs)["params"]

    def forward(params, inputs):
        out = model.apply({"params": params}, **inputs)
        return out.mu, out.std

    start = time.perf_counter()
    compiled = jax.jit(forward).lower(params, inputs).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, inputs))
    first_run_s = time.perf_counter() - start
    rss_after_warmup = peak_rss_mb()
    median, times = timed(lambda: jax.block_until_ready(compiled(params, inputs)), repeats)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    return {"seconds": median, "times": times, "compile_s": compile_s,
            "first_run_s": first_run_s, "rss_after_import_mb": rss_after_import,
            "rss_after_warmup_mb": rss_after_warmup,
            "num_params": int(n_params)}


def run_train(arrays: dict, repeats: int) -> dict:
    """Forward + backward + global-norm clipping (0.5) + AdamW through dl4bi's train step."""
    import jax
    import jax.numpy as jnp
    import optax
    from dl4bi.core.train import TrainState
    from dl4bi.meta_learning.data.spatial import SpatialBatch
    from dl4bi.meta_learning.steps import likelihood_train_step

    model = build_model()
    rss_after_import = peak_rss_mb()
    j = {k: jnp.asarray(v) for k, v in arrays.items()}
    batch = SpatialBatch(
        x_ctx=None, s_ctx=j["s_ctx"], f_ctx=j["f_ctx"], mask_ctx=j.get("mask_ctx"),
        x_test=None, s_test=j["s_test"], f_test=j["f_test"], mask_test=None,
        inv_permute_idx=jnp.arange(j["s_ctx"].shape[1] + j["s_test"].shape[1]),
        s_shape=(),
    )
    inputs = {k: v for k, v in batch.items() if k not in ("f_test", "mask_test")}
    params = model.init(jax.random.key(0), **inputs)["params"]
    schedule = optax.cosine_decay_schedule(1e-4, 100_000, 2e-5)
    optimizer = optax.chain(
        optax.clip_by_global_norm(0.5),
        optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=1e-4),
    )
    state = TrainState.create(apply_fn=model.apply, params=params, tx=optimizer)
    rng = jax.random.key(1)

    start = time.perf_counter()
    step = likelihood_train_step.lower(rng, state, batch).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    state, loss = jax.block_until_ready(step(rng, state, batch))
    first_run_s = time.perf_counter() - start
    rss_after_warmup = peak_rss_mb()
    times = []
    for _ in range(repeats):  # one fixed batch: steps differ only by the weights
        start = time.perf_counter()
        state, loss = jax.block_until_ready(step(rng, state, batch))
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "times": times, "compile_s": compile_s,
            "first_run_s": first_run_s, "rss_after_import_mb": rss_after_import,
            "rss_after_warmup_mb": rss_after_warmup,
            "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", help="CTXxTEST (forward, B=1) or 'train' (B=8, 512/1024)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="confine the process to this many CPUs (default: all allowed)")
    parser.add_argument("--inputs", help=".npz with s_ctx, f_ctx, [mask_ctx], s_test, f_test "
                        "(default: random inputs of the case's shape)")
    parser.add_argument("--versions", action="store_true", help="print package versions")
    args = parser.parse_args()
    if args.versions:
        import dl4bi  # noqa: F401  (fails here if dl4bi is not importable)
        import jax

        print(json.dumps({**versions(), "jax_backend": jax.default_backend()}))
        return
    if not args.case:
        parser.error("--case is required")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # ours runs on the CPU too
    cpus = limit_cpus(args.threads) if args.threads else sorted(os.sched_getaffinity(0))
    if args.inputs:
        arrays = load_inputs(args.inputs)
    elif args.case == "train":
        arrays = random_inputs(8, 512, 1024, 128)
    else:
        n_ctx, n_test = map(int, args.case.split("x"))
        arrays = random_inputs(1, n_ctx, n_test, None)
    import jax

    jax.config.update("jax_enable_x64", False)  # float32 throughout, as in the paper
    if args.case == "train":
        result = run_train(arrays, args.repeats)
    else:
        result = run_forward(arrays, args.repeats)
    result.update(case=args.case, backend="dl4bi", peak_rss_mb=peak_rss_mb(), cpus=cpus,
                  xla_flags=os.environ.get("XLA_FLAGS", ""), jax_backend=jax.default_backend(),
                  python=sys.version.split()[0], **versions())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
