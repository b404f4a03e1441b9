"""Data-parallel training under torchrun: 2 CPU processes (gloo) equal one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bsatnp import cli

TINY = (
    "model: {dim: 16, num_blocks: 1, num_heads: 2, qkv_dim: 16, ffn_dim: 16, "
    "embed_hidden: [16], head_hidden: [16]}\n"
    "task: {batch_size: 4, n_ctx: 16, n_test: 16, min_ctx: 4, max_ctx: 15}\n"
    "train: {steps: 4, batch_size: 4, lr: 1.0e-3, val_every: 2, val_batches: 1, "
    "save_every: 1, log_every: 1}\n"
    "eval: {n_batches: 1}\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, steps: int | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "bsatnp", "train", *args, "--quiet"]
    if steps is not None:
        command += ["--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def weights(path) -> dict[str, torch.Tensor]:
    """Model weights, less the key-projection biases: softmax is invariant to them, so their
    exact gradient is zero and Adam turns the round-off left in it into ±lr steps."""
    return {k: v for k, v in load_file(path).items()
            if k.startswith("model/") and not k.endswith("proj_k.bias")}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_processes_train_the_same_model_as_one_and_resume(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    config = str(tmp_path / "tiny.yaml")
    assert cli.main(["train", "--config", config, "--out", str(tmp_path / "one"),
                     "--quiet"]) == 0
    done = torchrun("--config", config, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "on 2 data-parallel processes" in done.stdout and done.stdout.count("Trained") == 1
    one, two = weights(tmp_path / "one" / "last.safetensors"), weights(
        tmp_path / "two" / "last.safetensors")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5)
    log_one = (tmp_path / "one" / "log.jsonl").read_text().splitlines()
    log_two = (tmp_path / "two" / "log.jsonl").read_text().splitlines()
    assert len(log_two) == len(log_one) == 4  # one writer, one record per step
    # Resume: 2 steps, then the other 2 from the checkpoint, equals the straight run.
    assert torchrun("--config", config, "--out", str(tmp_path / "split"),
                    steps=2).returncode == 0
    resumed = torchrun("--config", config, "--resume",
                       str(tmp_path / "split" / "last.safetensors"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    split = weights(tmp_path / "split" / "last.safetensors")
    for key in two:
        torch.testing.assert_close(split[key], two[key], rtol=1e-5, atol=1e-6)


def test_a_global_batch_that_does_not_split_is_refused():
    from bsatnp.tasks.gp2d import GP2DTask
    from bsatnp.train.distributed import Replicas

    batch = GP2DTask(batch_size=3, n_ctx=8, n_test=8, min_ctx=2, max_ctx=7).sample(
        torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="batch_size=3 is not divisible by the 2"):
        Replicas(0, 2).shard(batch)
    four = GP2DTask(batch_size=4, n_ctx=8, n_test=8, min_ctx=2, max_ctx=7).sample(
        torch.Generator().manual_seed(0))
    parts = [Replicas(rank, 2).shard(four) for rank in (0, 1)]
    assert torch.equal(torch.cat([p.s_ctx for p in parts]), four.s_ctx)
