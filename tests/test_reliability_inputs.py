"""Inputs cannot silently break the model: dtypes, overflow, precision, one-line errors."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch
from conftest import ROOT, edited_checkpoint, random_batch

from bsatnp import Batch, cli
from bsatnp.models import BSATNP, BSATNPConfig
from bsatnp.predictor import Predictor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rel") / "model.safetensors"
    Predictor(BSATNP(num_blocks=2, dim=32, qkv_dim=32, ffn_dim=64, embed_hidden=(64,),
                     head_hidden=(64,))).save(path)
    return path


def write_csv(path, s_ctx, f_ctx, s_test, bom=False):
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["split", "s0", "s1", "f"])
        writer.writerows(["context", *(repr(float(v)) for v in s), repr(float(f))]
                         for s, f in zip(s_ctx, f_ctx))
        writer.writerows(["test", *(repr(float(v)) for v in s), ""] for s in s_test)


def read_csv(path):
    with open(path, newline="") as file:
        return np.array([[float(r["mean"]), float(r["std"])] for r in csv.DictReader(file)])


def test_float64_and_half_inputs_are_cast_to_the_model_dtype():
    model = BSATNP(num_blocks=1).eval()
    batch = random_batch(seed=1)
    base = model.predict(batch)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        cast = batch.to(dtype=dtype)
        mean, _ = model.predict(cast)
        tolerance = 1e-5 if dtype == torch.float64 else 0.1
        torch.testing.assert_close(mean, base[0], atol=tolerance, rtol=0)


def test_huge_values_give_an_error_naming_the_cause_not_silent_nan():
    model = BSATNP(num_blocks=1).eval()
    batch = random_batch(seed=2)
    with pytest.raises(ValueError, match=r"not finite.*largest \|f_ctx\| = [0-9.]+e\+25"):
        model.predict(batch.map(f_ctx=batch.f_ctx * 1e25))


def test_utm_sized_coordinates_keep_their_precision_in_the_cli(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    s_ctx, s_test = rng.uniform(0, 5, (40, 2)), rng.uniform(0, 5, (7, 2))
    f_ctx = np.sin(s_ctx.sum(-1))
    write_csv(tmp_path / "near.csv", s_ctx, f_ctx, s_test)
    offset = np.array([5e5, 4e6])  # UTM metres
    write_csv(tmp_path / "far.csv", s_ctx + offset, f_ctx, s_test + offset)
    for name in ("near", "far"):
        assert cli.main(["predict", "--checkpoint", str(checkpoint), "--input",
                         str(tmp_path / f"{name}.csv"), "--output",
                         str(tmp_path / f"{name}_out.csv")]) == 0
    np.testing.assert_allclose(read_csv(tmp_path / "far_out.csv"),
                               read_csv(tmp_path / "near_out.csv"), rtol=0, atol=1e-6)
    with open(tmp_path / "far_out.csv", newline="") as file:  # written as read, not centred
        first = next(csv.DictReader(file))
    assert float(first["s0"]) == pytest.approx(s_test[0, 0] + 5e5, abs=1e-6)


@pytest.mark.parametrize("case, message", [
    ("overflow", r"in.csv, line 5: column 'f' holds 1e\+39, which overflows float32"),
    ("overflow npz", r"in.npz: f_ctx row 4 \(counting from 1\) holds 1e\+39"),
    ("huge", r"not finite.*largest \|f_ctx\|"),
    ("same file", r"--output .* is the --input file"),
    ("complex npz", r"array s_ctx must be real numbers"),
    ("empty npz", r"array s_test has no points"),
    ("random npz", r"not a readable .npz file \(not a zip of .npy arrays\)"),
    ("pickled npz", r"Python objects, which are never loaded"),
    ("device", r"--device 'cuda': not available"),
    ("latin-1", r"in.csv: not UTF-8 text \(byte \d+\)"),
    ("nul byte", r"in.csv, line 2: column 'f' must be a number"),
])
def test_cli_input_errors_are_one_line(checkpoint, tmp_path, capsys, case, message):
    rng = np.random.default_rng(1)
    s_ctx, s_test, f_ctx = rng.uniform(0, 1, (10, 2)), rng.uniform(0, 1, (3, 2)), rng.normal(
        size=10)
    path, extra = tmp_path / "in.csv", []
    if case in ("overflow", "huge"):
        f_ctx[3] = 1e39 if case == "overflow" else 1e25
        write_csv(path, s_ctx, f_ctx, s_test)
    elif case == "same file":
        write_csv(path, s_ctx, f_ctx, s_test)
    elif case.endswith("npz"):
        path = tmp_path / "in.npz"
        if case == "complex npz":
            np.savez(path, s_ctx=s_ctx + 1j, f_ctx=f_ctx, s_test=s_test)
        elif case == "empty npz":
            np.savez(path, s_ctx=s_ctx, f_ctx=f_ctx, s_test=s_test[:0])
        elif case == "overflow npz":
            f_ctx[3] = 1e39
            np.savez(path, s_ctx=s_ctx, f_ctx=f_ctx, s_test=s_test)
        elif case == "pickled npz":
            np.savez(path, s_ctx=np.array([{"a": 1}], dtype=object), f_ctx=f_ctx, s_test=s_test)
        else:
            path.write_bytes(rng.bytes(300))
    elif case == "latin-1":
        path.write_bytes("split,s0,s1,f\ncontext,0.5,0.5,1\ntest,0.1,0.2,\n# caf\u00e9\n"
                         .encode("latin-1"))
    elif case == "nul byte":
        path.write_bytes(b"split,s0,s1,f\ncontext,0.5,0.5,\x00\"1\ntest,0.1,0.2,\n")
    elif case == "device":
        write_csv(path, s_ctx, f_ctx, s_test)
        extra = ["--device", "cuda"]
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    output = path if case == "same file" else tmp_path / "out.csv"
    code = cli.main(["predict", "--checkpoint", str(checkpoint), "--input", str(path),
                     "--output", str(output), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert __import__("re").search(message, err), err


def test_bom_csv_reads_like_plain_csv(checkpoint, tmp_path):
    rng = np.random.default_rng(2)
    s_ctx, s_test, f_ctx = rng.uniform(0, 1, (10, 2)), rng.uniform(0, 1, (3, 2)), rng.normal(
        size=10)
    write_csv(tmp_path / "bom.csv", s_ctx, f_ctx, s_test, bom=True)
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--input",
                     str(tmp_path / "bom.csv"), "--output", str(tmp_path / "o.csv")]) == 0


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--checkpoint", "x", "--n-batches", "0"], "batch counts must be >= 1"),
    (["train", "--config", "gp2d", "--steps", "-5"], "--steps: must be > 0"),
    (["plot", "--checkpoint", "x", "--n-ctx", "-3"], "--n-ctx: must be > 0"),
])
def test_bad_arguments_are_one_line_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("fields, message", [
    ({"num_heads": 0}, "num_heads must be >= 1"),
    ({"dim": 0}, "dim must be >= 1"),
    ({"tile_q": 0}, "tile_q must be >= 1"),
    ({"qkv_dim": 30}, "not divisible by num_heads"),
    ({"dim_s": 3, "bias_s": {"distance": "great_circle", "role": "s"}}, "needs dim_s=2"),
])
def test_config_fields_are_validated_at_construction(fields, message):
    with pytest.raises(ValueError, match=message):
        BSATNPConfig.from_dict(fields)


def test_empty_batch_and_nan_test_inputs_have_clear_messages():
    batch = random_batch(seed=3)
    with pytest.raises(ValueError, match="batch size 0"):
        BSATNP(num_blocks=1)(Batch(f_ctx=batch.f_ctx[:0], s_ctx=batch.s_ctx[:0],
                                   s_test=batch.s_test[:0]))
    s_test = batch.s_test.clone()
    s_test[0, 1] = float("nan")
    mask = torch.ones(batch.s_test.shape[:2], dtype=torch.bool)
    mask[0, 1] = False
    with pytest.raises(ValueError, match="masked test points too"):
        BSATNP(num_blocks=1)(batch.map(s_test=s_test, mask_test=mask))


def test_roles_the_model_does_not_read_are_named_once():
    model = BSATNP(num_blocks=1)
    batch = random_batch(seed=4, dim_x=2)
    with pytest.warns(UserWarning, match=r"reads no x role \(dim_x=0\)"):
        model(batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(batch)  # once per model


def test_great_circle_models_refuse_latitudes_beyond_90():
    model = BSATNP(bias_s={"role": "s", "distance": "great_circle_degrees"}, num_blocks=1)
    batch = random_batch(seed=5)
    s_ctx = batch.s_ctx.clone()
    s_ctx[0, 0, 1] = 250.0
    with pytest.raises(ValueError, match=r"latitude 250° at \[b, i\] = \[0, 0\]"):
        model(batch.map(s_ctx=s_ctx))


class _Payload:
    """Unpickling this would create a marker file (it must never happen)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_payloads_in_checkpoints_npz_and_yaml_never_execute(tmp_path):
    import pickle

    from bsatnp.experiment import load_experiment
    from bsatnp.io.checkpoint import load_checkpoint
    from bsatnp.predict import read_split_file

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    (tmp_path / "evil.safetensors").write_bytes(payload)
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "evil.safetensors")
    np.save(tmp_path / "s_ctx.npy", np.array([_Payload(marker)], dtype=object),
            allow_pickle=True)
    import zipfile

    with zipfile.ZipFile(tmp_path / "evil.npz", "w") as archive:
        archive.write(tmp_path / "s_ctx.npy", "s_ctx.npy")
    with pytest.raises(ValueError, match="never loaded"):
        read_split_file(tmp_path / "evil.npz", BSATNP(num_blocks=1))
    (tmp_path / "evil.yaml").write_text(
        f"model: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    with pytest.raises(ValueError):
        load_experiment(tmp_path / "evil.yaml")
    assert not marker.exists()


def test_a_stored_bias_spec_that_is_not_a_mapping_is_one_line(checkpoint, tmp_path, capsys):
    import json
    import shutil

    shutil.copy(checkpoint, tmp_path / "bad.safetensors")
    with edited_checkpoint(tmp_path / "bad.safetensors") as (metadata, _):
        config = json.loads(metadata["model_config"])
        config["bias_s"] = "rbf"
        metadata["model_config"] = json.dumps(config)
    code = cli.main(["info", str(tmp_path / "bad.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "bias_s" in err, err


@pytest.mark.parametrize("case, message", [
    ("text value", r"observations: column 'v' must be numeric, but holds 'abc' at data row 6 "
                   r"of \S*obs.csv$"),
    ("inf value", r"observations: value column 'v' is inf at data row 9 of \S*obs.csv$"),
    ("nan coordinate", r"observations: coordinate column 'x' is nan at data row 10 of "
                       r"\S*obs.csv;"),
    ("text target", r"targets: column 'y' must be numeric, but holds 'north' at data row 2 of "
                    r"\S*targets.csv$"),
])
def test_own_data_file_errors_name_the_file_and_its_1_based_row(checkpoint, tmp_path, capsys,
                                                                case, message):
    """Before: a non-numeric value was reported without its row, quoting three valid values
    as examples; rows were 0-based positions ("row 5" for the 6th data row)."""
    rng = np.random.default_rng(3)
    obs = [[str(float(a)), str(float(b)), str(float(c))] for a, b, c in rng.uniform(0, 1, (12, 3))]
    targets = [[str(float(a)), str(float(b))] for a, b in rng.uniform(0, 1, (3, 2))]
    if case == "text value":
        obs[5][2] = "abc"
    elif case == "inf value":
        obs[8][2] = "inf"
    elif case == "nan coordinate":
        obs[9][0] = ""
    else:
        targets[1][1] = "north"
    (tmp_path / "obs.csv").write_text("\n".join(["x,y,v", *map(",".join, obs)]) + "\n")
    (tmp_path / "targets.csv").write_text("\n".join(["x,y", *map(",".join, targets)]) + "\n")
    code = cli.main(["predict", "--checkpoint", str(checkpoint), "--observations",
                     str(tmp_path / "obs.csv"), "--values", "v", "--space", "x", "y",
                     "--targets", str(tmp_path / "targets.csv"), "--output",
                     str(tmp_path / "out.csv"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert __import__("re").search(message, err.strip()), err


def test_the_readme_predicts_first_with_the_call_that_raises():
    """The raw forward ``model(batch)`` returns NaN for |f| >= 1e21 (it is the training path,
    where a non-finite step is skipped); the README's first example used it alone. Now it
    shows ``model.predict`` first, which raises naming the cause (issue 28, item 5)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = text[text.index("```python") + 9:]
    first = first[:first.index("```")]
    assert "model.predict(batch)" in first
    assert first.index("model.predict(batch)") < first.index("model(batch)")
    model = BSATNP(num_blocks=1).eval()
    batch = random_batch(seed=2)
    with pytest.raises(ValueError, match=r"not finite.*largest \|f_ctx\| = [0-9.]+e\+21"):
        model.predict(batch.map(f_ctx=batch.f_ctx * 1e21))
