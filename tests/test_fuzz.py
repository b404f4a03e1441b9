"""Fuzzing: a result or a one-line error, never a traceback or a silent NaN.

Hypothesis draws hostile inputs for the Python API (model batches and the own-data
:class:`~bsatnp.Predictor`) and for ``bsatnp predict``; every example must either give
finite predictions of the right shape or raise ``ValueError`` (exit code 2 with one line on
stderr for the CLI). Examples are bounded so the suite runs in well under a minute.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from contextlib import redirect_stderr

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bsatnp import Batch, cli
from bsatnp.models import BSATNP
from bsatnp.predictor import Predictor

pd = pytest.importorskip("pandas")

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
torch.manual_seed(0)
MODEL = BSATNP(num_blocks=1, dim=16, qkv_dim=16, ffn_dim=32, embed_hidden=(32,),
               head_hidden=(32,)).eval()
HOSTILE = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 1e-30,
                     3.5e38, 1e300]),
)


@FUZZ
@given(B=st.integers(0, 3), Lc=st.integers(0, 6), Lt=st.integers(0, 5),
       ds=st.integers(1, 3), df=st.integers(1, 2), values=st.lists(HOSTILE, min_size=1,
                                                                   max_size=8),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]),
       masked=st.booleans())
def test_model_batches(B, Lc, Lt, ds, df, values, dtype, masked):
    g = torch.Generator().manual_seed(B * 100 + Lc * 10 + Lt)
    fill = torch.tensor(values, dtype=torch.float64)
    pick = lambda *shape: fill[torch.randint(len(values), shape, generator=g)].to(dtype)  # noqa: E731
    mask = torch.rand(B, Lc, generator=g) > 0.3 if masked else None
    batch = Batch(s_ctx=pick(B, Lc, ds), f_ctx=pick(B, Lc, df), s_test=pick(B, Lt, ds),
                  mask_ctx=mask)
    model = MODEL if (ds, df) == (2, 1) else BSATNP(dim_s=ds, dim_f=df, num_blocks=1, dim=8,
                                                   qkv_dim=8, ffn_dim=8, embed_hidden=(8,),
                                                   head_hidden=(8,)).eval()
    try:
        mean, std = model.predict(batch)
    except ValueError as err:
        assert "\n" not in str(err)
        return
    assert mean.shape == (B, Lt, df) and bool(torch.isfinite(mean).all())
    assert bool(torch.isfinite(std).all()) and bool((std > 0).all())


COLUMN = st.lists(HOSTILE, min_size=0, max_size=12)


@FUZZ
@given(lon=COLUMN, lat=COLUMN, value=COLUMN, target_lon=st.lists(HOSTILE, min_size=0,
                                                                 max_size=4),
       crs=st.sampled_from([None, "lonlat"]))
def test_own_data_api(lon, lat, value, target_lon, crs):
    n = min(len(lon), len(lat), len(value))
    obs = pd.DataFrame({"lon": lon[:n], "lat": lat[:n], "v": value[:n]})
    targets = pd.DataFrame({"lon": target_lon, "lat": [0.5] * len(target_lon)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = Predictor(MODEL).predict(obs, targets, values="v", space=("lon", "lat"),
                                           crs=crs, interval=0.9)
        except ValueError as err:
            assert str(err) and "\n" not in str(err)
            return
    assert len(out) == len(targets)
    assert np.isfinite(out[["mean", "std", "lower", "upper"]].to_numpy()).all()


CELL = st.one_of(st.sampled_from(["", "nan", "inf", "-inf", "1e39", "abc", "1e-45", " 2 ",
                                  "0x10", "1,5"]),
                 st.floats(-1e5, 1e5, allow_nan=False).map(repr))


@FUZZ
@given(rows=st.lists(st.tuples(st.sampled_from(["context", "test", "Context", "", "x"]),
                               CELL, CELL, CELL), min_size=0, max_size=10),
       header=st.sampled_from([["split", "s0", "s1", "f"], ["split", "s0", "f", "s1"],
                               ["split", "s0", "s1"], ["\ufeffsplit", "s0", "s1", "f"]]))
def test_cli_predict_csv(tmp_path_factory, rows, header):
    root = tmp_path_factory.mktemp("fuzz")
    ckpt = root / "m.safetensors"
    if not ckpt.exists():
        Predictor(MODEL).save(ckpt)
    with open(root / "in.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    err = io.StringIO()
    with redirect_stderr(err):
        code = cli.main(["predict", "--checkpoint", str(ckpt), "--input", str(root / "in.csv"),
                         "--output", str(root / "out.csv")])
    if code == 2:
        assert err.getvalue().count("\n") == 1 and "Traceback" not in err.getvalue()
        return
    assert code == 0
    with open(root / "out.csv", newline="") as file:
        out = list(csv.DictReader(file))
    assert out and all(math.isfinite(float(r["mean"])) and float(r["std"]) > 0 for r in out)
