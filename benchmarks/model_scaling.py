"""Time and peak memory of one inference forward against the number of points, per model.

For each model (a bundled config: by default BSA-TNP, TNP-D, TE-TNP and ConvCNP as the
paper configures them for the 2D GP) and each size ``N`` (``N`` context points and ``N``
test points, uniform on [−2, 2]², B = 1, freshly initialised weights: the cost does not
depend on them), one forward runs in a forked process of its own, so its peak RSS is its
own, under an address-space limit (``--memory-gb``) and a wall-clock limit (``--timeout``).
A model that fails at a size (out of memory, over time, or killed) is not run at larger
sizes: the figure shows where each one stops. Each child first runs a small forward
(256/256) untimed, so kernels and caches are warm.

Usage:
    python benchmarks/model_scaling.py --threads 2 \
        --sizes 256,1024,4096,16384,65536 --memory-gb 16 --timeout 600 \
        --out benchmarks/results/model_scaling.json --png docs/results/model_scaling.png
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from queue import Empty
from typing import Any

import torch
from common import peak_rss_mb, run_meta, save_figure, write_json
from forward import gp_like_batch

from bsatnp.experiment import load_experiment

MODELS = {"BSA-TNP": "gp2d", "TNP-D": "gp2d_tnpd", "TE-TNP": "gp2d_tetnp_paper",
          "ConvCNP": "gp2d_convcnp_paper"}


def forward_once(config: str, size: int, threads: int, memory_gb: float) -> dict[str, Any]:
    """In the child: one timed forward of ``config``'s model at ``size`` points."""
    limit = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = load_experiment(config).build_model().eval()
    try:
        with torch.no_grad():
            model(gp_like_batch(1, 256, 256, None))
            batch = gp_like_batch(1, size, size, None)
            start = time.perf_counter()
            model(batch)
            seconds = time.perf_counter() - start
    except ValueError as err:  # a model's own guard (TE-TNP's max_pair_elements)
        return {"failed": "refused by the model's size guard", "error": str(err)[:300]}
    except (MemoryError, RuntimeError) as err:  # an allocation the limit refused
        if isinstance(err, RuntimeError) and "alloc" not in str(err).lower() and \
                "memory" not in str(err).lower():
            raise
        return {"failed": "out of memory", "error": f"{type(err).__name__}: {err}"[:300]}
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def run_case(config: str, size: int, threads: int, memory_gb: float,
             timeout: float) -> dict[str, Any]:
    """:func:`forward_once` in a forked process, with its failures as results."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def child() -> None:
        queue.put(forward_once(config, size, threads, memory_gb))

    process = context.Process(target=child)
    process.start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = queue.get(timeout=2)
            break
        except Empty:
            if time.monotonic() > deadline:
                process.kill()
                result = {"failed": f"over {timeout:g} s"}
                break
            if not process.is_alive():
                result = {"failed": f"killed (exit code {process.exitcode})"}
                break
    process.join()
    return result


def plot(results: dict[str, dict[str, dict[str, Any]]], out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (t_ax, m_ax) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for n, (name, cases) in enumerate(results.items()):
        colour = f"C{n}"
        done = [(int(size), case) for size, case in cases.items() if "seconds" in case]
        failed = [int(size) for size, case in cases.items() if "failed" in case]
        if done:
            t_ax.plot([s for s, _ in done], [c["seconds"] for _, c in done], "o-",
                      color=colour, label=name)
            m_ax.plot([s for s, _ in done], [c["peak_rss_mb"] / 1024 for _, c in done], "o-",
                      color=colour, label=name)
        for size in failed:  # where the model stopped, on the axis' floor: × out of memory
            timed_out = cases[str(size)]["failed"].startswith("over")  # or refused, ▷ time
            for ax in (t_ax, m_ax):  # each model a little to the right of the one before
                ax.plot([size * 1.08**n], [0], ">" if timed_out else "x", color=colour, ms=9,
                        mew=2, clip_on=False, transform=ax.get_xaxis_transform())
    for ax, label in ((t_ax, "forward seconds"), (m_ax, "peak RSS (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context points = test points (B = 1)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    t_ax.legend(fontsize="small")
    fig.suptitle("one inference forward against the number of points "
                 "(on the floor: × out of memory or refused, ▷ over the time limit)")
    save_figure(fig, out_png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(f"{k}={v}" for k, v in MODELS.items()),
                        help="NAME=CONFIG pairs, comma-separated")
    parser.add_argument("--sizes", default="256,1024,4096,16384,65536")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-gb", type=float, default=16.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--out", default="benchmarks/results/model_scaling.json")
    parser.add_argument("--png", help="also write the figure here")
    args = parser.parse_args()
    models = dict(pair.split("=", 1) for pair in args.models.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, config in models.items():
        results[name] = {}
        for size in sizes:
            case = run_case(config, size, args.threads, args.memory_gb, args.timeout)
            results[name][str(size)] = case
            shown = case.get("failed") or (f"{case['seconds']:.3f} s, "
                                           f"{case['peak_rss_mb']:.0f} MiB")
            print(f"{name} ({config}) at {size}: {shown}", flush=True)
            if "failed" in case:
                break
    write_json(args.out, {**run_meta(args.threads), "sizes": sizes, "models": models,
                          "memory_gb": args.memory_gb, "timeout_s": args.timeout,
                          "results": results})
    if args.png:
        plot(results, args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
