"""Batches drawn ahead in worker processes: the same stream as drawn in the loop, resumable."""

from __future__ import annotations

import pytest
import torch

from bsatnp.experiment import ExperimentConfig
from bsatnp.experiment_trainer import TaskDraw, build_trainer
from bsatnp.tasks.spatial import SpatialTask
from bsatnp.train.prefetch import Prefetcher

TASK = SpatialTask(batch_size=2, n_ctx=40, n_test=16, min_ctx=8, max_ctx=40)


def _stream(prefetcher: Prefetcher, generator: torch.Generator, n: int) -> list[torch.Tensor]:
    return [prefetcher(generator).f_test for _ in range(n)]


def test_workers_draw_the_batches_of_the_loop_and_resume_from_the_generator():
    serial = _stream(Prefetcher(TaskDraw(TASK), 0), torch.Generator().manual_seed(5), 6)
    assert len({float(f.sum()) for f in serial}) == 6  # six different batches
    ahead = Prefetcher(TaskDraw(TASK), 2)
    generator = torch.Generator().manual_seed(5)
    try:
        assert all(torch.equal(a, b) for a, b in zip(serial[:3], _stream(ahead, generator, 3)))
        # A resume: a new generator at the saved state, the look-ahead restarted from it.
        saved = generator.get_state()
        assert torch.equal(ahead(generator).f_test, serial[3])
        resumed = torch.Generator()
        resumed.set_state(saved)
        assert all(torch.equal(a, b) for a, b in zip(serial[3:], _stream(ahead, resumed, 3)))
        # The generator moved elsewhere in between: the batch is still that of its seed.
        jumped = torch.Generator().manual_seed(5)
        assert torch.equal(ahead(jumped).f_test, serial[0])
    finally:
        ahead.close()


def test_negative_workers_are_refused():
    with pytest.raises(ValueError, match="workers"):
        Prefetcher(TaskDraw(TASK), -1)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        ExperimentConfig.from_dict({"train": {"workers": -1}})


def test_a_run_with_workers_resumes_exactly(tmp_path):
    def config(out):
        return ExperimentConfig.from_dict({
            "task": {"name": "spatial", "batch_size": 2, "n_ctx": 40, "n_test": 16,
                     "min_ctx": 8, "max_ctx": 40},
            "model": {"num_blocks": 1, "dim": 16, "qkv_dim": 16, "ffn_dim": 32,
                      "embed_hidden": [16], "head_hidden": [16]},
            "train": {"steps": 4, "batch_size": 2, "workers": 1, "val_every": 4,
                      "val_batches": 1, "save_every": 2, "out_dir": str(out)},
        })

    whole = build_trainer(config(tmp_path / "whole"))
    whole.fit(progress=False)
    halves = build_trainer(config(tmp_path / "halves"))
    halves.fit(steps=2, progress=False)
    resumed = build_trainer(config(tmp_path / "halves"),
                            resume=tmp_path / "halves" / "last.safetensors")
    resumed.fit(progress=False)
    assert resumed.step == whole.step == 4
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for trainer in (whole, halves, resumed):
        trainer.sample_batch.close()


def test_the_wide_spatial_config_warm_starts_from_the_shipped_spatial_model():
    from bsatnp.experiment import load_experiment

    wide, shipped = load_experiment("spatial_wide"), load_experiment("spatial")
    assert wide.model == shipped.model  # --init spatial loads its weights
    assert (wide.task.max_ctx, wide.task.n_ctx, wide.train.workers) == (2048, 2048, 12)
    assert wide.task.lengthscale == shipped.task.lengthscale  # the same prior, more context
