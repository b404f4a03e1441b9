"""A model that knows its envelope: value moments, spacing and extent from the card."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")
pytest.importorskip("scipy")

from bsatnp.batch import Batch  # noqa: E402
from bsatnp.data.envelope import Envelope  # noqa: E402
from bsatnp.data.normalizer import Normalizer  # noqa: E402
from bsatnp.data.schema import Schema  # noqa: E402
from bsatnp.data.tables import read_points  # noqa: E402
from bsatnp.experiment import ExperimentConfig  # noqa: E402
from bsatnp.predictor import Predictor  # noqa: E402
from bsatnp.tasks import Task, batch_generator  # noqa: E402
from bsatnp.tasks.base import context_envelope  # noqa: E402
from bsatnp.tasks.frames import LocalFrame, ValueMoments  # noqa: E402


@dataclass(frozen=True)
class _Fixed(Task):
    """Two tasks with hand-checkable values; the third slot of the first is padding."""

    name: ClassVar[str] = "fixed_for_test"
    batch_size: int = 2

    def sample(self, generator=None, split="train"):
        f = torch.tensor([[[1.0], [3.0], [100.0]], [[0.0], [0.0], [6.0]]])
        s = torch.tensor([[[0.0, 0.0], [0.5, 0.0], [9.0, 9.0]],
                          [[0.0, 0.0], [0.0, 2.0], [0.0, 5.0]]])
        mask = torch.tensor([[True, True, False], [True, True, True]])
        return Batch(f_ctx=f, s_ctx=s, mask_ctx=mask, s_test=s, f_test=f)

    def sample_with_oracle(self, generator=None, split="test"):
        return self.sample(generator, split), None

    def model_defaults(self):
        return {"dim_s": 2}


def test_context_envelope_is_hand_computed_on_valid_points_only():
    found = context_envelope(_Fixed(), n_batches=3)
    # task means 2 and 2; task variances 1 and 8 (padding ignored)
    assert found["values"]["mean"] == pytest.approx([2.0])
    assert found["values"]["std"] == pytest.approx([math.sqrt(4.5)])
    # nearest-neighbour distances: task 1 (0.5, 0.5), task 2 (2, 2, 3): medians 0.5 and 2
    assert found["spacing"] == pytest.approx(1.25)


def test_value_moments_map_the_fitted_values_onto_the_card():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.uniform(0, 9, 200), "y": rng.uniform(0, 9, 200),
                          "v": 50 + 10 * rng.standard_normal(200)})
    schema = Schema(values=("v",), space=("x", "y"))
    points, _ = read_points(frame, schema, "observations", with_values=True)
    moments = ValueMoments(mean=(6.0,), std=(1.1,))
    normalizer = Normalizer.fit(points, schema, value_moments=moments)
    model_values = normalizer.values(points.values, schema)
    assert model_values.mean() == pytest.approx(6.0, abs=1e-12)
    assert model_values.std() == pytest.approx(1.1, rel=1e-12)
    loc, _ = normalizer.gaussian(model_values, np.ones_like(model_values))
    np.testing.assert_allclose(loc, points.values, rtol=1e-12)  # and back
    local = LocalFrame.fit(points.space, points.values, 2.0, moments)
    framed = local.values(points.values)
    assert framed.mean() == pytest.approx(6.0, abs=1e-12)
    assert framed.std() == pytest.approx(1.1, rel=1e-12)
    np.testing.assert_allclose(framed * local.scale + local.shift, points.values, rtol=1e-12)


@pytest.mark.parametrize("stored, message", [
    ({"values": {"mean": [0.0], "std": [0.0]}}, "std finite and > 0"),
    ({"values": {"mean": [0.0, 1.0], "std": [1.0]}}, "same length"),
    ({"values": {"mean": [float("nan")], "std": [1.0]}}, "mean must be finite"),
    ({"values": "six"}, "values"),
    ({"space_half_width": "wide"}, "space_half_width"),
    ({"framed": "yes"}, "framed"),
    ({"spacing": [1.0]}, "spacing"),
])
def test_a_damaged_envelope_is_refused_by_name(stored, message):
    predictor = Predictor.from_pretrained("gp2d")
    predictor.card["envelope"] = {**predictor.card["envelope"], **stored}
    with pytest.raises(ValueError, match=f"envelope is invalid.*{message}"):
        predictor.envelope  # noqa: B018
    with pytest.raises(ValueError, match="envelope is invalid"):
        predictor.condition(_field(300, 5.0), values="v", space=("lon", "lat"))
    predictor.card["envelope"] = ["not", "a", "mapping"]
    with pytest.raises(ValueError, match="envelope is not a mapping"):
        predictor.envelope  # noqa: B018


def test_the_envelope_reads_the_card_typed():
    envelope = Predictor.from_pretrained("gneiting").envelope
    assert envelope.values.mean[0] == pytest.approx(6.02, abs=0.05)
    assert (envelope.min_ctx, envelope.max_ctx, envelope.framed) == (8, 15, False)
    assert Predictor(Predictor.from_pretrained("gp2d").model).envelope == Envelope()


def _gneiting_task_in_fahrenheit(predictor, index):
    """One Gneiting test task as the user's tables, values as 10·f + 50 (°F, say)."""
    task = ExperimentConfig.from_dict({"task": predictor.card["envelope"]["task"]}).task
    batch = task.sample(batch_generator(5, index), "test")
    ctx, tst = batch.context_mask()[0], batch.test_mask()[0]
    observations = pd.DataFrame({
        "x": batch.s_ctx[0][ctx][:, 0].numpy(), "y": batch.s_ctx[0][ctx][:, 1].numpy(),
        "t": batch.t_ctx[0][ctx][:, 0].numpy(), "f": 10 * batch.f_ctx[0][ctx][:, 0].numpy() + 50})
    targets = pd.DataFrame({"x": batch.s_test[0][tst][:, 0].numpy(),
                            "y": batch.s_test[0][tst][:, 1].numpy(),
                            "t": batch.t_test[0][tst][:, 0].numpy()})
    direct = predictor.model.condition(batch).predictive(
        {"s_test": batch.s_test, "t_test": batch.t_test}).mean[0][tst][:, 0].numpy()
    return observations, targets, 10 * batch.f_test[0][tst][:, 0].numpy() + 50, 10 * direct + 50


@pytest.mark.parametrize("index", [0, 1])
def test_gneiting_in_the_users_units_is_not_offset(index):
    """The Gneiting model was trained on values of mean ≈ 6: before the card's moments were
    used the same field in °F came back about 30 °F low (RMSE 33 against the model's 10)."""
    predictor = Predictor.from_pretrained("gneiting")
    observations, targets, truth, direct = _gneiting_task_in_fahrenheit(predictor, index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean = predictor.predict(observations, targets, values="f", space=("x", "y"), time="t",
                                 space_scale=1.0, time_scale=1.0, neighbours=None)["mean"]
    rmse = float(np.sqrt(((mean.to_numpy() - truth) ** 2).mean()))
    rmse_direct = float(np.sqrt(((direct - truth) ** 2).mean()))
    assert rmse < 1.3 * rmse_direct
    offset = float((mean.to_numpy() - direct).mean())  # the same model, two routes
    assert abs(offset) < 0.5 * rmse_direct


def _field(n, spread, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"lon": rng.uniform(-spread, spread, n),
                         "lat": rng.uniform(-spread / 2, spread / 2, n),
                         "v": rng.standard_normal(n)})


def _warnings_of(predictor, data, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conditioned = predictor.condition(data, neighbours=None, **kwargs)
    assert [str(w.message) for w in caught] == conditioned.warnings
    return conditioned.warnings


def test_inside_the_envelope_nothing_is_said():
    assert _warnings_of(Predictor.from_pretrained("gp2d"), _field(300, 5.0), values="v",
                        space=("lon", "lat")) == []
    assert _warnings_of(Predictor.from_pretrained("geodesic"), _field(300, 8.0), values="v",
                        space=("lon", "lat"), crs="lonlat") == []


def test_a_great_circle_model_warns_on_a_region_wider_than_its_fields():
    found = _warnings_of(Predictor.from_pretrained("geodesic"), _field(300, 60.0), values="v",
                         space=("lon", "lat"), crs="lonlat")
    assert len(found) == 2  # wider than the fields, and sparser than the training contexts
    assert "span ±59.8°" in found[0] and "trained on fields of ±10°" in found[0]
    assert "neighbours=" in found[0]
    assert "apart" in found[1]


def test_an_explicit_space_scale_that_misplaces_the_points_is_named_with_its_remedy():
    found = _warnings_of(Predictor.from_pretrained("gp2d"), _field(300, 5.0), values="v",
                         space=("lon", "lat"), space_scale=0.1)
    assert any("span ±49.8 model units" in message for message in found)
    spacing = next(message for message in found if "apart" in message)
    factor = float(spacing.split("space_scale × ")[1].split(" ")[0])
    assert 5 < factor < 20  # a tenfold scale off: roughly ×10 fixes the spacing


def test_a_stored_normaliser_warns_when_the_values_are_another_regime():
    predictor = Predictor.from_pretrained("gp2d")
    data = _field(300, 5.0)
    schema, points, normalizer = predictor.observations(data, values="v", space=("lon", "lat"))
    fitted = Predictor(predictor.model, schema, normalizer, predictor.card)
    assert _warnings_of(fitted, data) == []
    found = _warnings_of(fitted, data.assign(v=data["v"] * 1000 + 5))
    assert len(found) == 1 and "other units or another regime" in found[0]


def test_a_training_checkpoint_reads_its_tasks_envelope_not_the_2d_gp_box(tmp_path):
    """Before: a checkpoint from `bsatnp train` had no card, so Predictor.load fell back to
    the 2D GP's box (half-width 2) and no context sizes, whatever the task."""
    from bsatnp.experiment import ExperimentConfig
    from bsatnp.experiment_trainer import build_trainer

    config = ExperimentConfig.from_dict({
        "task": {"name": "gp2d", "box": [-4.0, 4.0], "batch_size": 2, "n_ctx": 24,
                 "n_test": 8, "min_ctx": 5, "max_ctx": 23},
        "model": {"num_blocks": 1, "dim": 16, "qkv_dim": 16, "ffn_dim": 32,
                  "embed_hidden": [16], "head_hidden": [16]},
        "train": {"steps": 1, "batch_size": 2, "val_every": 1, "val_batches": 1,
                  "out_dir": str(tmp_path / "run")}})
    build_trainer(config).fit(progress=False)
    predictor = Predictor.load(tmp_path / "run" / "last.safetensors")
    assert predictor.card["task"] == "gp2d"
    envelope = predictor.envelope
    assert (envelope.space_half_width, envelope.min_ctx, envelope.max_ctx, envelope.n_ctx) == (
        4.0, 5, 23, 24)
