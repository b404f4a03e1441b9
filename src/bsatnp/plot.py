"""Figures: one field predicted by a model or several side by side; a run's learning curve.

Matplotlib is optional (``pip install 'bsatnp[plot]'``) and imported only when a figure is
drawn; figures are rendered off-screen (Agg) without touching pyplot's global state.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bsatnp.io.files import existing_file
from bsatnp.metrics import categorical_metrics, gaussian_metrics
from bsatnp.models.base import model_device
from bsatnp.tasks import Task
from bsatnp.tasks.gp2d import GP2DTask

Panel = tuple[str, Any, Any, "float | None", "float | None"]
"""``(title, values, colour map, vmin, vmax)``; the first panel of a row of truths is the
context as points, every other an image on the test grid."""


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
    field = _Field(task, seed, n_ctx, grid_size)
    panels, summary = field.prediction(model)
    contents = [*field.truth(), *panels]
    fig = _figure_class()(figsize=(4.4 * len(contents), 4.4), layout="constrained")
    field.draw(fig, fig.subplots(1, len(contents)), contents, context_first=True)
    fig.suptitle(f"{field.title} — {summary}")
    return _save(fig, out_png)


def plot_comparison(models: Mapping[str, nn.Module], out_png: str | os.PathLike[str],
                    seed: int = 0, task: Task | None = None, n_ctx: int = 200,
                    grid_size: int = 64) -> Path:
    """One field of ``task`` predicted by several models: the paper's comparison panels.

    The first row holds the context and the truth; each model has a row of its own with
    what :func:`plot_field` shows of a prediction (mean, std and |error|, or the most likely
    class and the entropy), on the same field, each column on one colour scale
    (:func:`shared_scales`), its scores in the row's first title.

    Args:
        models: Models by the name their row shows.
        out_png: Output file.
        seed: Seed of the drawn task.
        task: A task with a map (default: the 2D GP).
        n_ctx: Number of context points.
        grid_size: Test points per grid side (a lattice task uses its own lattice).

    Returns:
        The path written.

    Raises:
        ValueError: As :func:`plot_field`, or without any model.
    """
    if not models:
        raise ValueError("plot_comparison needs at least one model")
    field = _Field(task, seed, n_ctx, grid_size)
    rows = []
    for name, model in models.items():
        panels, summary = field.prediction(model)
        (title, *rest), *others = panels
        rows.append([(f"{name}: {title}\n{summary}", *rest), *others])
    rows = shared_scales(rows)
    width = max(len(row) for row in rows)
    fig = _figure_class()(figsize=(4.4 * width, 4.4 * (1 + len(rows))), layout="constrained")
    axes = fig.subplots(1 + len(rows), width, squeeze=False)
    for n, (ax_row, contents) in enumerate(zip(axes, [field.truth(), *rows], strict=True)):
        field.draw(fig, ax_row[:len(contents)], contents, context_first=n == 0)
        for ax in ax_row[len(contents):]:
            ax.set_axis_off()
    fig.suptitle(field.title)
    return _save(fig, out_png)


def shared_scales(rows: Sequence[Sequence[Panel]]) -> list[list[Panel]]:
    """The rows with one colour scale per column, so that the models' panels compare by colour.

    A panel without limits of its own (std, |error|, entropy) gets the minimum and maximum
    of its column over every row; the input rows are not changed.
    """
    rows = [list(row) for row in rows]
    for column in range(max(len(row) for row in rows)):
        free = [row for row in rows if len(row) > column and row[column][3] is None]
        if not free:
            continue
        lo = min(float(row[column][1].min()) for row in free)
        hi = max(float(row[column][1].max()) for row in free)
        for row in free:
            title, values, cmap, _, _ = row[column]
            row[column] = (title, values, cmap, lo, hi)
    return rows


class _Field:
    """One drawn field of a task with a map: its batch, grid and panels."""

    def __init__(self, task: Task | None, seed: int, n_ctx: int, grid_size: int) -> None:
        self.task = task or GP2DTask()
        if not self.task.has_field:
            raise ValueError(f"task {self.task.name!r} has no field to plot (its values are "
                             "not a map)")
        self.batch, caption = self.task.field_batch(n_ctx, grid_size,
                                                    torch.Generator().manual_seed(seed))
        self.side = round(self.batch.n_test ** 0.5)
        (x0, y0), (x1, y1) = self.batch.s_test[0].aminmax(dim=0)  # the grid's corners
        self.extent = (float(x0), float(x1), float(y0), float(y1))
        x0, x1, y0, y1 = self.extent
        self.title = (f"{self.task.name} on [{x0:.3g}, {x1:.3g}] × [{y0:.3g}, {y1:.3g}], "
                      f"{caption}, {self.batch.n_ctx} context points, {self.side}×{self.side} "
                      "test grid")
        categorical = self.task.likelihood == "categorical"
        self.classes = self.batch.f_ctx.shape[-1] if categorical else 0
        truth = self.batch.f_test
        self.range = (-0.5, self.classes - 0.5) if categorical else (float(truth.min()),
                                                                     float(truth.max()))

    def image(self, values: torch.Tensor) -> Any:
        return values.reshape(self.side, self.side).numpy()

    def class_map(self) -> Any:
        from matplotlib import colormaps
        from matplotlib.colors import ListedColormap

        return ListedColormap(colormaps["tab10"].colors[:self.classes])

    def truth(self) -> list[Panel]:
        """The context (as points) and the truth on the grid."""
        lo, hi = self.range
        if self.classes:
            cmap = self.class_map()
            return [("context (observed classes)", self.batch.f_ctx[0].argmax(-1), cmap, lo,
                     hi), ("true classes", self.image(self.batch.f_test.argmax(-1)), cmap,
                           lo, hi)]
        return [("context (noisy values)", self.batch.f_ctx[0, :, 0], "viridis", lo, hi),
                ("true field", self.image(self.batch.f_test), "viridis", lo, hi)]

    def prediction(self, model: nn.Module) -> tuple[list[Panel], str]:
        """``model``'s panels on the grid and a line of its scores."""
        was_training = model.training
        try:
            with torch.no_grad():
                dist = model.eval()(self.batch.to(model_device(model)))
        finally:
            model.train(was_training)
        batch, lo, hi = self.batch, *self.range
        if self.classes:
            probs = dist.probs.cpu()
            scores = categorical_metrics(probs, batch.f_test, batch.test_mask())
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
            return [("most likely class", self.image(probs.argmax(-1)), self.class_map(),
                     lo, hi),
                    (f"predictive entropy (max {math.log(self.classes):.2f})",
                     self.image(entropy), "magma", None, None)], (
                f"NLL {scores['nll']:.3f}, accuracy {scores['acc']:.3f}")
        mean, std = dist.mean.cpu(), dist.stddev.cpu()
        scores = gaussian_metrics(mean, std, batch.f_test, batch.test_mask())
        return [("predicted mean", self.image(mean), "viridis", lo, hi),
                ("predicted std", self.image(std), "magma", None, None),
                ("|mean − truth|", self.image((mean - batch.f_test).abs()), "magma", None,
                 None)], (f"NLL {scores['nll']:.3f}, RMSE {scores['rmse']:.3f}, "
                          f"cov95 {scores['cov95']:.2f}")

    def draw(self, fig: Any, axes: Any, contents: Sequence[Panel],
             context_first: bool = False) -> None:
        """Draw ``contents`` into ``axes``, one panel each.

        With ``context_first`` the first panel is the context's points; every other is an
        image on the grid.
        """
        x0, x1, y0, y1 = self.extent
        for n, (ax, (title, values, cmap, vmin, vmax)) in enumerate(zip(axes, contents,
                                                                        strict=True)):
            if context_first and n == 0:
                mappable = ax.scatter(self.batch.s_ctx[0, :, 0], self.batch.s_ctx[0, :, 1],
                                      c=values, cmap=cmap, vmin=vmin, vmax=vmax, s=14,
                                      edgecolors="k", linewidths=0.3)
            else:
                mappable = _show(ax, values, self.extent, cmap, vmin, vmax)
            ax.set_title(title)
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.set_aspect("equal")
            bar = fig.colorbar(mappable, ax=ax, shrink=0.85)
            if self.classes and vmin == -0.5 and self.task.class_names:  # a class map
                bar.set_ticks(range(len(self.task.class_names)),
                              labels=list(self.task.class_names))


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
