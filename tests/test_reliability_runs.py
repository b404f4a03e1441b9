"""Data loss on the own-data surface: outputs never replace inputs, every output is atomic,
fine-tuning resumes exactly, and one process at a time writes a run directory."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import dead_pid

pd = pytest.importorskip("pandas")

from bsatnp import cli  # noqa: E402
from bsatnp.io import files as io_files  # noqa: E402
from bsatnp.models import BSATNP  # noqa: E402
from bsatnp.predictor import Predictor  # noqa: E402
from bsatnp.train import run_dir  # noqa: E402

ROLES = ["--values", "v", "--space", "x", "y"]
TINY = ("model: {dim: 8, num_blocks: 1, num_heads: 2, qkv_dim: 8, ffn_dim: 8, "
        "embed_hidden: [8], head_hidden: [8]}\n"
        "task: {batch_size: 2, n_ctx: 8, n_test: 8, min_ctx: 2, max_ctx: 7}\n"
        "train: {steps: %d, batch_size: 2, val_every: 2, val_batches: 1, save_every: 1}\n"
        "eval: {n_batches: 1}\n")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    n = 120
    data = pd.DataFrame({"x": rng.uniform(0, 3, n), "y": rng.uniform(0, 3, n)})
    data["v"] = np.sin(2 * data["x"]) + rng.normal(0, 0.1, n)
    data.to_csv(root / "obs.csv", index=False)
    data.iloc[:7][["x", "y"]].to_csv(root / "targets.csv", index=False)
    torch.manual_seed(0)
    Predictor(BSATNP(num_blocks=1, dim=8, num_heads=2, qkv_dim=8, ffn_dim=8, embed_hidden=(8,),
                     head_hidden=(8,))).save(root / "bare.safetensors")
    return root


def predict_args(files, output, **given):
    args = ["predict", "--checkpoint", str(files / "bare.safetensors"), "--observations",
            str(given.get("observations", files / "obs.csv")), *ROLES, "--targets",
            str(given.get("targets", files / "targets.csv")), "--output", str(output),
            "--quiet"]
    return args


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------- 1. outputs never replace inputs
@pytest.mark.parametrize("case", ["observations", "targets", "link to observations",
                                  "other spelling", "directory"])
def test_predict_output_never_replaces_an_input(files, tmp_path, capsys, case):
    """Before: ``--output`` equal to ``--observations``/``--targets`` overwrote it, exit 0."""
    obs, targets = tmp_path / "obs.csv", tmp_path / "targets.csv"
    obs.write_bytes((files / "obs.csv").read_bytes())
    targets.write_bytes((files / "targets.csv").read_bytes())
    before = {obs: obs.read_bytes(), targets: targets.read_bytes()}
    output = {"observations": obs, "targets": targets, "other spelling":
              tmp_path / "sub" / ".." / "obs.csv", "directory": tmp_path,
              "link to observations": tmp_path / "link.csv"}[case]
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.csv").symlink_to(obs)
    code = cli.main(predict_args(files, output, observations=obs, targets=targets))
    err = one_line(capsys)
    assert code == 2
    assert ("is a directory" if case == "directory" else "destroy your input") in err
    assert all(path.read_bytes() == data for path, data in before.items())


@pytest.mark.parametrize("suffix", [".csv", ".nc", ".parquet"])
def test_a_full_disk_keeps_the_previous_output(files, tmp_path, capsys, monkeypatch, suffix):
    """Injected ``OSError(ENOSPC)`` while writing: the old output stays, no temp file."""
    pytest.importorskip("xarray")
    output = tmp_path / f"pred{suffix}"
    assert cli.main(predict_args(files, output)) == 0
    capsys.readouterr()
    before = output.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io_files.os, "fsync", full)
    assert cli.main(predict_args(files, output) + ["--interval", "0.5"]) == 2
    err = one_line(capsys)
    assert f"error: cannot write {output}" in err and "No space left" in err  # no "[Errno 28]"
    assert "previous file is kept" in err
    assert output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_split_file_outputs_are_atomic(files, tmp_path, capsys, monkeypatch, suffix):
    """Before: ``--input`` outputs were written in place; a full disk left a torn file."""
    rng = np.random.default_rng(3)
    rows = ["split,s0,s1,f"] + [f"context,{a},{b},{c}" for a, b, c in rng.normal(size=(9, 3))]
    rows += [f"test,{a},{b}," for a, b in rng.normal(size=(4, 2))]
    source = tmp_path / "in.csv"
    source.write_text("\n".join(rows) + "\n")
    output = tmp_path / f"out{suffix}"
    args = ["predict", "--checkpoint", str(files / "bare.safetensors"), "--input",
            str(source), "--output", str(output)]
    assert cli.main(args) == 0
    before = output.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(io_files.os, "fsync",
                        lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    assert cli.main(args) == 2
    assert "cannot write" in one_line(capsys)
    assert output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([source.name, output.name])


# ------------------------------------------------------------ 2. fine-tuning resumes
FINETUNE = ["finetune", *ROLES, "--steps", "6", "--batch-size", "2", "--quiet"]


def finetune_args(files, out):
    return [*FINETUNE, "--checkpoint", str(files / "bare.safetensors"), "--data",
            str(files / "obs.csv"), "--out", str(out)]


KILLER = (
    "import os, signal, sys\n"
    "from bsatnp.train import trainer\n"
    "real, calls = trainer.Trainer.save, [0]\n"
    "def save(self, path):\n"
    "    out = real(self, path)\n"
    "    if self.step >= int(sys.argv[1]):\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "    return out\n"
    "trainer.Trainer.save = save\n"
    "from bsatnp import cli\n"
    "sys.exit(cli.main(sys.argv[2:]))\n")


def test_sigkill_during_finetune_then_resume_equals_a_straight_run(files, tmp_path, capsys):
    """Before: a rerun after a kill was refused with "pass --resume", a flag finetune lacked."""
    from safetensors.torch import load_file

    killed = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", KILLER, "3", *finetune_args(files, killed)],
                           capture_output=True, text=True)
    assert child.returncode == -9, child.stderr
    with pytest.warns(UserWarning, match="stale lock .* no longer runs"):  # the killed run's
        assert cli.main(finetune_args(files, killed)) == 2  # lock; a fresh run would replace it
    (refused,) = capsys.readouterr().err.splitlines()
    assert "--resume" in refused and "Traceback" not in refused
    assert cli.main([*finetune_args(files, killed), "--resume"]) == 0
    straight = tmp_path / "straight"
    assert cli.main(finetune_args(files, straight)) == 0
    for name in ("last.safetensors", "best.safetensors"):
        resumed, whole = load_file(killed / name), load_file(straight / name)
        assert resumed.keys() == whole.keys()
        for key in whole:  # weights, optimiser, schedule, data RNG: all of it
            if key != "rng/torch":  # the process's global RNG, which nothing here draws
                assert torch.equal(resumed[key], whole[key]), (name, key)
    steps = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # the retrained steps were not logged twice


def test_resume_refuses_other_options_or_data(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(finetune_args(files, out)) == 0
    capsys.readouterr()
    assert cli.main([*finetune_args(files, out), "--resume", "--lr", "0.01"]) == 2
    assert "other options: lr" in one_line(capsys)
    other = tmp_path / "other.csv"
    pd.read_csv(files / "obs.csv").assign(v=lambda f: f["v"] * 3).to_csv(other, index=False)
    args = [*finetune_args(files, out), "--resume"]
    args[args.index("--data") + 1] = str(other)
    assert cli.main(args) == 2
    assert "other data" in one_line(capsys)
    assert cli.main([*finetune_args(files, tmp_path / "empty"), "--resume"]) == 2
    assert "no run to resume" in one_line(capsys)


def test_a_short_finetune_validates_briefly(files, tmp_path):
    """Before: a 10-step run validated every step on 16 batches (minutes of validation)."""
    from bsatnp.io.checkpoint import load_checkpoint

    predictor = Predictor.load(files / "bare.safetensors")
    data = pd.read_csv(files / "obs.csv")
    predictor.finetune(data, values="v", space=("x", "y"), steps=10, batch_size=2,
                       out_dir=tmp_path / "ten", progress=False)
    config = load_checkpoint(tmp_path / "ten" / "last.safetensors").train_config
    assert config["val_every"] == 10 and config["val_batches"] == 2
    predictor.finetune(data, values="v", space=("x", "y"), steps=40, batch_size=2,
                       out_dir=tmp_path / "forty", progress=False)
    config = load_checkpoint(tmp_path / "forty" / "last.safetensors").train_config
    assert config["val_every"] == 10 and config["val_batches"] == 8


# ----------------------------------------------------- 3. one process per run directory
def wait_for_lock(directory, process):
    lock = directory / run_dir.LOCK_NAME
    for _ in range(600):
        if lock.exists() or process.poll() is not None:
            break
        time.sleep(0.1)
    assert lock.exists(), process.communicate()
    return json.loads(lock.read_text())


SLOW = (  # a run whose steps take a while, so that a second process meets it running
    "import sys, time\n"
    "from bsatnp.train import trainer\n"
    "real = trainer.Trainer._train_step\n"
    "def step(self):\n"
    "    time.sleep(0.3)\n"
    "    return real(self)\n"
    "trainer.Trainer._train_step = step\n"
    "from bsatnp import cli\n"
    "sys.exit(cli.main(sys.argv[1:]))\n")


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_two_runs_into_one_directory_exactly_one_runs(files, tmp_path, capsys, command):
    """Before: both ran; logs interleaved, a temp file was deleted under the other run."""
    out = tmp_path / "run"
    if command == "train":
        (tmp_path / "tiny.yaml").write_text(TINY % 12)
        args = ["train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(out), "--quiet"]
    else:
        args = finetune_args(files, out)
        args[args.index("--steps") + 1] = "12"
    first = subprocess.Popen([sys.executable, "-c", SLOW, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    holder = wait_for_lock(out, first)
    assert holder["pid"] == first.pid
    assert cli.main(args) == 2
    err = one_line(capsys)
    assert f"in use by another run (process {first.pid}" in err
    assert cli.main([*args, "--overwrite"]) == 2  # not even with --overwrite
    one_line(capsys)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 12 and steps == sorted(set(steps))  # nothing lost or interleaved
    assert not (out / run_dir.LOCK_NAME).exists()  # released at the end
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_stale_lock_is_reported_and_taken_over(tmp_path):
    import socket

    lock = tmp_path / run_dir.LOCK_NAME
    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(),
                                "since": "2026-01-01 00:00:00"}))
    with pytest.warns(UserWarning, match="stale lock of process"):
        run_dir.claim(tmp_path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    run_dir.claim(tmp_path)  # claims of one process nest
    run_dir.release(tmp_path)
    assert lock.exists()
    run_dir.release(tmp_path)
    assert not lock.exists()
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "x"}))
    with pytest.raises(ValueError, match="on host elsewhere.*delete"):
        run_dir.claim(tmp_path)


# ------------------------------------------------- 4. one-line errors, no input ignored
@pytest.mark.parametrize("case, extra, message", [
    ("samples -1", ["--samples", "-1"], "--samples: must be between 0 and 10000, got -1"),
    ("seed -1", ["--samples", "2", "--seed", "-1"], "--seed: must be >= 0"),
    ("grid twice", ["--grid", "x=0:1:3,x=0:1:4,y=0:1:3"], "axis 'x' is given twice"),
    ("bad target crs", ["--target-crs", "EPSG:nope"], "--target-crs 'EPSG:nope' is not a "),
    ("bad crs", ["--crs", "nonsense"], "--crs 'nonsense' is not a coordinate reference"),
    ("duplicate column", [], "column(s) ['v'] appear more than once"),
    ("observations beside input", [], "--observations, --targets would be ignored"),
    ("interval beside input", [], "--interval, --samples would be ignored"),
])
def test_cli_refuses_what_it_would_ignore_or_misread(files, tmp_path, capsys, case, extra,
                                                     message):
    """Before: exit 0 with the input ignored (duplicate, grid, --observations, --crs), a
    10,001-value choice list, or a pyproj traceback (exit 1)."""
    args = predict_args(files, tmp_path / "o.csv")
    if case == "grid twice":
        args[args.index("--targets"):args.index("--targets") + 2] = []
    if case == "duplicate column":
        text = (files / "obs.csv").read_text().splitlines()
        (tmp_path / "dup.csv").write_text("\n".join(
            [text[0] + ",v"] + [line + "," + line.split(",")[-1] for line in text[1:]]))
        args[args.index("--observations") + 1] = str(tmp_path / "dup.csv")
    if case == "observations beside input":
        args = [*args, "--input", str(files / "targets.csv")]
    if case == "interval beside input":  # before: exit 0, neither written
        args = ["predict", "--checkpoint", str(files / "bare.safetensors"), "--input",
                str(files / "targets.csv"), "--output", str(tmp_path / "o.csv"), "--interval",
                "0.9", "--samples", "3"]
    try:
        code = cli.main([*args, *extra])
    except SystemExit as exit_:  # argument errors leave through argparse
        code = exit_.code
    assert code == 2
    assert message in one_line(capsys)


@pytest.mark.parametrize("extra, named", [
    (["--transform", "log"], "--transform"),
    (["--units", "degC"], "--units"),
    (["--seed", "3"], "--seed"),
    (["--interval", "0.9", "--units", "degC"], "--interval, --units"),
])
def test_cli_refuses_numeric_options_with_a_categorical_model(tmp_path, capsys, extra, named):
    """Before: --transform, --units and --seed were accepted with a classifier and ignored
    (exit 0): class probabilities have no units, no value transform and no samples."""
    torch.manual_seed(0)
    Predictor(BSATNP(num_blocks=1, dim=8, num_heads=2, qkv_dim=8, ffn_dim=8, embed_hidden=(8,),
                     head_hidden=(8,), dim_f=3, likelihood="categorical")
              ).save(tmp_path / "classes.safetensors")
    rng = np.random.default_rng(1)
    obs = pd.DataFrame({"x": rng.uniform(0, 3, 40), "y": rng.uniform(0, 3, 40),
                        "state": rng.choice(["S", "I", "R"], 40)})
    obs.to_csv(tmp_path / "obs.csv", index=False)
    obs.iloc[:5][["x", "y"]].to_csv(tmp_path / "targets.csv", index=False)
    args = ["predict", "--checkpoint", str(tmp_path / "classes.safetensors"), "--observations",
            str(tmp_path / "obs.csv"), "--values", "state", "--space", "x", "y", "--targets",
            str(tmp_path / "targets.csv"), "--output", str(tmp_path / "out.csv"), "--quiet"]
    assert cli.main([*args, *extra]) == 2
    assert f"{named}: only for a model of numeric values; this model predicts class " \
           "probabilities" in one_line(capsys)
    assert not (tmp_path / "out.csv").exists()
    assert cli.main(args) == 0  # without them it predicts
    if named in ("--transform", "--units"):  # fine-tuning took them silently too
        tune = ["finetune", "--checkpoint", str(tmp_path / "classes.safetensors"), "--data",
                str(tmp_path / "obs.csv"), "--values", "state", "--space", "x", "y",
                "--steps", "1", "--out", str(tmp_path / "run"), "--quiet"]
        assert cli.main([*tune, *extra]) == 2
        assert f"{named}: only for a model of numeric values" in one_line(capsys)
        assert not (tmp_path / "run" / "last.safetensors").exists()


def test_info_and_predict_take_a_shipped_model_name(files, tmp_path, capsys):
    """Before: ``bsatnp info gp2d`` said the checkpoint does not exist."""
    assert cli.main(["info", "gp2d"]) == 0
    assert "475,770 parameters" in capsys.readouterr().out
    args = predict_args(files, tmp_path / "o.csv")
    args[args.index("--checkpoint") + 1] = "gp2d"
    assert cli.main(args) == 0


def test_info_escapes_control_characters_and_cuts_long_strings(files, tmp_path, capsys):
    """Before: a card's ANSI sequences reached the terminal raw, and 50 MB strings whole."""
    predictor = Predictor.load(files / "bare.safetensors")
    predictor.card = {"summary": "\x1b[2J\x1b[31mred\x07", "notes": "x" * 100_000}
    predictor.save(tmp_path / "card.safetensors")
    assert cli.main(["info", str(tmp_path / "card.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[2J" in out
    assert max(len(line) for line in out.splitlines()) < 500
    assert "more characters" in out


def test_finetune_time_split_without_time_is_one_line(files, tmp_path, capsys):
    """Before: ``KeyError: 't'`` traceback."""
    args = finetune_args(files, tmp_path / "run")
    args[args.index("--steps") + 1] = "2"
    assert cli.main([*args, "--split", "time"]) == 2
    assert "split='time' needs a time column" in one_line(capsys)


def test_sample_y_refuses_zero_samples():
    """Before: ``sample_y(0)`` ended in a numpy traceback."""
    from bsatnp.estimator import NeuralProcessRegressor

    rng = np.random.default_rng(0)
    X, y = rng.uniform(0, 1, (30, 2)), rng.normal(size=30)
    torch.manual_seed(0)
    model = BSATNP(num_blocks=1, dim=8, num_heads=2, qkv_dim=8, ffn_dim=8, embed_hidden=(8,),
                   head_hidden=(8,))
    regressor = NeuralProcessRegressor(model).fit(X, y)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        regressor.sample_y(X, 0)
    assert regressor.sample_y(X[:3], 2).shape == (3, 2)


def test_the_cli_counts_targets_not_cells_of_other_variables(files, tmp_path, capsys):
    """Before: "480 targets" for an 8 x 10 grid whose file also held a variable over a
    dimension of 6 (every dimension of the output was multiplied in)."""
    xr = pytest.importorskip("xarray")
    grid = xr.Dataset({"bounds": (("nv",), np.zeros(6))},
                      coords={"x": np.linspace(0, 3, 8), "y": np.linspace(0, 3, 10)})
    grid.to_netcdf(tmp_path / "grid.nc")
    args = predict_args(files, tmp_path / "out.nc", targets=tmp_path / "grid.nc")
    assert cli.main(args) == 0
    assert "Wrote predictions at 80 targets from 120 observations" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("case", ["variable over another dim", "variable over time too",
                                  "quantiles"])
def test_a_grid_written_as_a_table_has_one_row_per_target(files, tmp_path, capsys, case,
                                                          suffix):
    """Before: 480 rows for the 80 targets of an 8 x 10 grid whose file also held a variable
    over another dimension of 6 (``to_dataframe`` multiplied every dimension in), and a row
    per quantile with --quantiles."""
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    xr = pytest.importorskip("xarray")
    x, y = np.linspace(0, 3, 8), np.linspace(0, 3, 10)
    extra = []
    if case == "variable over another dim":
        grid = xr.Dataset({"bounds": (("nv",), np.zeros(6))}, coords={"x": x, "y": y})
        left_out = r"\['bounds'\] span dimension\(s\) \['nv'\]"
    elif case == "variable over time too":
        grid = xr.Dataset({"t2m": (("time", "y", "x"), np.zeros((6, 10, 8)))},
                          coords={"time": np.arange(6.0), "x": x, "y": y})
        left_out = r"\['t2m', 'time'\] span dimension\(s\) \['time'\]"
    else:
        grid = xr.Dataset(coords={"x": x, "y": y})
        extra, left_out = ["--quantiles", "0.1", "0.9"], None
    grid.to_netcdf(tmp_path / "grid.nc")
    args = predict_args(files, tmp_path / f"out{suffix}", targets=tmp_path / "grid.nc")
    if left_out is None:
        assert cli.main([*args, *extra]) == 0
    else:
        with pytest.warns(UserWarning, match=left_out + ".*left out of the table"):
            assert cli.main([*args, *extra]) == 0
    out = (pd.read_csv if suffix == ".csv" else pd.read_parquet)(tmp_path / f"out{suffix}")
    assert len(out) == 80 and len(out[["x", "y"]].drop_duplicates()) == 80
    assert {"x", "y", "mean", "std"} <= set(out.columns)
    if case == "quantiles":
        assert {"q0.1", "q0.9"} <= set(out.columns)
        assert (out["q0.1"] < out["mean"]).all() and (out["mean"] < out["q0.9"]).all()


@pytest.mark.parametrize("option", ["--observations", "--targets", "--input", "--data",
                                    "info", "--checkpoint"])
def test_a_directory_given_as_a_file_is_named_as_one(files, tmp_path, capsys, option):
    """Before: a directory was reported as "does not exist", naming no option."""
    folder = tmp_path / "folder"
    folder.mkdir()
    if option == "--data":
        args = finetune_args(files, tmp_path / "run")
    elif option == "info":
        args = ["info", str(folder)]
    elif option == "--input":
        args = ["predict", "--checkpoint", str(files / "bare.safetensors"), "--input",
                str(folder), "--output", str(tmp_path / "o.csv")]
    else:
        args = predict_args(files, tmp_path / "o.csv")
    if option not in ("info", "--input"):
        args[args.index(option) + 1] = str(folder)
    name = "checkpoint" if option in ("info", "--checkpoint") else option
    assert cli.main(args) == 2
    assert f"{name} {folder} is a directory, not a file" in one_line(capsys)


def test_a_netcdf_larger_than_the_free_disk_is_refused_before_any_block(files, tmp_path,
                                                                          capsys, monkeypatch):
    """Before: a 1e10-point grid to .nc started writing an 80 GB file (the disk filled)."""
    from collections import namedtuple

    from bsatnp.data import files as data_files

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(data_files.shutil, "disk_usage",
                        lambda path: usage(2**30, 2**30 - 50_000, 50_000))
    output = tmp_path / "grid.nc"
    output.write_bytes(b"previous")
    args = predict_args(files, output)
    args[args.index("--targets"):args.index("--targets") + 2] = ["--grid",
                                                                 "x=0:3:100,y=0:3:100"]
    assert cli.main(args) == 2
    err = one_line(capsys)
    assert f"cannot write {output}: it needs about 0.0 GiB but its disk has 0.0 GiB" in err
    assert output.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.nc"]
    monkeypatch.undo()  # the real free space
    assert cli.main(args) == 0, capsys.readouterr().err


def test_cli_warnings_are_one_line_each(files, tmp_path):
    """Before: a warning took two lines (its file and line, then the source line
    ``claim(out_dir)``), so a refusal after it was three."""
    import socket

    out = tmp_path / "run"
    out.mkdir()
    (out / run_dir.LOCK_NAME).write_text(json.dumps({
        "pid": dead_pid(), "host": socket.gethostname(), "since": "2026-01-01 00:00:00"}))
    args = finetune_args(files, out)
    args[args.index("--steps") + 1] = "2"
    child = subprocess.run([sys.executable, "-m", "bsatnp", *args], capture_output=True,
                           text=True)  # warnings reach stderr only outside pytest
    assert child.returncode == 0, child.stderr
    lines = child.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"bsatnp finetune: warning: {out / run_dir.LOCK_NAME}: a stale lock of process"), lines


@pytest.mark.parametrize("command, extra, message", [
    ("finetune", ["--crs", "nonsense"], "--crs 'nonsense' is not a coordinate reference"),
    ("predict", ["--samples", "2", "--seed", "abc"], "argument --seed: expected an integer, "
                                                     "got 'abc'"),
])
def test_option_errors_name_the_option_in_every_command(files, tmp_path, capsys, command,
                                                        extra, message):
    """Before: finetune said "crs 'nonsense' ..." (no option); "expected a int"."""
    args = (finetune_args(files, tmp_path / "run") if command == "finetune"
            else predict_args(files, tmp_path / "o.csv"))
    try:
        code = cli.main([*args, *extra])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert message in one_line(capsys)
