"""Figures: a model's prediction of one field of a task, and a run's learning curve.

Matplotlib is optional (``pip install 'bsatnp[plot]'``) and imported only when a figure is
drawn; figures are rendered off-screen (Agg) without touching pyplot's global state.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bsatnp.io.files import existing_file
from bsatnp.metrics import categorical_metrics, gaussian_metrics
from bsatnp.models.base import model_device
from bsatnp.tasks import Task
from bsatnp.tasks.gp2d import GP2DTask


def plot_field(model: nn.Module, out_png: str | os.PathLike[str], seed: int = 0,
               task: Task | None = None, n_ctx: int = 200, grid_size: int = 64) -> Path:
    """One field of ``task`` predicted by ``model``, panel by panel.

    Gaussian tasks: context points, true field, predicted mean, predicted std, |error|.
    Categorical tasks: context points, true classes, most likely class, predictive entropy.

    Args:
        model: A model for the task's 2D locations.
        out_png: Output file.
        seed: Seed of the drawn task.
        task: A task with a map (``has_field``; default: the 2D GP).
        n_ctx: Number of context points.
        grid_size: Test points per grid side (a lattice task uses its own lattice).

    Returns:
        The path written.

    Raises:
        ValueError: If the task has no field to plot or ``n_ctx``/``grid_size`` is out of range.
    """
    figure_class = _figure_class()
    task = task or GP2DTask()
    if not task.has_field:
        raise ValueError(f"task {task.name!r} has no field to plot (its values are not a map)")
    batch, caption = task.field_batch(n_ctx, grid_size, torch.Generator().manual_seed(seed))
    was_training = model.training
    try:
        with torch.no_grad():
            dist = model.eval()(batch.to(model_device(model)))
    finally:
        model.train(was_training)
    side = round(batch.n_test ** 0.5)
    (x0, y0), (x1, y1) = batch.s_test[0].aminmax(dim=0)  # the grid's corners
    x0, y0, x1, y1 = float(x0), float(y0), float(x1), float(y1)
    extent = (x0, x1, y0, y1)

    def image(values: torch.Tensor) -> Any:
        return values.reshape(side, side).numpy()

    if task.likelihood == "categorical":
        probs = dist.probs.cpu()
        scores = categorical_metrics(probs, batch.f_test, batch.test_mask())
        truth, guess = batch.f_test.argmax(-1), probs.argmax(-1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
        n = batch.f_ctx.shape[-1]
        from matplotlib import colormaps
        from matplotlib.colors import ListedColormap

        classes = ListedColormap(colormaps["tab10"].colors[:n])
        top = n - 0.5
        contents = [
            ("context (observed classes)", batch.f_ctx[0].argmax(-1), classes, -0.5, top),
            ("true classes", image(truth), classes, -0.5, top),
            ("most likely class", image(guess), classes, -0.5, top),
            (f"predictive entropy (max {math.log(n):.2f})", image(entropy), "magma", None, None),
        ]
        summary = f"NLL {scores['nll']:.3f}, accuracy {scores['acc']:.3f}"
    else:
        mean, std = dist.mean.cpu(), dist.stddev.cpu()
        scores = gaussian_metrics(mean, std, batch.f_test, batch.test_mask())
        truth = batch.f_test
        lo, hi = float(truth.min()), float(truth.max())
        contents = [
            ("context (noisy values)", batch.f_ctx[0, :, 0], "viridis", lo, hi),
            ("true field", image(truth), "viridis", lo, hi),
            ("predicted mean", image(mean), "viridis", lo, hi),
            ("predicted std", image(std), "magma", None, None),
            ("|mean − truth|", image((mean - truth).abs()), "magma", None, None),
        ]
        summary = (f"NLL {scores['nll']:.3f}, RMSE {scores['rmse']:.3f}, "
                   f"95% coverage {scores['cov95']:.2f}")
    fig = figure_class(figsize=(4.4 * len(contents), 4.4), layout="constrained")
    axes = fig.subplots(1, len(contents))
    for n_panel, (ax, (title, values, cmap, vmin, vmax)) in enumerate(zip(axes, contents,
                                                                          strict=True)):
        if n_panel == 0:  # the context as points
            mappable = ax.scatter(batch.s_ctx[0, :, 0], batch.s_ctx[0, :, 1], c=values,
                                  cmap=cmap, vmin=vmin, vmax=vmax, s=14, edgecolors="k",
                                  linewidths=0.3)
        else:
            mappable = _show(ax, values, extent, cmap, vmin, vmax)
        ax.set_title(title)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_aspect("equal")
        bar = fig.colorbar(mappable, ax=ax, shrink=0.85)
        if vmin == -0.5 and task.class_names:  # a class map: one labelled tick per class
            bar.set_ticks(range(len(task.class_names)), labels=list(task.class_names))
    fig.suptitle(f"{task.name} on [{x0:.3g}, {x1:.3g}] × [{y0:.3g}, {y1:.3g}], {caption}, "
                 f"{batch.n_ctx} context points, {side}×{side} test grid — {summary}")
    return _save(fig, out_png)


def plot_learning_curve(log_jsonl: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                        out_png: str | os.PathLike[str],
                        labels: Sequence[str] | None = None) -> Path:
    """Training loss and validation NLL against the step, from :class:`Trainer` logs.

    Several logs share one figure, one colour per run (e.g. two training recipes).

    Args:
        log_jsonl: One ``log.jsonl`` or several.
        out_png: Where to write the figure.
        labels: One name per log (default: each log's directory name).

    Raises:
        FileNotFoundError: If a log does not exist.
        ValueError: If a log holds no training records or a line is not JSON, or the labels
            do not match the logs.
    """
    logs = [Path(log_jsonl)] if isinstance(log_jsonl, (str, os.PathLike)) else [
        Path(p) for p in log_jsonl]
    names = list(labels) if labels is not None else [p.parent.name or str(p) for p in logs]
    if len(names) != len(logs):
        raise ValueError(f"{len(names)} labels for {len(logs)} logs")
    figure_class = _figure_class()
    fig = figure_class(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for n, (log, name) in enumerate(zip(logs, names, strict=True)):
        records = _read_log(log)
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        val = [(r["step"], r["val_nll"]) for r in records if "val_nll" in r]
        if not train:
            raise ValueError(f"{log}: no training records (lines with 'step' and 'loss')")
        colour = f"C{n}"
        ax.plot(*zip(*train, strict=True), color=colour, alpha=0.35 if val else 1.0,
                label="train loss (NLL, mean since last record)" if len(logs) == 1
                else f"{name}: train loss")
        if val:
            ax.plot(*zip(*val, strict=True), "o-", color=colour,
                    label="validation NLL" if len(logs) == 1 else f"{name}: validation NLL")
    ax.set_xlabel("step")
    ax.set_ylabel("NLL")
    ax.set_title("learning curve" if len(logs) == 1 else "learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out_png)


def _read_log(path: Path) -> list[dict[str, Any]]:
    existing_file(path, "training log")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not JSON: {err}") from err
    return records


def _show(ax: Any, values: Any, extent: tuple[float, ...], cmap: str,
          vmin: float | None = None, vmax: float | None = None) -> Any:
    return ax.imshow(values, extent=extent, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                     interpolation="nearest")


def _save(fig: Any, out_png: str | os.PathLike[str]) -> Path:
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _figure_class() -> Any:
    """``matplotlib.figure.Figure`` (renders with Agg; no pyplot global state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'bsatnp[plot]'") from err
    return Figure
