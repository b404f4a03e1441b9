"""benchmarks/time_to_accuracy.py: hours and steps of chained logs, pauses left out."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tta():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "time_to_accuracy", ROOT / "benchmarks" / "time_to_accuracy.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def write_log(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_chained_logs_sum_training_time_and_continue_the_steps(tmp_path, tta):
    first = write_log(tmp_path / "a.jsonl", [
        {"step": 10, "loss": 1.0, "time": 1000.0},
        {"step": 20, "loss": 0.9, "time": 1060.0, "val_nll": 0.5},
        {"step": 30, "loss": 0.8, "time": 1120.0},
        # stopped for the night: 10 hours without a record
        {"step": 40, "loss": 0.7, "time": 37120.0, "val_nll": 0.2},
    ])
    second = write_log(tmp_path / "b.jsonl", [
        {"step": 10, "loss": 0.6, "time": 37180.0, "val_nll": 0.1},
    ])
    points = tta.curve([first, second], oracle_nll=-0.3, pause_s=120)
    assert [p["step"] for p in points] == [20, 40, 50]
    # 60 s, then 60 s more, the pause, then 60 s into the chained log
    assert [p["hours"] * 3600 for p in points] == pytest.approx([60, 120, 180])
    assert [p["gap"] for p in points] == pytest.approx([0.8, 0.5, 0.4])
    assert tta.first_below(points, 0.5) == points[1]
    assert tta.first_below(points, 0.3) is None
