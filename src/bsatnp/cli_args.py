"""The ``bsatnp`` command's arguments: its parser and the types that read option values.

Every value is checked as it is read (a count, a finite number, a grid, a size), so a bad
option ends the command with one line naming it (exit 2), like every other user error.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch

from bsatnp.data.table_task import SPLIT_KINDS
from bsatnp.experiment import bundled_configs
from bsatnp.likelihoods import LIKELIHOODS
from bsatnp.models.local_average import LOCAL_AVERAGES
from bsatnp.predict import FORMAT_HELP
from bsatnp.tasks import task_names

DEMO_CONFIG = "gp2d_quick"
DEMO_MINUTES = 5.0
"""Training budget of the demo: with ~2 min of evaluation the demo takes < 10 min on 2 cores."""
MAX_SAMPLES = 10_000
"""Most marginal samples per target ``bsatnp predict --samples`` draws."""


def batch_counts(text: str) -> int | dict[str, int]:
    """``"500"`` → 500; ``"in_domain=500,scaled=20"`` → ``{"in_domain": 500, "scaled": 20}``."""
    try:
        if "=" not in text:
            counts: int | dict[str, int] = int(text)
        else:
            pairs = (item.split("=") for item in text.split(","))
            counts = {domain.strip(): int(count) for domain, count in pairs}
        if min(counts.values() if isinstance(counts, dict) else [counts]) < 1:
            raise argparse.ArgumentTypeError(f"batch counts must be >= 1, got {text!r}")
        return counts
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected a count or DOMAIN=COUNT pairs separated by commas, got {text!r}"
        ) from err


def number_or_text(text: str) -> float | str:
    """A number if the text reads as one (``"3"``), else the text (``"6h"``)."""
    try:
        return float(text)
    except ValueError:
        return text


def neighbours(text: str) -> int | str | None:
    """``--neighbours``: ``auto``, ``choose``, ``all`` (``None``) or a count >= 1."""
    if text in ("auto", "choose", "all"):
        return None if text == "all" else text
    return positive(int)(text)


def grid_axes(text: str) -> dict[str, tuple[float, float, int]]:
    """``"lon=115.9:117.1:241,lat=39.6:40.5:181"`` → ``{"lon": (115.9, 117.1, 241), ...}``."""
    axes = {}
    for item in text.split(","):
        try:
            name, spec = item.split("=")
            start, stop, n = spec.split(":")
            axis = (float(start), float(stop), int(n))
        except ValueError:
            raise ValueError(f"--grid: expected NAME=START:STOP:N items separated by commas, "
                             f"got {item!r}") from None
        if name.strip() in axes:
            raise ValueError(f"--grid: axis {name.strip()!r} is given twice")
        axes[name.strip()] = axis
    return axes


def positive(kind: type, zero: bool = False) -> Any:
    """An argparse type: a number of ``kind`` that must be > 0 (>= 0 with ``zero``)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (value >= 0 if zero else value > 0):
            raise argparse.ArgumentTypeError(f"must be {'>=' if zero else '>'} 0, got {text}")
        return value
    return parse


def finite(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def bounded(low: int, high: int) -> Any:
    """An argparse type: an integer in ``[low, high]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value
    return parse


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (exit 2), like every other user error."""

    def error(self, message: str) -> Any:  # noqa: D102 (argparse's hook)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``bsatnp``: one subcommand per command (``args.name``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    common.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser = _Parser(
        prog="bsatnp", description="BSA-TNP neural processes: train, evaluate, predict, plot. "
        f"Registered tasks: {', '.join(task_names())}."
    )
    sub = parser.add_subparsers(dest="name", required=True, metavar="COMMAND")

    cmd = sub.add_parser(
        "demo", parents=[common],
        help="train briefly (default: the 2D GP), evaluate vs the oracle, plot",
        description="Train a model for a wall-clock budget (default: the paper's BSA-TNP on "
        "the 2D GP), evaluate it on every domain of its task against the task's exact oracle, "
        "and write eval.md/eval.json, field.png and learning_curve.png (~7-9 min on 2 CPU "
        "cores for the default). Overwrites a previous demo in the same directory.",
    )
    cmd.add_argument("--out", default="outputs/demo", help="output directory (%(default)s)")
    cmd.add_argument("--minutes", type=positive(float, zero=True), default=DEMO_MINUTES,
                     help="training budget in minutes (%(default)s)")
    cmd.add_argument("--config", default=DEMO_CONFIG,
                     help="experiment to demo: a YAML file or bundled config (%(default)s; "
                          f"bundled: {', '.join(bundled_configs())})")

    cmd = sub.add_parser("train", parents=[common], help="train from a YAML experiment config",
                         description="Train a model on a registered task "
                         f"({', '.join(task_names())}) as a YAML experiment describes.")
    cmd.add_argument("--config", required=True,
                     help=f"YAML file, or a bundled config: {', '.join(bundled_configs())}")
    cmd.add_argument("--out", help="output directory (default: train.out_dir of the config, "
                     "or the resumed run's directory)")
    cmd.add_argument("--steps", type=positive(int),
                     help="stop at this total step count (the LR schedule keeps train.steps)")
    cmd.add_argument("--minutes", type=positive(float), help="stop after this wall-clock budget")
    start = cmd.add_mutually_exclusive_group()
    start.add_argument("--resume", help="checkpoint of a previous run to continue exactly")
    start.add_argument("--init", metavar="CHECKPOINT | MODEL",
                       help="start a fresh run (new optimiser and schedule) from the weights of "
                            "a checkpoint or a shipped model (bsatnp models): a warm restart "
                            "with a longer schedule, or another task config of the same model "
                            "(on your own data: bsatnp finetune)")
    cmd.add_argument("--overwrite", action="store_true",
                     help="start afresh in an --out directory that already holds a run")

    cmd = sub.add_parser("evaluate", parents=[common],
                         help="score a checkpoint and its task's oracle on fixed batches")
    cmd.add_argument("--checkpoint", required=True)
    cmd.add_argument("--n-batches", type=batch_counts, metavar="N | DOMAIN=N,...",
                     help="batches per domain: one count, or e.g. in_domain=500,scaled=20 "
                          "(default: eval.n_batches of the run)")
    cmd.add_argument("--seed", type=int, help="test seed (default: eval.seed of the run)")
    cmd.add_argument("--domains", nargs="+", metavar="DOMAIN",
                     help="domains of the run's task (default: eval.domains, else all; "
                          "see `bsatnp tasks`)")
    cmd.add_argument("--baselines", nargs="+", choices=sorted(LOCAL_AVERAGES), default=(),
                     help="also score these training-free baselines (std calibrated on the "
                          "run's validation batches)")
    cmd.add_argument("--no-oracle", action="store_true", help="skip the exact GP oracle")
    cmd.add_argument("--out", help="directory for eval.json/eval.md (default: the checkpoint's)")
    cmd.add_argument("--cache", metavar="DIR",
                     help="append each batch's scores to DIR/<domain>/<name>.jsonl (one file "
                          "per model, and oracle.jsonl) as it finishes; a rerun scores only "
                          "the batches and models missing there")

    schema = argparse.ArgumentParser(add_help=False)
    group = schema.add_argument_group(
        "data roles (needed when the model has no stored schema; must match it otherwise)")
    group.add_argument("--values", nargs="+", metavar="COLUMN", help="value column(s)")
    group.add_argument("--space", nargs="+", metavar="COLUMN",
                       help="location columns: lon lat (with --crs lonlat) or x y")
    group.add_argument("--crs", help="'lonlat' for degrees, a projected CRS such as "
                       "EPSG:32650, or omit for plain units")
    group.add_argument("--time", metavar="COLUMN", help="time column (datetimes or numbers)")
    group.add_argument("--covariates", nargs="+", metavar="COLUMN", help="covariate columns")
    group.add_argument("--units", nargs="+", help="units of the value column(s), e.g. degC")
    offset = group.add_mutually_exclusive_group()
    offset.add_argument("--exposure", metavar="COLUMN",
                        help="a count model: each row's exposure (e.g. population); the "
                        "outputs are then rates per unit of it")
    offset.add_argument("--trials", metavar="COLUMN",
                        help="a binomial model: each row's number of trials; the outputs are "
                        "then shares of trials")
    group.add_argument("--space-scale", default="auto",
                       help="length units per model unit, 'auto' or 'per_axis' (%(default)s)")
    group.add_argument("--transform", default="none", choices=("none", "log", "log1p"),
                       help="value transform before normalising (%(default)s)")
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("--checkpoint", help="a checkpoint file")
    source.add_argument("--model", help="a shipped pretrained model (see `bsatnp models`)")

    cmd = sub.add_parser(
        "predict", parents=[common, source, schema], help="predict at new points",
        description="Predict from observations in their own units at targets or on a grid:\n"
        "  bsatnp predict --model gp2d --observations stations.csv --values pm25 \\\n"
        "      --space lon lat --crs lonlat --grid lon=115.9:117.1:241,lat=39.6:40.5:181 \\\n"
        "      --interval 0.9 --output grid.nc\n"
        "Inputs: .csv, .csv.gz, .parquet or .nc; output .csv, .parquet or .nc with mean, std "
        "and the requested quantiles/interval/exceedance probabilities/samples in the units of "
        "the values (class probabilities for a categorical model).\n\nThe original form "
        "reads one split file in model units (--input):\n" + FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("--observations", help="observed points with values")
    cmd.add_argument("--targets", help="points to predict at (rows or a netCDF grid)")
    cmd.add_argument("--grid", help="a grid NAME=START:STOP:N,... instead of --targets")
    cmd.add_argument("--target-crs", help="CRS of the targets if not that of the observations")
    cmd.add_argument("--quantiles", nargs="+", type=float, help="e.g. 0.05 0.5 0.95")
    cmd.add_argument("--interval", type=float, help="central interval mass, e.g. 0.9")
    cmd.add_argument("--exceedance", nargs="+", type=finite, metavar="THRESHOLD",
                     help="probability that the value exceeds each threshold (in the values' "
                          "units), e.g. 75 100: columns exceedance_75.0, ...")
    cmd.add_argument("--samples", type=bounded(0, MAX_SAMPLES), default=0, metavar="N",
                     help=f"marginal samples per target (0-{MAX_SAMPLES})")
    cmd.add_argument("--joint", type=positive(int), metavar="CHUNK",
                     help="make the --samples coherent in space: targets drawn CHUNK at a "
                          "time, each chunk given the observations and the values drawn "
                          "before it (global conditioning, one forward pass per chunk; "
                          "table outputs)")
    cmd.add_argument("--seed", type=positive(int, zero=True), help="seed of the samples (>= 0)")
    cmd.add_argument("--chunk-size", type=positive(int), help="targets per forward pass")
    cmd.add_argument("--neighbours", type=neighbours, default="auto",
                     metavar="K | auto | choose | all",
                     help="predict each tile of targets from its K nearest observations "
                          "(auto: the model's training context size when there are more "
                          "observations; choose: the K among 128-2048 that best predicts "
                          "observations held out, by CRPS (bsatnp.choose_neighbours); all: "
                          "condition on every observation)")
    cmd.add_argument("--holdout", choices=("random", "gap"),
                     help="with --neighbours choose: hold out scattered rows (random, the "
                          "default) or contiguous holes (gap: for targets in gaps)"),
    cmd.add_argument("--time-window", type=number_or_text, metavar="SPAN",
                     help="space-time models: neighbours in space among the observations "
                          "within SPAN of each target's time (a number in the time column's "
                          "units, or a duration such as 6h for datetimes)")
    cmd.add_argument("--max-memory", help="bound on the whole process, e.g. 2GB: chunks get "
                     "what the libraries, model and observations leave; a --grid written to "
                     ".nc is predicted and written block by block (bsatnp[data]), other "
                     "outputs must fit whole or are refused")
    cmd.add_argument("--input", help="one split .csv or .npz in model units (format above)")
    cmd.add_argument("--output", required=True, help=".csv, .parquet or .nc (.npz: --input)")

    cmd = sub.add_parser(
        "finetune", parents=[common, source, schema],
        help="train a checkpoint or pretrained model further on your own table",
        description="Fine-tune on a table of observations in their own units; the run keeps "
        "its best validation state, with the schema and normaliser, in OUT/best.safetensors.")
    cmd.add_argument("--data", required=True, help=".csv, .parquet or .nc observations")
    cmd.add_argument("--out", default="runs/finetune", help="run directory (%(default)s)")
    cmd.add_argument("--steps", type=positive(int), default=1000,
                     help="optimiser steps (%(default)s)")
    cmd.add_argument("--split", default="random", choices=SPLIT_KINDS,
                     help="how training tasks split rows into context and test (%(default)s; "
                          "gap: holes predicted from the rows around them, as local "
                          "conditioning predicts)")
    cmd.add_argument("--n-ctx", type=positive(int), default=256,
                     help="context points per training task (%(default)s)")
    cmd.add_argument("--group", metavar="COLUMN",
                     help="a column naming each row's field (e.g. a date): every training "
                          "task is drawn from one field")
    cmd.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (%(default)s)")
    cmd.add_argument("--batch-size", type=positive(int), default=8,
                     help="tasks per step (%(default)s)")
    cmd.add_argument("--likelihood", choices=[name for name in LIKELIHOODS
                                              if name != "categorical"],
                     help="end the model in this likelihood instead (a Gaussian model into "
                          "a count model, say: its new head starts untrained)")
    start = cmd.add_mutually_exclusive_group()
    start.add_argument("--overwrite", action="store_true",
                       help="replace a run already in --out")
    start.add_argument("--resume", action="store_true",
                       help="continue the run in --out (same data and options) exactly "
                            "where it stopped")

    cmd = sub.add_parser("info", help="describe a checkpoint: model, card, schema, normaliser")
    cmd.add_argument("checkpoint")

    cmd = sub.add_parser("models", help="list the pretrained models shipped in the package")

    cmd = sub.add_parser("plot", parents=[common],
                         help="plot a predicted field (--checkpoint) or a learning curve (--log)")
    source = cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", nargs="+",
                        help="plot one field of its task predicted by this model (several: "
                             "one row each, on the first one's task)")
    source.add_argument("--log", nargs="+",
                        help="plot the learning curve of this log.jsonl (several: one figure)")
    cmd.add_argument("--label", nargs="+",
                     help="one name per --log or --checkpoint (default: its directory)")
    cmd.add_argument("--out", help="PNG file (default: beside the input)")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the plotted task")
    cmd.add_argument("--domain", default="in_domain", help="a domain of the run's task")
    cmd.add_argument("--n-ctx", type=positive(int), default=200,
                     help="context points (%(default)s)")

    cmd = sub.add_parser("tasks", help="list the registered tasks and their evaluation domains")
    return parser


def print_paths(paths: dict[str, Any]) -> None:
    """Print each named path on its own line, the names aligned."""
    width = max(len(name) for name in paths)
    for name, path in paths.items():
        print(f"  {name:<{width}}  {path}")


def device_of(args: argparse.Namespace) -> torch.device:
    """``--device``, checked against what this machine and build offer.

    The default is CUDA where it is available, else the CPU.
    """
    if args.device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise ValueError(f"--device {args.device!r}: {err}") from err
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise ValueError(f"--device {args.device!r}: not available on this machine or build "
                         f"(available: {', '.join(k for k, v in available.items() if v)})")
    return device
