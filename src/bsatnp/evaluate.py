"""Evaluation of models against a task's exact oracle on the task's named domains.

The in-domain task is the one the model was trained on; each task derives its
out-of-distribution domains from it without retraining (:meth:`bsatnp.tasks.Task.domain`:
the 2D GP's ``shifted`` and ``scaled``, the geodesic GP's rotations, ...). Every domain
draws its batches from the same seed, so e.g. the shifted batches are the in-domain batches
translated: a paired comparison in which a translation-invariant model scores the same up
to rounding.

Models and oracle are scored on the same batches; the gap (model − oracle) is computed per
batch and then averaged, so its standard error is that of the paired difference. Likewise
``vs_in_domain`` (domain − in-domain, per batch index) measures what an out-of-distribution
domain costs each model, with a paired standard error.

Long evaluations can be interrupted: with ``cache_dir``, each batch's scores are appended
to ``<cache_dir>/<domain>.jsonl`` as soon as they are computed, and a rerun of the same
evaluation (same models, task, seed and oracle setting) scores only the batches missing
from the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bsatnp.batch import Batch
from bsatnp.io.files import complete_lines
from bsatnp.metrics import categorical_metrics, gaussian_metrics, summarize
from bsatnp.models.base import model_device
from bsatnp.progress import tqdm_class
from bsatnp.tasks import IN_DOMAIN, Task, batch_generator
from bsatnp.tasks.gp2d import GP2DTask

TABLE_METRICS = ("nll", "rmse", "mae", "cov50", "cov90", "cov95", "crps")
"""Columns of the markdown table of Gaussian tasks (the JSON holds every metric)."""
CATEGORICAL_TABLE_METRICS = ("nll", "acc", "brier", "ece")
"""Columns of the markdown table of categorical tasks."""


def model_metrics(model: nn.Module, batch: Batch, likelihood: str = "gaussian"
                  ) -> dict[str, float]:
    """Metrics of the model's predictive on one batch.

    Gaussian (:func:`~bsatnp.metrics.gaussian_metrics`): ``model.predict(batch)`` returns the
    mean and standard deviation ``[B, Lt, Df]``. Categorical
    (:func:`~bsatnp.metrics.categorical_metrics`): ``model(batch)`` is a ``Categorical``
    over the classes of the one-hot ``f_test``.
    """
    batch_on_device = batch.to(model_device(model))
    if likelihood == "categorical":
        with torch.no_grad():
            probs = model(batch_on_device).probs
        return categorical_metrics(probs.cpu(), batch.f_test, batch.test_mask())
    mean, std = model.predict(batch_on_device)
    return gaussian_metrics(mean.cpu(), std.cpu(), batch.f_test, batch.test_mask())


def evaluate(
    model: nn.Module | Mapping[str, nn.Module],
    domains: Sequence[str] | None = None,
    n_batches: int | Mapping[str, int] = 32,
    seed: int = 1000,
    with_oracle: bool = True,
    progress: bool = True,
    task: Task | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Score a model, or several side by side, (and the oracle) on fixed batches per domain.

    Every model sees the same batches, and the oracle is computed once per batch.

    Args:
        model: A Gaussian model that fits the task's batches (any family, or a
            training-free baseline with ``predict``), or ``{name: model}``.
        domains: Names from ``task.domains`` (default: all of them).
        n_batches: Batches per domain: one count, or a count per domain name.
        seed: Seed of the batches (the same for every domain).
        with_oracle: Also score the task's exact oracle and the gap model − oracle (tasks
            without an oracle score the models only).
        progress: Show a tqdm bar per domain.
        task: In-domain task (default: the paper's 2D GP).
        cache_dir: Directory of per-batch scores (``<domain>.jsonl``): batches already
            there are not scored again, new ones are appended as they finish.

    Returns:
        ``{"seed": seed, "task": name, "domains": {name: entry}}`` where each entry holds
        ``n_batches``, the task's description of the domain (:meth:`Task.describe`: sizes,
        box, ...), ``seconds`` (of this call), ``cached_batches`` (read from ``cache_dir``)
        and one summary
        ``{metric: {"mean", "se"}}`` per scored method: ``model`` (or each name of the
        mapping), plus ``oracle`` and the paired gaps with the oracle, ``gap`` (or
        ``gap/<name>``).

    Raises:
        ValueError: On an unknown domain, a missing count or a count below 1, a model
            named ``oracle``, or a cache file written by a different evaluation.
    """
    models = dict(model) if isinstance(model, Mapping) else {"model": model}
    if "oracle" in models or any(name.startswith(("gap", "vs_in_domain")) for name in models):
        raise ValueError("model names may not be 'oracle' or start with 'gap' or "
                         f"'vs_in_domain': {list(models)}")
    task = task or GP2DTask()
    with_oracle = with_oracle and task.has_oracle
    domains = task.domains if domains is None else tuple(domains)
    tasks = {domain: task.domain(domain) for domain in domains}  # check all first
    counts = {domain: _count(n_batches, domain) for domain in domains}
    modes = {name: m.training for name, m in models.items()}
    for m in models.values():
        m.eval()
    try:
        scored, in_rows = {}, None
        for domain in sorted(domains, key=lambda d: d != IN_DOMAIN):  # in-domain first
            cache = None
            if cache_dir is not None:
                cache = _ScoreCache(Path(cache_dir) / f"{domain}.jsonl",
                                    _cache_header(models, tasks[domain], seed, with_oracle))
            scored[domain], rows = _evaluate_domain(models, tasks[domain], counts[domain], seed,
                                                    with_oracle, progress, domain, cache,
                                                    in_rows)
            if domain == IN_DOMAIN:
                in_rows = rows
    finally:
        for name, m in models.items():
            m.train(modes[name])
    return {"seed": seed, "task": task.name, "domains": scored}


def markdown_table(results: Mapping[str, Any]) -> str:
    """Markdown table of :func:`evaluate` results: one row per domain and scored method."""
    first = next(iter(results["domains"].values()))
    summaries = [value for value in first.values() if isinstance(value, Mapping)]
    columns = TABLE_METRICS if summaries and "rmse" in summaries[0] else CATEGORICAL_TABLE_METRICS
    header = ["domain (batches×tasks)", "method", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for domain, entry in results["domains"].items():
        label = f"{domain} ({entry['n_batches']}×{entry['batch_size']})"
        methods = [key for key, value in entry.items() if isinstance(value, Mapping)]
        for name in methods:
            cells = [_mean_se(entry[name][m]) for m in columns]
            lines.append("| " + " | ".join([label, name, *cells]) + " |")
            label = ""
    lines += ["", f"Mean ± s.e. over batches of the {results.get('task', 'gp2d')} task, test "
              f"seed {results['seed']} (every domain draws from it, so domains are paired); "
              "gap = model − oracle per batch (paired s.e.); vs_in_domain = this domain − "
              "in_domain per batch index (paired s.e.)."]
    conditional = [d for d, entry in results["domains"].items()
                   if entry.get("targets") == "conditional"]
    if conditional:
        lines[-1] += (f" Test targets of {', '.join(conditional)} are drawn from their exact "
                      "conditionals given the context (same expected per-point metrics).")
    return "\n".join(lines) + "\n"


def write_results(results: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``eval.json`` and ``eval.md`` (the markdown table) into ``out_dir``.

    Returns:
        The paths of the JSON and the markdown file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "eval.json", out / "eval.md"
    json_path.write_text(json.dumps(_finite_or_none(results), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown_table(results), encoding="utf-8")
    return json_path, md_path


def _evaluate_domain(models: Mapping[str, nn.Module], task: Task, count: int, seed: int,
                     with_oracle: bool, progress: bool, domain: str, cache: _ScoreCache | None,
                     in_rows: list[dict[str, dict[str, float]]] | None,
                     ) -> tuple[dict[str, Any], list[dict[str, dict[str, float]]]]:
    """One entry of :func:`evaluate`'s ``domains`` and its per-batch scores.

    With ``in_rows`` (the in-domain scores of the same batch indices) the entry also holds
    each model's paired difference to in-domain, over the indices both have.
    """
    tqdm = tqdm_class()
    start = time.perf_counter()
    done = cache.load() if cache is not None else {}
    cached = sum(index < count for index in done)
    rows: list[dict[str, dict[str, float]]] = []
    for index in tqdm(range(count), desc=domain, disable=not progress):
        if index not in done:
            done[index] = _score_batch(models, task, batch_generator(seed, index), with_oracle)
            if cache is not None:
                cache.append(index, done[index])
        rows.append(done[index])
    gap_name = {name: "gap" if list(models) == ["model"] else f"gap/{name}" for name in models}
    names = [*models, "oracle"] if with_oracle else list(models)
    parts = {name: [row[name] for row in rows] for name in names}
    if with_oracle:
        parts |= {gap_name[name]: [_difference(row[name], row["oracle"]) for row in rows]
                  for name in models}
    if in_rows is not None:
        suffix = {name: "" if list(models) == ["model"] else f"/{name}" for name in models}
        parts |= {f"vs_in_domain{suffix[name]}": [_difference(row[name], base[name])
                                                  for row, base in zip(rows, in_rows)]
                  for name in models}
    return {
        "n_batches": count,
        **task.describe(),
        "seconds": time.perf_counter() - start,
        "cached_batches": cached,
        **{part: _summary(values) for part, values in parts.items()},
    }, rows


def _score_batch(models: Mapping[str, nn.Module], task: Task, generator: torch.Generator,
                 with_oracle: bool) -> dict[str, dict[str, float]]:
    """Metrics of every model (and the oracle) on the batch drawn from ``generator``."""
    scores = {}
    if with_oracle:
        batch, oracle = task.sample_with_oracle(generator, "test")
        scores["oracle"] = gaussian_metrics(oracle.mean, oracle.stddev, batch.f_test,
                                            batch.test_mask())
    else:
        batch = task.sample(generator, "test")
    for name, model in models.items():
        scores[name] = model_metrics(model, batch, task.likelihood)
    return scores


def _difference(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    return {key: value - b[key] for key, value in a.items()}


def _cache_header(models: Mapping[str, nn.Module], task: Task, seed: int,
                  with_oracle: bool) -> dict[str, Any]:
    """What a cached score depends on: the task, the seed, the oracle flag, every model."""
    return {"task": repr(task), "seed": seed, "with_oracle": with_oracle,
            "models": {name: _fingerprint(model) for name, model in models.items()}}


def _fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's class and state (parameters and buffers, names and values)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        flat = tensor.detach().cpu().reshape(-1).contiguous()  # 0-d tensors cannot be viewed
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _ScoreCache:
    """Append-only JSON-lines file of per-batch scores behind a header line.

    One process per file: :meth:`load` trims a torn last line, which would cut a line that
    another process is writing. Different domains use different files, so one process per
    domain may share a cache directory.

    Args:
        path: The ``.jsonl`` file (created with its directory on the first append).
        header: Identity of the evaluation; a file with another header is refused.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header

    def load(self) -> dict[int, dict[str, dict[str, float]]]:
        """Scores by batch index; a partly written last line (an interrupted run) is dropped.

        Every other line must be a complete row: ``{"index": i, "scores": {name: metrics}}``
        with one metrics mapping (metric name → number) per scored name of the header (the
        models, and ``oracle`` with the oracle), each with the same metric names on every
        row. A damaged row is an error naming the file and line, not a row to rescore: only
        the torn last line is something this class itself can leave behind, so anything
        else means the file was edited or corrupted and its other rows are suspect too.

        Raises:
            ValueError: If the file belongs to another evaluation, is not a score file, or
                has a damaged row (the message names the file and the line).
        """
        lines = complete_lines(self.path).splitlines()
        if not lines:
            return {}
        try:
            header = json.loads(lines[0])
        except ValueError as err:
            raise ValueError(f"{self.path} is not a bsatnp score cache: line 1: {err}") from err
        if header != {"header": self.header}:
            if not isinstance(header, dict) or set(header) != {"header"}:
                raise ValueError(f"{self.path} is not a bsatnp score cache: line 1 is not its "
                                 "header")
            raise ValueError(
                f"{self.path} holds scores of another evaluation (models, task, seed or "
                "oracle setting differ); delete it or choose another cache directory"
            )
        names = [*self.header["models"], *(["oracle"] if self.header["with_oracle"] else [])]
        metrics: dict[str, set[str]] = {}
        scores = {}
        for number, line in enumerate(lines[1:], start=2):
            try:
                index, row = _parse_row(line, names, metrics)
            except ValueError as err:
                raise ValueError(
                    f"{self.path}, line {number}: damaged score cache row ({err}); delete "
                    "that line (its batch is scored again) or the whole file"
                ) from err
            scores[index] = row
        return scores

    def append(self, index: int, scores: Mapping[str, Mapping[str, float]]) -> None:
        """Append one batch's scores (writing the header first into a new file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", encoding="utf-8") as handle:
            if new:
                handle.write(json.dumps({"header": self.header}) + "\n")
            handle.write(json.dumps({"index": index, "scores": scores}) + "\n")
            handle.flush()


def _parse_row(line: str, names: Sequence[str], metrics: dict[str, set[str]]
               ) -> tuple[int, dict[str, dict[str, float]]]:
    """``(index, scores)`` of one cache row (see :meth:`_ScoreCache.load`).

    ``metrics`` maps each name to the metric names of the rows read so far (filled here).

    Raises:
        ValueError: Saying what is wrong with the row.
    """
    try:
        row = json.loads(line)
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from err
    if not isinstance(row, dict) or set(row) != {"index", "scores"}:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise ValueError(f"expected the keys ['index', 'scores'], got {keys}")
    index, scores = row["index"], row["scores"]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"'index' must be a non-negative integer, got {index!r}")
    if not isinstance(scores, dict) or sorted(scores) != sorted(names):
        got = sorted(scores) if isinstance(scores, dict) else type(scores).__name__
        raise ValueError(f"'scores' must hold {sorted(names)}, got {got}")
    for name, values in scores.items():
        if not isinstance(values, dict) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
            raise ValueError(f"scores of {name!r} must map metric names to numbers, got "
                             f"{values!r}")
        expected = metrics.setdefault(name, set(values))
        if set(values) != expected:
            raise ValueError(f"scores of {name!r} have the metrics {sorted(values)}, earlier "
                             f"rows {sorted(expected)}")
    return index, scores


def _count(n_batches: int | Mapping[str, int], domain: str) -> int:
    if isinstance(n_batches, Mapping) and domain not in n_batches:
        raise ValueError(f"n_batches has no count for domain {domain!r}: {dict(n_batches)}")
    count = n_batches[domain] if isinstance(n_batches, Mapping) else n_batches
    if count < 1:
        raise ValueError(f"n_batches for {domain!r} must be >= 1, got {count}")
    return count


def _summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: {"mean": mean, "se": se} for key, (mean, se) in summarize(rows).items()}


def _mean_se(stat: Mapping[str, float | None]) -> str:
    mean, se = stat["mean"], stat["se"]
    if se is None or not math.isfinite(se):  # one batch: no standard error
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {se:.3f}"


def _finite_or_none(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj
