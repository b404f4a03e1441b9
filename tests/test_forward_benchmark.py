"""benchmarks/forward.py --reference-python: argument checks and the side-by-side plumbing.

The real reference (dl4bi + JAX in a separate environment) is not needed here: a stand-in
"python" prints canned runner output, so only our side actually runs (at a tiny size).
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORWARD = ROOT / "benchmarks" / "forward.py"


def run_forward(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FORWARD), *args], capture_output=True,
                          text=True, timeout=600)


def test_missing_reference_python_is_a_clear_error(tmp_path):
    out = tmp_path / "forward.json"
    proc = run_forward("--reference-python", str(tmp_path / "no" / "python"), "--out", str(out))
    assert proc.returncode == 2
    assert "no executable file there" in proc.stderr
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("dl4bi") is not None,
                    reason="dl4bi is importable in this environment")
def test_reference_python_without_dl4bi_is_a_clear_error(tmp_path):
    proc = run_forward("--reference-python", sys.executable, "--out", str(tmp_path / "f.json"))
    assert proc.returncode == 2
    assert "cannot import dl4bi and JAX there" in proc.stderr
    assert "dl4bi==0.1.3" in proc.stderr


FAKE_REFERENCE = """#!/bin/sh
prev=""
for a in "$@"; do
  if [ "$prev" = "--inputs" ]; then test -f "$a" || exit 3; fi
  prev="$a"
done
case " $* " in
  *" --versions "*) echo '{"dl4bi": "0.1.3", "jax": "stand-in", "jaxlib": "stand-in"}' ;;
  *) echo '{"seconds": 0.5, "times": [0.5], "compile_s": 1.0, "first_run_s": 0.6, \
"peak_rss_mb": 100.0, "case": "64x128", "backend": "dl4bi"}' ;;
esac
"""


def test_side_by_side_rounds_and_ratios(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_REFERENCE)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "forward.json"
    proc = run_forward("--sizes", "64x128", "--backends", "tiled", "--no-train", "--rounds", "2",
                       "--repeats", "1", "--threads", "1", "--reference-python", str(fake),
                       "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio (reference / ours)" in proc.stdout
    report = json.loads(out.read_text())
    assert report["meta"]["reference"]["dl4bi"] == "0.1.3"
    assert report["meta"]["rounds"] == 2
    (ours,) = report["results"]
    (ref,) = report["reference_results"]
    (row,) = report["comparison"]
    assert len(ours["round_seconds"]) == 2 and len(ref["round_seconds"]) == 2
    assert ours["cpus"] == sorted(os.sched_getaffinity(0))[:1]
    assert row["reference_s"] == 0.5
    assert row["ratio"] == pytest.approx(0.5 / ours["seconds"])
    assert row["reference_compile_s"] == 1.0 and row["ours_warmup_s"] > 0


def load_forward_module():
    sys.path.insert(0, str(FORWARD.parent))
    try:
        spec = importlib.util.spec_from_file_location("forward_benchmark", FORWARD)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(FORWARD.parent))
    return module


def test_training_precisions_multiply_the_training_step_only():
    forward = load_forward_module()
    assert forward.case_backends("512x1024", ["auto", "tiled"], ["fp32", "bf16"]) == [
        "auto", "tiled"]
    assert forward.case_backends("train", ["auto", "tiled"], ["fp32", "bf16"]) == [
        "auto", "auto/bf16", "tiled", "tiled/bf16"]
    assert forward.case_backends("train", ["auto"], ["bf16"]) == ["auto/bf16"]


def test_unknown_training_precision_is_a_clear_error(tmp_path):
    out = tmp_path / "forward.json"
    proc = run_forward("--train-precision", "fp32,fp16", "--out", str(out))
    assert proc.returncode == 2
    assert "'fp16' is not one of" in proc.stderr
    assert not out.exists()
