"""Evaluation bookkeeping: conditional scaled targets and the resumable per-batch cache."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bsatnp.evaluate import evaluate
from bsatnp.experiment import ExperimentConfig
from bsatnp.reports import seed_summary
from bsatnp.tasks.gp2d import GP2DTask

TASK = GP2DTask(batch_size=2, n_ctx=16, n_test=24, min_ctx=4, max_ctx=15)


class CountingModel(torch.nn.Module):
    """A tiny BSA-TNP that counts its ``predict`` calls; ``nudge`` shifts one weight."""

    def __init__(self, nudge: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = ExperimentConfig.from_dict({"model": {
            "num_blocks": 1, "dim": 16, "qkv_dim": 16, "ffn_dim": 32}}).build_model()
        with torch.no_grad():
            next(self.inner.parameters()).view(-1)[0] += nudge
        self.calls = 0

    def predict(self, batch):
        self.calls += 1
        return self.inner.predict(batch)


def run(model, cache, n=3, domains=("in_domain", "scaled"), **kwargs):
    return evaluate(model, domains, n, seed=5, progress=False, task=TASK, cache_dir=cache,
                    **kwargs)


def summaries(results):
    return {domain: {k: v for k, v in entry.items()
                     if k not in ("seconds", "cached_batches")}
            for domain, entry in results["domains"].items()}


def test_scaled_domain_draws_conditional_targets():
    results = run(CountingModel(), None, n=2)
    assert results["domains"]["scaled"]["targets"] == "conditional"
    assert results["domains"]["in_domain"]["targets"] == "joint"


def test_rerun_scores_only_missing_batches_and_matches_an_uncached_run(tmp_path):
    fresh = run(CountingModel(), None, n=5)
    model = CountingModel()
    first = run(model, tmp_path, n=3)
    assert model.calls == 6 and first["domains"]["scaled"]["cached_batches"] == 0
    second = run(model, tmp_path, n=5)
    assert model.calls == 6 + 4  # two new batches per domain
    assert second["domains"]["in_domain"]["cached_batches"] == 3
    assert summaries(second) == summaries(fresh)
    fewer = run(model, tmp_path, n=2)
    assert model.calls == 10 and summaries(fewer) == summaries(run(CountingModel(), None, n=2))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl")) == [
        "in_domain/model.jsonl", "in_domain/oracle.jsonl", "scaled/model.jsonl",
        "scaled/oracle.jsonl"]
    for name in ("model", "oracle"):
        lines = (tmp_path / "in_domain" / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == 1 + 5 and "header" in json.loads(lines[0])
        assert all(list(json.loads(line)["scores"]) == [name] for line in lines[1:])


def test_a_model_set_reuses_the_scores_of_another_and_of_each_model(tmp_path):
    a = CountingModel()
    first = run({"a": a}, tmp_path)
    assert a.calls == 6
    a_again, b = CountingModel(), CountingModel(nudge=0.5)
    both = run({"a": a_again, "b": b}, tmp_path)
    assert a_again.calls == 0 and b.calls == 6  # a and the oracle from the cache, b once each
    assert both["domains"]["in_domain"]["cached_batches"] == 0  # b had to be scored
    assert summaries(both) == summaries(run({"a": CountingModel(), "b": CountingModel(nudge=0.5)},
                                            None))
    assert both["domains"]["in_domain"]["a"] == first["domains"]["in_domain"]["a"]
    only_b = run({"b": b}, tmp_path)  # every score is cached now: nothing is drawn or scored
    assert b.calls == 6 and only_b["domains"]["scaled"]["cached_batches"] == 3
    assert summaries(only_b) == summaries(run({"b": CountingModel(nudge=0.5)}, None))


def test_the_oracle_is_kept_apart_from_the_models(tmp_path):
    model = CountingModel()
    without = run(model, tmp_path, with_oracle=False)
    assert not any(tmp_path.rglob("oracle.jsonl"))
    assert summaries(without) == summaries(run(CountingModel(), None, with_oracle=False))
    with_oracle = run(model, tmp_path)  # the model's scores are reused, the oracle added
    assert model.calls == 6 and with_oracle["domains"]["in_domain"]["cached_batches"] == 0
    assert summaries(with_oracle) == summaries(run(CountingModel(), None))
    again = run(model, tmp_path, with_oracle=False)
    assert model.calls == 6 and again["domains"]["in_domain"]["cached_batches"] == 3
    assert summaries(again) == summaries(without)


@pytest.mark.parametrize("name", ["a/b", "..", "", " a", "a.", "a\\b", "Oracle", "x:y"])
def test_a_name_that_is_not_a_safe_file_name_is_refused_before_anything_is_scored(
        tmp_path, name):
    model = CountingModel()
    with pytest.raises(ValueError, match="file names|differ only in case"):
        run({"ok": CountingModel(), name: model}, tmp_path)
    assert model.calls == 0 and not any(tmp_path.iterdir())


def test_names_differing_only_in_case_are_refused(tmp_path):
    with pytest.raises(ValueError, match="differ only in case"):
        run({"a": CountingModel(), "A": CountingModel()}, tmp_path)
    assert not any(tmp_path.iterdir())


def test_names_of_the_comparison_are_usable_file_names(tmp_path):
    names = ("bsatnp F=3", "bsatnp embed+bias", "sa-tnp", "bsatnp init=spread", "m.v2")
    results = run({name: CountingModel() for name in names}, tmp_path, n=1,
                  domains=("in_domain",))
    assert all(name in results["domains"]["in_domain"] for name in names)
    assert all((tmp_path / "in_domain" / f"{name}.jsonl").exists() for name in names)


def test_a_torn_last_line_is_dropped_and_rescored(tmp_path):
    model = CountingModel()
    run(model, tmp_path, n=3, domains=("in_domain",))
    path = tmp_path / "in_domain" / "model.jsonl"
    text = path.read_text()
    path.write_text(text[: text.rfind("\n", 0, len(text) - 1) + 1] + '{"index": 2, "sco')
    again = run(model, tmp_path, n=3, domains=("in_domain",))
    assert model.calls == 3 + 1 and again["domains"]["in_domain"]["cached_batches"] == 2
    assert summaries(again) == summaries(run(CountingModel(), None, n=3, domains=("in_domain",)))
    assert len(path.read_text().splitlines()) == 1 + 3


@pytest.mark.parametrize("change", ["weights", "seed", "task", "renamed"])
def test_cache_of_another_evaluation_is_refused_and_kept(tmp_path, change):
    run(CountingModel(), tmp_path, n=2, domains=("in_domain",))
    if change == "renamed":  # another model's file under this name
        (tmp_path / "in_domain" / "model.jsonl").rename(tmp_path / "in_domain" / "other.jsonl")
    files = sorted((tmp_path / "in_domain").iterdir())
    before = [path.read_text() for path in files]
    model = CountingModel()
    if change == "weights":
        model = CountingModel(nudge=1e-6)
    with pytest.raises(ValueError, match="another evaluation"):
        if change == "seed":
            evaluate(model, ("in_domain",), 2, seed=6, progress=False, task=TASK,
                     cache_dir=tmp_path)
        elif change == "task":
            evaluate(model, ("in_domain",), 2, seed=5, progress=False,
                     task=GP2DTask(batch_size=2, n_ctx=16, n_test=20, min_ctx=4, max_ctx=15),
                     cache_dir=tmp_path)
        elif change == "renamed":
            run({"other": model}, tmp_path, n=2, domains=("in_domain",))
        else:
            run(model, tmp_path, n=2, domains=("in_domain",))
    assert model.calls == 0
    assert sorted((tmp_path / "in_domain").iterdir()) == files
    assert [path.read_text() for path in files] == before


def test_a_foreign_file_is_refused(tmp_path):
    (tmp_path / "in_domain").mkdir()
    (tmp_path / "in_domain" / "model.jsonl").write_text("not json\n")
    with pytest.raises(ValueError, match="not a bsatnp score cache"):
        run(CountingModel(), tmp_path, n=1, domains=("in_domain",))


def test_each_domain_reports_its_paired_difference_to_in_domain():
    model = CountingModel()
    results = evaluate(model, ("shifted", "in_domain"), 3, seed=5, progress=False, task=TASK)
    shifted, base = results["domains"]["shifted"], results["domains"]["in_domain"]
    assert "vs_in_domain" not in base
    diff = shifted["vs_in_domain"]["nll"]
    assert diff["mean"] == pytest.approx(shifted["model"]["nll"]["mean"]
                                         - base["model"]["nll"]["mean"], abs=1e-12)
    assert abs(diff["mean"]) < 1e-4  # BSA-TNP is translation invariant: shifted = in-domain
    with pytest.raises(ValueError, match="vs_in_domain"):
        evaluate({"vs_in_domain/x": model}, ("in_domain",), 1, task=TASK)


def test_per_batch_scores_are_the_ones_summarised():
    results = evaluate({"a": CountingModel(), "b": CountingModel(0.5)}, ("in_domain",), 3,
                       seed=5, progress=False, task=TASK, per_batch=True)
    batches, entry = results["batches"]["in_domain"], results["domains"]["in_domain"]
    assert set(batches) == {"a", "b", "oracle"} and len(batches["a"]) == 3
    for name in ("a", "b", "oracle"):
        assert entry[name]["nll"]["mean"] == pytest.approx(
            sum(row["nll"] for row in batches[name]) / 3, abs=1e-12)
    assert "batches" not in evaluate(CountingModel(), ("in_domain",), 1, seed=5,
                                     progress=False, task=TASK)


def scored(per_batch):
    """An :func:`evaluate` result of one domain from per-batch NLLs ``{name: [...]}``."""
    entry = {"n_batches": len(next(iter(per_batch.values())))}
    for name, values in per_batch.items():
        entry[name] = {"nll": {"mean": sum(values) / len(values), "se": 0.0}}
    return {"domains": {"in_domain": entry},
            "batches": {"in_domain": {name: [{"nll": v} for v in values]
                                      for name, values in per_batch.items()}}}


def test_seed_summary_averages_seeds_per_batch_and_pairs_by_batch():
    results = scored({"ref s0": [1.0, 2.0, 3.0], "ref s1": [3.0, 4.0, 5.0],
                      "base s0": [2.0, 3.0, 3.0], "base s1": [2.0, 5.0, 7.0],
                      "free": [4.0, 3.0, 5.0]})
    groups = {"ref": ["ref s0", "ref s1"], "base": ["base s0", "base s1"], "free": ["free"]}
    out = seed_summary(results, groups, "ref")
    assert out["reference"] == "ref" and out["metrics"] == ["nll"]
    models = out["domains"]["in_domain"]["models"]
    # ref: seed means 2 and 4 → mean 3, sd √2; base: 8/3 and 14/3 → mean 11/3, sd √2
    assert (models["ref"]["seeds"], models["free"]["seeds"]) == (2, 1)
    assert (models["ref"]["nll"]["mean"], models["ref"]["nll"]["sd"]) == pytest.approx(
        (3.0, math.sqrt(2)))
    assert models["base"]["nll"]["mean"] == pytest.approx(11 / 3)
    assert math.isnan(models["free"]["nll"]["sd"])
    paired = out["domains"]["in_domain"]["paired"]
    assert set(paired) == {"base", "free"}
    # per batch, seeds averaged: ref (2, 3, 4), base (2, 4, 5): ref − base = (0, −1, −1)
    t = (-2 / 3) / (math.sqrt(1 / 3) / math.sqrt(3))
    assert paired["base"]["nll"]["mean_diff"] == pytest.approx(-2 / 3)
    assert paired["base"]["nll"]["t"] == pytest.approx(t)
    assert paired["base"]["nll"]["p"] == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t))
    # ref − free = (−2, 0, −1): mean −1, sd 1
    assert paired["free"]["nll"]["t"] == pytest.approx(-math.sqrt(3))
    with pytest.raises(ValueError, match="per_batch=True"):
        seed_summary({"domains": results["domains"]}, groups, "ref")
    with pytest.raises(ValueError, match="reference"):
        seed_summary(results, groups, "nope")
