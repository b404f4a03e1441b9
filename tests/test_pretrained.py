"""Every shipped model loads offline and matches its card on a few of the card's batches."""

from __future__ import annotations

import pytest

from bsatnp import Predictor
from bsatnp.evaluate import evaluate
from bsatnp.experiment import ExperimentConfig
from bsatnp.pretrained import model_card, pretrained_names


def test_at_least_the_2d_gp_model_ships():
    assert "gp2d" in pretrained_names()


@pytest.mark.parametrize("name", pretrained_names())
def test_shipped_model_matches_its_card(name):
    card = model_card(name)
    predictor = Predictor.from_pretrained(name)
    assert predictor.card == card and {"task", "training", "metrics", "envelope"} <= set(card)
    task = ExperimentConfig.from_dict({"task": card["envelope"]["task"]}).task
    n = card["check"]["in_domain_batches"]
    results = evaluate(predictor.model, ("in_domain",), n, card["evaluation"]["seed"],
                       task=task, progress=False, with_oracle=False)
    few = results["domains"]["in_domain"]["model"]["nll"]
    # The shipped weights are the ones scored: the first batches give the card's number ...
    assert few["mean"] == pytest.approx(card["check"]["nll"], abs=1e-4)
    # ... and lie within the card's spread over all its batches.
    stated = card["metrics"]["in_domain"]["model"]["nll"]
    assert abs(few["mean"] - stated["mean"]) < 4 * few["se"] + 4 * stated["se"], (few, stated)


@pytest.mark.parametrize("name", pretrained_names())
def test_a_shipped_model_is_evaluated_on_its_own_task(name):
    """A shipped model stores no training experiment: `bsatnp evaluate --checkpoint NAME`
    reads the task and evaluation protocol of its card (it once fell back to the 2D GP)."""
    from bsatnp.experiment import experiment_from_checkpoint
    from bsatnp.io.checkpoint import load_checkpoint
    from bsatnp.pretrained import checkpoint_path

    card = model_card(name)
    experiment = experiment_from_checkpoint(load_checkpoint(checkpoint_path(name)))
    assert experiment.task.name == card["task"]
    assert experiment.task == ExperimentConfig.from_dict({"task": card["envelope"]["task"]}).task
    assert experiment.eval.seed == card["evaluation"]["seed"]
    assert experiment.eval.domains_of(experiment.task) == tuple(card["evaluation"]["batches"])


def test_a_classifier_card_names_its_classes_and_other_labels_are_mapped_with_a_warning():
    import warnings

    import numpy as np

    pd = pytest.importorskip("pandas")
    predictor = Predictor.from_pretrained("sir")
    assert predictor.card["classes"] == ["infected", "recovered", "susceptible"]
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"x": rng.uniform(0, 5, 60), "y": rng.uniform(0, 5, 60),
                        "state": rng.choice(["infected", "recovered", "susceptible"], 60)})
    targets = obs[["x", "y"]].iloc[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the model's own names: no warning
        predictor.predict(obs, targets, values="state", space=("x", "y"))
    short = obs.assign(state=obs["state"].str[0].str.upper())
    with pytest.warns(UserWarning, match="I → infected, R → recovered, S → susceptible"):
        out = predictor.predict(short, targets, values="state", space=("x", "y"))
    assert set(out["predicted_class"]) <= {"I", "R", "S"}
