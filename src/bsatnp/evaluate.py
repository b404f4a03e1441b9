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
as soon as they are computed, one file per domain and scorer: ``<cache_dir>/<domain>/<name>.jsonl``
for each model and ``<cache_dir>/<domain>/oracle.jsonl`` for the oracle. A file depends only
on its scorer (the model's class and weights, or the oracle), the task and the seed, so a
rerun scores only what is missing: the batches an interrupted run did not reach, a model
added to the set, or the oracle of a run without it. Evaluations of different model sets
share one cache directory.

Models trained with several seeds are compared by :func:`seed_summary`: mean ± s.d. over
seeds, and paired t-tests against a reference model with one pair per test batch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bsatnp.batch import Batch
from bsatnp.io.files import complete_lines
from bsatnp.metrics import categorical_metrics, gaussian_metrics, mean_sd, paired_t_test, summarize
from bsatnp.models.base import model_device
from bsatnp.progress import tqdm_class
from bsatnp.tasks import IN_DOMAIN, Task, batch_generator, eval_batches
from bsatnp.tasks.gp2d import GP2DTask

TABLE_METRICS = ("nll", "rmse", "mae", "cov50", "cov90", "cov95", "crps")
"""Columns of the markdown table of Gaussian tasks (the JSON holds every metric)."""
CATEGORICAL_TABLE_METRICS = ("nll", "acc", "brier", "ece")
"""Columns of the markdown table of categorical tasks."""
_FILE_NAME = re.compile(r"[A-Za-z0-9_+=-]([A-Za-z0-9 _.+=-]*[A-Za-z0-9_+=-])?")
"""Model names usable as cache file names: letters, digits, ``_ + = -``, and inner spaces
and dots (the comparison's names are e.g. ``bsatnp F=3`` and ``bsatnp embed+bias``)."""


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


def validator(task: Task, n_batches: int, seed: int) -> Callable[[nn.Module], dict[str, float]]:
    """Mean metrics (incl. ``"nll"``) on a fixed set of ``n_batches`` batches of ``task``.

    The batches are drawn once, on the first call, from their own generator seeded with
    ``seed`` (the global RNG is untouched, so training resumes stay exact).
    """
    batches: list[Any] = []

    def validate(model: nn.Module) -> dict[str, float]:
        if not batches:
            batches.extend(eval_batches(task, n_batches, seed, split="valid"))
        summary = summarize(model_metrics(model, batch, task.likelihood) for batch in batches)
        return {key: mean for key, (mean, _) in summary.items()}

    return validate


def evaluate(
    model: nn.Module | Mapping[str, nn.Module],
    domains: Sequence[str] | None = None,
    n_batches: int | Mapping[str, int] = 32,
    seed: int = 1000,
    with_oracle: bool = True,
    progress: bool = True,
    task: Task | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    per_batch: bool = False,
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
        cache_dir: Directory of per-batch scores, one file per domain and scorer
            (``<domain>/<name>.jsonl`` per model, ``<domain>/oracle.jsonl``). A file holds
            the scores of one model (its class and weights) or of the oracle on the task's
            batches of ``seed``; a batch is drawn and scored only for the models (and
            oracle) whose files miss it, and new scores are appended as they finish. So
            a rerun continues an interrupted one, and evaluations of different model sets
            reuse each other's scores of the models they share.
        per_batch: Also return every batch's scores (for paired tests: :func:`seed_summary`).

    Returns:
        ``{"seed": seed, "task": name, "domains": {name: entry}}`` where each entry holds
        ``n_batches``, the task's description of the domain (:meth:`Task.describe`: sizes,
        box, ...), ``seconds`` (of this call), ``cached_batches`` (batches whose every score was
        read from ``cache_dir``, nothing computed) and one summary
        ``{metric: {"mean", "se"}}`` per scored method: ``model`` (or each name of the
        mapping), plus ``oracle`` and the paired gaps with the oracle, ``gap`` (or
        ``gap/<name>``). With ``per_batch``, also ``"batches": {domain: {name: [metrics of
        batch 0, 1, ...]}}`` for every model and the oracle.

    Raises:
        ValueError: On an unknown domain, a missing count or a count below 1, a model
            named ``oracle``, a model name that is not a safe file name (letters, digits,
            ``_ + = -``, inner spaces and dots; checked with or without ``cache_dir``), two
            names differing only in case, or a cache file written for another scorer, task
            or seed (or damaged; the file is left as it is).
    """
    models = dict(model) if isinstance(model, Mapping) else {"model": model}
    if "oracle" in models or any(name.startswith(("gap", "vs_in_domain")) for name in models):
        raise ValueError("model names may not be 'oracle' or start with 'gap' or "
                         f"'vs_in_domain': {list(models)}")
    unsafe = [name for name in models if not _FILE_NAME.fullmatch(name)]
    if unsafe:
        raise ValueError(f"model names must be usable as file names (letters, digits, "
                         f"'_+=-', and spaces and dots inside): {unsafe}")
    folded = [name.casefold() for name in [*models, "oracle"]]
    if len(set(folded)) != len(folded):
        raise ValueError("model names may not differ only in case (from each other or from "
                         f"'oracle'): they name files: {list(models)}")
    task = task or GP2DTask()
    with_oracle = with_oracle and task.has_oracle
    domains = task.domains if domains is None else tuple(domains)
    tasks = {domain: task.domain(domain) for domain in domains}  # check all first
    counts = {domain: _count(n_batches, domain) for domain in domains}
    modes = {name: m.training for name, m in models.items()}
    for m in models.values():
        m.eval()
    try:
        scored, in_rows, batches = {}, None, {}
        for domain in sorted(domains, key=lambda d: d != IN_DOMAIN):  # in-domain first
            caches = None
            if cache_dir is not None:
                scorers = [*models, *(["oracle"] if with_oracle else [])]
                caches = {name: _ScoreCache(
                    Path(cache_dir) / domain / f"{name}.jsonl",
                    _cache_header(name, models.get(name), tasks[domain], seed))
                    for name in scorers}
            scored[domain], rows = _evaluate_domain(models, tasks[domain], counts[domain], seed,
                                                    with_oracle, progress, domain, caches,
                                                    in_rows)
            if domain == IN_DOMAIN:
                in_rows = rows
            batches[domain] = {name: [row[name] for row in rows] for name in rows[0]}
    finally:
        for name, m in models.items():
            m.train(modes[name])
    return {"seed": seed, "task": task.name, "domains": scored,
            **({"batches": batches} if per_batch else {})}


def seed_summary(results: Mapping[str, Any], groups: Mapping[str, Sequence[str]],
                 reference: str, metrics: Sequence[str] = ("nll",)) -> dict[str, Any]:
    """Mean ± s.d. over training seeds, and paired t-tests against ``reference``, per domain.

    Every model of one row (e.g. BSA-TNP trained with seeds 0, 1, 2) was scored by the same
    :func:`evaluate` call, so all saw the same test batches. A row's per-batch score is the
    mean over its seeds of the scores on that batch; each other row is compared with
    ``reference`` by :func:`~bsatnp.metrics.paired_t_test` with one pair per test batch.

    Args:
        results: Output of :func:`evaluate` with ``per_batch=True``.
        groups: Row name → the names its seeds were evaluated under (one name for a model
            without seeds, such as a training-free baseline).
        reference: The row every other row is tested against (BSA-TNP).
        metrics: The metrics to test.

    Returns:
        ``{"reference", "metrics", "domains": {domain: {"models": {row: {"seeds": n,
        metric: {"mean", "sd"}}}, "paired": {row: {metric: {"mean_diff", "se", "t", "p",
        "n"}}}}}}`` with ``mean_diff`` = reference − row (negative: the reference scores
        lower) and ``sd`` NaN for one seed; every metric of the evaluation is summarised,
        ``metrics`` are tested.

    Raises:
        ValueError: If ``results`` has no per-batch scores, or ``reference`` or a group's
            name was not evaluated.
    """
    if "batches" not in results:
        raise ValueError("seed_summary needs the per-batch scores: evaluate(..., "
                         "per_batch=True)")
    if reference not in groups:
        raise ValueError(f"reference {reference!r} is not one of the rows {list(groups)}")
    domains = {}
    for domain, entry in results["domains"].items():
        batches = results["batches"][domain]
        missing = [name for names in groups.values() for name in names if name not in batches]
        if missing:
            raise ValueError(f"{domain}: {missing} were not evaluated")
        models = {}
        for row, names in groups.items():
            models[row] = {"seeds": len(names)}
            for metric in entry[names[0]]:
                mean, sd = mean_sd(entry[name][metric]["mean"] for name in names)
                models[row][metric] = {"mean": mean, "sd": sd}
        per_batch = {row: {metric: [sum(batches[name][i][metric] for name in names) / len(names)
                                    for i in range(entry["n_batches"])]
                           for metric in metrics}
                     for row, names in groups.items()}
        paired = {row: {metric: paired_t_test(per_batch[reference][metric], scores[metric])
                        for metric in metrics}
                  for row, scores in per_batch.items() if row != reference}
        domains[domain] = {"models": models, "paired": paired}
    return {"reference": reference, "metrics": list(metrics), "domains": domains}


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
                     with_oracle: bool, progress: bool, domain: str,
                     caches: Mapping[str, _ScoreCache] | None,
                     in_rows: list[dict[str, dict[str, float]]] | None,
                     ) -> tuple[dict[str, Any], list[dict[str, dict[str, float]]]]:
    """One entry of :func:`evaluate`'s ``domains`` and its per-batch scores.

    ``caches`` holds one file per scorer (each model, and ``oracle`` with the oracle); a
    batch is drawn and scored only for the scorers whose file misses it. With ``in_rows``
    (the in-domain scores of the same batch indices) the entry also holds each model's
    paired difference to in-domain, over the indices both have.
    """
    tqdm = tqdm_class()
    start = time.perf_counter()
    names = [*models, "oracle"] if with_oracle else list(models)
    done: dict[str, dict[int, dict[str, float]]] = {name: {} for name in names}
    if caches is not None:  # every file is checked before anything is scored
        done = {name: {index: row[name] for index, row in caches[name].load().items()}
                for name in names}
    cached = 0
    rows: list[dict[str, dict[str, float]]] = []
    for index in tqdm(range(count), desc=domain, disable=not progress):
        missing = [name for name in names if index not in done[name]]
        if missing:
            scores = _score_batch({name: models[name] for name in missing if name != "oracle"},
                                  task, batch_generator(seed, index), "oracle" in missing)
            for name in missing:
                done[name][index] = scores[name]
                if caches is not None:
                    caches[name].append(index, {name: scores[name]})
        else:
            cached += 1
        rows.append({name: done[name][index] for name in names})
    gap_name = {name: "gap" if list(models) == ["model"] else f"gap/{name}" for name in models}
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
    """Metrics of every model (and the oracle) on the batch drawn from ``generator``.

    The batch is drawn with its oracle only when the oracle is scored; both ways draw the
    same batch (the contract of :meth:`~bsatnp.tasks.Task.sample_with_oracle`).
    """
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


def _cache_header(name: str, model: nn.Module | None, task: Task, seed: int
                  ) -> dict[str, Any]:
    """What the cached scores of one scorer depend on: the task, the seed, the scorer.

    A model is identified by its name and fingerprint, the oracle (``model`` ``None``) by
    its name alone: it is the task's own.
    """
    scorer = {"oracle": True} if model is None else {"model": _fingerprint(model)}
    return {"task": repr(task), "seed": seed, "name": name, **scorer}


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
    """Append-only JSON-lines file of one scorer's per-batch scores behind a header line.

    One process per file: :meth:`load` trims a torn last line, which would cut a line that
    another process is writing. Each domain and scorer (model or oracle) has its own file,
    so processes may share a cache directory as long as no two write the same file at once:
    e.g. one process per domain, or per model with only one of them scoring the oracle.

    Args:
        path: The ``.jsonl`` file (created with its directory on the first append).
        header: Identity of the scorer's evaluation (:func:`_cache_header`, whose ``name``
            is the one key of every row's ``scores``); a file with another header is refused.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header

    def load(self) -> dict[int, dict[str, dict[str, float]]]:
        """Scores by batch index; a partly written last line (an interrupted run) is dropped.

        Every other line must be a complete row: ``{"index": i, "scores": {name: metrics}}``
        with one metrics mapping (metric name → number) under the header's ``name``, with
        the same metric names on every row. A damaged row is an error naming the file and
        line, not a row to rescore: only the torn last line is something this class itself
        can leave behind, so anything else means the file was edited or corrupted and its
        other rows are suspect too.

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
                f"{self.path} holds scores of another evaluation (model, weights, task "
                "or seed differ); delete it or choose another cache directory"
            )
        names = [self.header["name"]]
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
    except RecursionError:
        raise ValueError("nested too deeply to be a score row") from None
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
        if "nll" not in values:
            raise ValueError(f"scores of {name!r} have no 'nll' (metrics {sorted(values)})")
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
