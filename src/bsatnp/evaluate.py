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

The scores cache lives in :mod:`bsatnp.score_cache`; tables, result files and comparisons
of seeds in :mod:`bsatnp.reports`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bsatnp.batch import Batch
from bsatnp.likelihoods import likelihood_family
from bsatnp.metrics import (
    categorical_metrics,
    distribution_metrics,
    gaussian_metrics,
    summarize,
)
from bsatnp.models.base import model_device
from bsatnp.progress import tqdm_class
from bsatnp.score_cache import ScoreCache, cache_header
from bsatnp.tasks import IN_DOMAIN, Task, batch_generator, eval_batches
from bsatnp.tasks.gp2d import GP2DTask

_FILE_NAME = re.compile(r"[A-Za-z0-9_+=-]([A-Za-z0-9 _.+=-]*[A-Za-z0-9_+=-])?")
"""Model names usable as cache file names: letters, digits, ``_ + = -``, and inner spaces
and dots (the comparison's names are e.g. ``bsatnp F=3`` and ``bsatnp embed+bias``)."""


def model_metrics(model: nn.Module, batch: Batch, likelihood: str = "gaussian"
                  ) -> dict[str, float]:
    """Metrics of the model's predictive on one batch.

    Gaussian (:func:`~bsatnp.metrics.gaussian_metrics`): ``model.predict(batch)`` returns the
    mean and standard deviation ``[B, Lt, Df]``. Categorical
    (:func:`~bsatnp.metrics.categorical_metrics`): ``model(batch)`` is a ``Categorical``
    over the classes of the one-hot ``f_test``. Any other likelihood
    (:func:`~bsatnp.metrics.distribution_metrics`): scored through its family. A model
    that states its likelihood is scored through its own (a Poisson local average on a
    negative-binomial task, say); ``likelihood`` serves the others.
    """
    likelihood = str(getattr(model, "likelihood", likelihood))
    batch_on_device = batch.to(model_device(model))
    if likelihood == "categorical":
        with torch.no_grad():
            probs = model(batch_on_device).probs
        return categorical_metrics(probs.cpu(), batch.f_test, batch.test_mask())
    if likelihood != "gaussian":
        with torch.no_grad():
            dist = model(batch_on_device)
        return distribution_metrics(likelihood_family(likelihood), dist,
                                    batch_on_device.f_test, batch_on_device.test_mask())
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
        per_batch: Also return every batch's scores (for paired tests:
            :func:`bsatnp.reports.seed_summary`).

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
                caches = {name: ScoreCache(
                    Path(cache_dir) / domain / f"{name}.jsonl",
                    cache_header(name, models.get(name), tasks[domain], seed))
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


def _evaluate_domain(models: Mapping[str, nn.Module], task: Task, count: int, seed: int,
                     with_oracle: bool, progress: bool, domain: str,
                     caches: Mapping[str, ScoreCache] | None,
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
        scores["oracle"] = (
            gaussian_metrics(oracle.mean, oracle.stddev, batch.f_test, batch.test_mask())
            if task.likelihood == "gaussian" else distribution_metrics(
                likelihood_family(task.likelihood), oracle, batch.f_test, batch.test_mask()))
    else:
        batch = task.sample(generator, "test")
    for name, model in models.items():
        scores[name] = model_metrics(model, batch, task.likelihood)
    return scores


def _difference(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    return {key: value - b[key] for key, value in a.items()}


def _count(n_batches: int | Mapping[str, int], domain: str) -> int:
    if isinstance(n_batches, Mapping) and domain not in n_batches:
        raise ValueError(f"n_batches has no count for domain {domain!r}: {dict(n_batches)}")
    count = n_batches[domain] if isinstance(n_batches, Mapping) else n_batches
    if count < 1:
        raise ValueError(f"n_batches for {domain!r} must be >= 1, got {count}")
    return count


def _summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: {"mean": mean, "se": se} for key, (mean, se) in summarize(rows).items()}


