"""Reports of evaluation results: markdown tables, files, and seeds compared.

:func:`markdown_table` and :func:`write_results` present what
:func:`bsatnp.evaluate.evaluate` returns; :func:`seed_summary` compares models trained with
several seeds: mean ± s.d. over seeds, and paired t-tests against a reference model with one
pair per test batch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bsatnp.metrics import mean_sd, paired_t_test

TABLE_METRICS = ("nll", "rmse", "mae", "cov50", "cov90", "cov95", "crps")
"""Columns of the markdown table of Gaussian tasks (the JSON holds every metric)."""
CATEGORICAL_TABLE_METRICS = ("nll", "acc", "brier", "ece")
"""Columns of the markdown table of categorical tasks."""
DISTRIBUTION_TABLE_METRICS = ("deviance",)
"""Columns the other likelihoods add (counts); a table shows the columns its scores have."""


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
    present = summaries[0] if summaries else {}
    order = (*TABLE_METRICS, *CATEGORICAL_TABLE_METRICS, *DISTRIBUTION_TABLE_METRICS)
    columns = [metric for metric in dict.fromkeys(order) if metric in present]
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
