"""Per-batch scores of long evaluations, appended as they are computed.

One JSON-lines file per domain and scorer (a model, or the task's oracle) behind a header
line that says what the scores depend on (task, seed, scorer and, for a model, a
fingerprint of its class and weights), so an interrupted :func:`bsatnp.evaluate.evaluate`
resumes where it stopped and a changed model is never mixed with old scores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bsatnp.io.files import complete_lines
from bsatnp.tasks import Task


def cache_header(name: str, model: nn.Module | None, task: Task, seed: int
                  ) -> dict[str, Any]:
    """What the cached scores of one scorer depend on: the task, the seed, the scorer.

    A model is identified by its name and fingerprint, the oracle (``model`` ``None``) by
    its name alone: it is the task's own.
    """
    scorer = {"oracle": True} if model is None else {"model": fingerprint(model)}
    return {"task": repr(task), "seed": seed, "name": name, **scorer}


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's class and state (parameters and buffers, names and values)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        flat = tensor.detach().cpu().reshape(-1).contiguous()  # 0-d tensors cannot be viewed
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ScoreCache:
    """Append-only JSON-lines file of one scorer's per-batch scores behind a header line.

    One process per file: :meth:`load` trims a torn last line, which would cut a line that
    another process is writing. Each domain and scorer (model or oracle) has its own file,
    so processes may share a cache directory as long as no two write the same file at once:
    e.g. one process per domain, or per model with only one of them scoring the oracle.

    Args:
        path: The ``.jsonl`` file (created with its directory on the first append).
        header: Identity of the scorer's evaluation (:func:`cache_header`, whose ``name``
            is the one key of every row's ``scores``); a file with another header is refused.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header

    def load(self) -> dict[int, dict[str, dict[str, float]]]:
        """Scores by batch index; a partly written last line (an interrupted run) is dropped.

        Every other line must be a complete row: ``{"index": i, "scores": {name: metrics}}``
        with one metrics mapping (metric name → number) under the header's ``name``, with
        the same metric names on every row. A damaged row is an error naming the file and
        line, not a row to rescore: only the torn last line is something this class itself
        can leave behind, so anything else means the file was edited or corrupted and its
        other rows are suspect too.

        Raises:
            ValueError: If the file belongs to another evaluation, is not a score file, or
                has a damaged row (the message names the file and the line).
        """
        lines = complete_lines(self.path).splitlines()
        if not lines:
            return {}
        try:
            header = json.loads(lines[0])
        except ValueError as err:
            raise ValueError(f"{self.path} is not a bsatnp score cache: line 1: {err}") from err
        if header != {"header": self.header}:
            if not isinstance(header, dict) or set(header) != {"header"}:
                raise ValueError(f"{self.path} is not a bsatnp score cache: line 1 is not its "
                                 "header")
            raise ValueError(
                f"{self.path} holds scores of another evaluation (model, weights, task "
                "or seed differ); delete it or choose another cache directory"
            )
        names = [self.header["name"]]
        metrics: dict[str, set[str]] = {}
        scores = {}
        for number, line in enumerate(lines[1:], start=2):
            try:
                index, row = _parse_row(line, names, metrics)
            except ValueError as err:
                raise ValueError(
                    f"{self.path}, line {number}: damaged score cache row ({err}); delete "
                    "that line (its batch is scored again) or the whole file"
                ) from err
            scores[index] = row
        return scores

    def append(self, index: int, scores: Mapping[str, Mapping[str, float]]) -> None:
        """Append one batch's scores (writing the header first into a new file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", encoding="utf-8") as handle:
            if new:
                handle.write(json.dumps({"header": self.header}) + "\n")
            handle.write(json.dumps({"index": index, "scores": scores}) + "\n")
            handle.flush()


def _parse_row(line: str, names: Sequence[str], metrics: dict[str, set[str]]
               ) -> tuple[int, dict[str, dict[str, float]]]:
    """``(index, scores)`` of one cache row (see :meth:`ScoreCache.load`).

    ``metrics`` maps each name to the metric names of the rows read so far (filled here).

    Raises:
        ValueError: Saying what is wrong with the row.
    """
    try:
        row = json.loads(line)
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from err
    except RecursionError:
        raise ValueError("nested too deeply to be a score row") from None
    if not isinstance(row, dict) or set(row) != {"index", "scores"}:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise ValueError(f"expected the keys ['index', 'scores'], got {keys}")
    index, scores = row["index"], row["scores"]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"'index' must be a non-negative integer, got {index!r}")
    if not isinstance(scores, dict) or sorted(scores) != sorted(names):
        got = sorted(scores) if isinstance(scores, dict) else type(scores).__name__
        raise ValueError(f"'scores' must hold {sorted(names)}, got {got}")
    for name, values in scores.items():
        if not isinstance(values, dict) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
            raise ValueError(f"scores of {name!r} must map metric names to numbers, got "
                             f"{values!r}")
        if "nll" not in values:
            raise ValueError(f"scores of {name!r} have no 'nll' (metrics {sorted(values)})")
        expected = metrics.setdefault(name, set(values))
        if set(values) != expected:
            raise ValueError(f"scores of {name!r} have the metrics {sorted(values)}, earlier "
                             f"rows {sorted(expected)}")
    return index, scores
