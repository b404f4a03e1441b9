"""Predictions for user-supplied points: read context and test points, write mean and std."""

from __future__ import annotations

import csv
import io
import os
import zipfile
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from bsatnp.batch import ROLES, Batch
from bsatnp.io.files import existing_file, refuse_overwriting_inputs, write_atomic
from bsatnp.models.base import NeuralProcess, model_device

FORMAT_HELP = """\
Input, one task (columns/arrays depend on the model; a 2D-GP model has Ds=2, Df=1):
  CSV (.csv): a header row, then one row per point with a column 'split' ('context' or
    'test'), the location columns s0, s1, ... (one column named 's' when Ds=1) and the
    value column f (f0, f1, ... when Df>1); f may be left empty on test rows.
    Models with time or covariate roles also need t.../x... columns.
      split,s0,s1,f
      context,0.1,-0.5,0.83
      test,0.0,0.0,
  NPZ (.npz): arrays s_ctx [Lc, Ds], f_ctx [Lc] or [Lc, Df], s_test [Lt, Ds]
    (plus x_ctx/x_test, t_ctx/t_test for those roles).
  A categorical model with C classes reads one-hot values f0..f{C-1}.
Output (format by extension): the test points with the predictive mean and standard
  deviation, CSV columns <test location columns>, mean, std (mean0.., std0.. when Df>1),
  or NPZ arrays s_test, mean [Lt, Df], std [Lt, Df]. A categorical model writes the class
  probabilities prob0..prob{C-1} and the most likely class instead (NPZ: prob [Lt, C],
  class [Lt, 1])."""


def read_split_file(path: str | os.PathLike[str], model: NeuralProcess) -> Batch:
    """Read one task (context and test points) from a CSV or NPZ file (see :data:`FORMAT_HELP`).

    Args:
        path: ``.csv`` or ``.npz`` file.
        model: The model that will predict (gives the roles and their widths).

    Returns:
        A float64 batch with ``B = 1`` (no ``f_test``), values as read.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: On an unknown extension, missing columns/arrays or non-numeric values.
    """
    path = existing_file(path, "input file")
    readers = {".csv": _read_csv, ".npz": _read_npz}
    if path.suffix not in readers:
        raise ValueError(f"{path}: unsupported input format {path.suffix!r}; use .csv or .npz")
    arrays = readers[path.suffix](path, model)
    for name, value in arrays.items():
        big = np.abs(value) > np.finfo(np.float32).max
        if big.any():
            row = int(np.argwhere(big)[0][0]) + 1  # a CSV names its line in _numbers
            raise ValueError(f"{path}: {name} row {row} (counting from 1) holds "
                             f"{value[big].flat[0]:g}, which overflows float32; rescale that "
                             "column")
    return Batch(**{name: torch.as_tensor(value, dtype=torch.float64)[None]
                    for name, value in arrays.items()})


def centred(arrays: dict[str, np.ndarray], roles: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Subtract the context median of each translation-invariant role, in float64.

    The model's predictions do not change (it reads only differences of these roles), but
    the float32 cast that follows keeps their precision: UTM metres or epoch seconds would
    otherwise lose several digits. The median, not the mean: one far outlier cannot move
    the origin away from the other points (and cost them their precision).
    """
    out = dict(arrays)
    for role in roles:
        if f"{role}_ctx" in out:
            origin = np.median(np.asarray(out[f"{role}_ctx"], dtype=np.float64), axis=0)
            for part in ("ctx", "test"):
                out[f"{role}_{part}"] = np.asarray(out[f"{role}_{part}"], np.float64) - origin
    return out


def write_predictions(path: str | os.PathLike[str], batch: Batch,
                      outputs: Mapping[str, torch.Tensor]) -> Path:
    """Write the test points of ``batch`` (``B = 1``) with named outputs ``[1, Lt, k]``.

    Args:
        path: ``.csv`` (columns ``name`` or ``name0, name1, ...`` per output) or ``.npz``.
        batch: The task whose test points are written first.
        outputs: E.g. ``{"mean": ..., "std": ...}`` or ``{"prob": ..., "class": ...}``.

    Raises:
        ValueError: On an unknown extension (``.csv`` or ``.npz``).
    """
    path = Path(path)
    tests = {f"{role}_test": batch.test(role)[0].numpy() for role in ROLES
             if batch.test(role) is not None}
    pred = {name: value[0].cpu().numpy() for name, value in outputs.items()}
    if path.suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, **tests, **pred)
        write_atomic(path, buffer.getvalue())
        return path
    if path.suffix != ".csv":
        raise ValueError(f"{path}: unsupported output format {path.suffix!r}; use .csv or .npz")
    arrays = {**tests, **pred}
    header = [column for name, array in arrays.items()
              for column in _columns(name.removesuffix("_test"), array.shape[1])]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    columns = [array.tolist() for array in arrays.values()]  # ints stay ints (class)
    writer.writerows([value for part in row for value in part] for row in zip(*columns))
    write_atomic(path, text.getvalue().encode("utf-8"))
    return path


def predict_file(model: NeuralProcess, input_path: str | os.PathLike[str],
                 output_path: str | os.PathLike[str]) -> Path:
    """Read points, predict with ``model`` and write the predictions.

    Gaussian models write the predictive mean and standard deviation; categorical ones the
    class probabilities and the most likely class.

    Raises:
        ValueError: If the input does not fit the model.
    """
    refuse_overwriting_inputs(output_path, {"--input": input_path})
    batch = read_split_file(input_path, model)
    arrays = centred({f.name: getattr(batch, f.name)[0].numpy() for f in fields(batch)
                      if getattr(batch, f.name) is not None}, model.translation_invariant_roles)
    on_device = Batch(**{name: torch.as_tensor(value)[None] for name, value in arrays.items()}
                      ).to(model_device(model), dtype=torch.float32)
    model.eval()
    if model.likelihood == "categorical":
        with torch.no_grad():
            probs = model(on_device).probs
        outputs = {"prob": probs, "class": probs.argmax(-1, keepdim=True)}
    else:
        mean, std = model.predict(on_device)
        outputs = {"mean": mean, "std": std}
    return write_predictions(output_path, batch, outputs)  # the test points as read


def _columns(role: str, dim: int) -> list[str]:
    """Column names of a role: ``[role]`` for one feature, else ``role0, role1, ...``."""
    return [role] if dim == 1 else [f"{role}{i}" for i in range(dim)]


def _roles(model: NeuralProcess) -> list[tuple[str, int]]:
    """The model's input roles and their widths, in ``x, s, t`` order."""
    return [(role, model.width(role)) for role in model.roles]


def _read_csv(path: Path, model: NeuralProcess) -> dict[str, np.ndarray]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:  # a BOM is not a column
            reader = csv.DictReader(file)
            rows = list(reader)
            header = reader.fieldnames or []
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); save the CSV as "
                         "UTF-8") from None
    except csv.Error as err:
        raise ValueError(f"{path}, line {reader.line_num}: not a readable CSV: {err}") from None
    needed = ["split"] + [c for role, dim in _roles(model) for c in _columns(role, dim)]
    needed += _columns("f", model.width("f"))
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {needed}")
    splits = {"context": [], "test": []}
    for line, row in enumerate(rows, start=2):
        split = (row["split"] or "").strip()
        if split not in splits:
            raise ValueError(f"{path}, line {line}: split must be 'context' or 'test', "
                             f"got {row['split']!r}")
        splits[split].append((line, row))
    out = {}
    for split, suffix in (("context", "ctx"), ("test", "test")):
        if not splits[split]:
            raise ValueError(f"{path}: no {split} rows")
        roles = _roles(model) + ([("f", model.width("f"))] if split == "context" else [])
        for role, dim in roles:
            out[f"{role}_{suffix}"] = _numbers(path, splits[split], _columns(role, dim))
    return out


def _numbers(path: Path, rows: list[tuple[int, dict[str, str]]], columns: list[str]) -> np.ndarray:
    """The ``columns`` of ``rows`` as a float array ``[len(rows), len(columns)]``."""
    out = np.empty((len(rows), len(columns)))
    for i, (line, row) in enumerate(rows):
        for j, column in enumerate(columns):
            try:
                out[i, j] = float(row[column])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}, line {line}: column {column!r} must be a number, "
                    f"got {row[column]!r}"
                ) from None
            if abs(out[i, j]) > np.finfo(np.float32).max:
                raise ValueError(f"{path}, line {line}: column {column!r} holds "
                                 f"{out[i, j]:g}, which overflows float32; rescale that column")
    return out


def _read_npz(path: Path, model: NeuralProcess) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        reason = ("it holds Python objects, which are never loaded"
                  if zipfile.is_zipfile(path) and "pickle" in str(err)
                  else "not a zip of .npy arrays")
        raise ValueError(f"{path}: not a readable .npz file ({reason})") from None
    names = [f"{role}_{part}" for role, _ in _roles(model) for part in ("ctx", "test")]
    names.append("f_ctx")
    missing = [name for name in names if name not in stored]
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing}; expected {names}")
    out = {}
    for name in names:
        array = stored[name]
        if name == "f_ctx" and array.ndim == 1:
            array = array[:, None]
        if (array.ndim != 2 or not np.issubdtype(array.dtype, np.number)
                or np.iscomplexobj(array)):
            raise ValueError(f"{path}: array {name} must be real numbers [L, D], got "
                             f"{array.dtype} {array.shape}")
        if len(array) == 0:
            raise ValueError(f"{path}: array {name} has no points")
        out[name] = array
    return out
