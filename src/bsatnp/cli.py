"""Command-line interface: ``bsatnp {demo,train,evaluate,predict,finetune,info,models,plot,tasks}``.

Bad configs, checkpoints and input files end the program with a one-line message on
stderr and exit code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bsatnp.baselines import calibrated_local_averages
from bsatnp.baselines.idw import LOCAL_AVERAGES
from bsatnp.data.table_task import SPLIT_KINDS
from bsatnp.evaluate import evaluate
from bsatnp.experiment import (
    ExperimentConfig,
    build_trainer,
    bundled_configs,
    experiment_from_checkpoint,
    load_experiment,
)
from bsatnp.io.checkpoint import load_checkpoint, load_model
from bsatnp.io.files import existing_file, refuse_overwriting_inputs
from bsatnp.predict import FORMAT_HELP, predict_file
from bsatnp.pretrained import checkpoint_path
from bsatnp.reports import markdown_table, write_results
from bsatnp.tasks import eval_batches, task_class, task_names
from bsatnp.text import terminal_safe

DEMO_CONFIG = "gp2d_quick"
DEMO_MINUTES = 5.0
"""Training budget of the demo: with ~2 min of evaluation the demo takes < 10 min on 2 cores."""
DEMO_RUN_FILES = ("log.jsonl", "last.safetensors", "best.safetensors")
MAX_SAMPLES = 10_000
"""Most marginal samples per target ``bsatnp predict --samples`` draws."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 success, 2 bad input).

    A user error (bad arguments, files, configs, checkpoints or data; a missing extra) is
    one line on stderr naming the file, line or argument; ``--debug`` shows the traceback.
    """
    args = _parser().parse_args(argv)
    shown = warnings.formatwarning
    if not getattr(args, "debug", False):  # a warning is one line too, without source code
        warnings.formatwarning = lambda message, *_, **__: (
            f"bsatnp {args.name}: warning: {' '.join(str(message).split())}\n")
    try:
        args.command(args)
    except (ValueError, OSError, ImportError) as err:
        if getattr(args, "debug", False):
            raise
        text = (err.strerror if isinstance(err, OSError) and err.filename is None
                and err.strerror else str(err))  # not "[Errno 28] cannot write ..."
        message = " ".join(text.split())  # one line
        print(f"bsatnp {args.name}: error: {message}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = shown
    return 0


def _demo(args: argparse.Namespace) -> None:
    out = Path(args.out)
    run_dir = out / "run"
    for name in DEMO_RUN_FILES:  # a previous demo here: start afresh
        (run_dir / name).unlink(missing_ok=True)
    config = load_experiment(args.config)
    trainer = build_trainer(config, out_dir=run_dir, device=_device(args), overwrite=True)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(f"Training a {type(trainer.model).__name__} ({n_params:,} parameters) on the "
          f"{config.task.name} task ({args.config} config) for {args.minutes:g} min on "
          f"{_device(args)} "
          f"with {torch.get_num_threads()} threads ...", flush=True)
    trainer.fit(progress=not args.quiet, max_seconds=60 * args.minutes)
    oracle = " against its exact oracle" if config.task.has_oracle else ""
    print(f"Trained {trainer.step} steps. Evaluating{oracle} ...", flush=True)
    model = trainer.model.eval()
    results = evaluate(model, config.eval.domains_of(config.task), config.eval.n_batches,
                       config.eval.seed, progress=not args.quiet, task=config.task)
    paths = _report(results, out)
    from bsatnp.plot import plot_field, plot_learning_curve

    if config.task.has_field:
        paths["field plot"] = plot_field(model, out / "field.png", seed=config.eval.seed,
                                         task=config.task)
    paths["learning curve"] = plot_learning_curve(run_dir / "log.jsonl",
                                                  out / "learning_curve.png")
    paths["checkpoint"] = run_dir / "last.safetensors"
    paths["training log"] = run_dir / "log.jsonl"
    _print_paths(paths)


def _train(args: argparse.Namespace) -> None:
    from bsatnp.train.distributed import local_device, replicas_from_environment

    config = load_experiment(args.config)
    device = local_device(_device(args))
    replicas = replicas_from_environment(device)  # under torchrun: data parallel
    init = None if args.init is None else checkpoint_path(args.init)
    trainer = build_trainer(config, resume=args.resume, out_dir=args.out, device=device,
                            overwrite=args.overwrite, replicas=replicas, init=init)
    steps = None if args.steps is None else max(0, args.steps - trainer.step)
    max_seconds = None if args.minutes is None else 60 * args.minutes
    trainer.fit(steps=steps, progress=not args.quiet, max_seconds=max_seconds)
    if replicas is not None and not replicas.is_main:
        return
    where = "" if replicas is None else f" on {replicas.world_size} data-parallel processes"
    print(f"Trained to step {trainer.step} of {trainer.config.steps}{where}.")
    _print_paths({name: trainer.out_dir / f"{name}.safetensors" for name in ("last", "best")}
                 | {"log": trainer.out_dir / "log.jsonl"})


def _evaluate(args: argparse.Namespace) -> None:
    model, config = _load(args)
    scored: nn.Module | dict[str, nn.Module] = model
    if args.baselines:
        validation = eval_batches(config.task, config.train.val_batches, config.eval.val_seed,
                                  split="valid")
        scored = {"model": model, **calibrated_local_averages(args.baselines, validation)}
    results = evaluate(
        scored,
        domains=args.domains or (tuple(args.n_batches) if isinstance(args.n_batches, dict)
                                 else config.eval.domains_of(config.task)),
        n_batches=args.n_batches or config.eval.n_batches,
        seed=config.eval.seed if args.seed is None else args.seed,
        with_oracle=not args.no_oracle,
        progress=not args.quiet,
        task=config.task,
        cache_dir=args.cache,
    )
    _print_paths(_report(results, Path(args.out or Path(args.checkpoint).parent)))


def _batch_counts(text: str) -> int | dict[str, int]:
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


def _predict(args: argparse.Namespace) -> None:
    if args.input is not None:  # one split CSV/NPZ in model units (the original form)
        if args.checkpoint is None:
            raise ValueError("--input needs --checkpoint")
        ignored = [option for option, value, default in (
            ("--values", args.values, None), ("--space", args.space, None),
            ("--crs", args.crs, None),
            ("--time", args.time, None), ("--covariates", args.covariates, None),
            ("--units", args.units, None), ("--space-scale", args.space_scale, "auto"),
            ("--transform", args.transform, "none"), ("--target-crs", args.target_crs, None),
            ("--quantiles", args.quantiles, None), ("--interval", args.interval, None),
            ("--exceedance", args.exceedance, None), ("--samples", args.samples, 0),
            ("--seed", args.seed, None),
            ("--chunk-size", args.chunk_size, None), ("--neighbours", args.neighbours, "auto"),
            ("--time-window", args.time_window, None), ("--max-memory", args.max_memory, None),
            ("--observations", args.observations, None), ("--targets", args.targets, None),
            ("--grid", args.grid, None),
        ) if value != default]
        if ignored:
            raise ValueError(f"--input holds the observations and targets (in model units; it "
                             f"writes mean and std); {', '.join(ignored)} would be ignored: "
                             "give one form or the other")
        existing_file(args.input, "--input")
        path = predict_file(load_model(checkpoint_path(args.checkpoint), _device(args)),
                            args.input, args.output)
        print(f"Wrote predictions to {path}")
        return
    if args.observations is None or (args.targets is None) == (args.grid is None):
        raise ValueError("give --observations and one of --targets or --grid "
                         "(or --input for a split file in model units)")
    from bsatnp.data.files import read_table, write_table
    from bsatnp.data.geo import check_crs
    from bsatnp.data.tables import count_targets, grid
    from bsatnp.options import refuse_numeric_options

    check_crs(args.crs, "--crs")
    check_crs(args.target_crs, "--target-crs")
    existing_file(args.observations, "--observations")
    if args.targets is not None:
        existing_file(args.targets, "--targets")
    refuse_overwriting_inputs(args.output, {"--observations": args.observations,
                                            "--targets": args.targets})
    predictor = _predictor(args)
    refuse_numeric_options(predictor.model, {
        "--quantiles": args.quantiles, "--interval": args.interval is not None,
        "--exceedance": args.exceedance, "--samples": args.samples,
        "--seed": args.seed is not None,
        "--transform": args.transform != "none", "--units": args.units})
    if args.seed is not None and not args.samples:
        raise ValueError("--seed seeds the --samples; without --samples it would be ignored")
    roles = _roles(args)
    time = roles.get("time") or (predictor.schema.time if predictor.schema else None)
    observations = read_table(args.observations, time=time)
    targets = (read_table(args.targets, time=time) if args.targets is not None
               else grid(**_grid_axes(args.grid)))
    conditioned = predictor.condition(observations,
                                      space_scale=_number_or_text(args.space_scale),
                                      value_transform=args.transform,
                                      neighbours=args.neighbours,
                                      time_window=args.time_window, **roles)
    streamed = args.grid is not None and Path(args.output).suffix.lower() == ".nc" \
        and not args.samples and importlib.util.find_spec("h5netcdf") is not None
    options = {"crs": args.target_crs, "quantiles": args.quantiles or (),
               "interval": args.interval, "exceedance": args.exceedance or (),
               "chunk_size": args.chunk_size,
               "max_memory": _working_memory(args, conditioned, targets, streamed)}
    if streamed:  # a grid into netCDF: predicted and written block by block
        path = conditioned.write_grid(targets, args.output, progress=not args.quiet,
                                      **options)
    else:
        out = conditioned.predict(targets, **options, n_samples=args.samples, seed=args.seed,
                                  progress=not args.quiet,
                                  as_table=Path(args.output).suffix.lower() != ".nc")
        path = write_table(out, args.output)
    print(f"Wrote predictions at {count_targets(targets, conditioned.schema):,} targets from "
          f"{conditioned.n_context:,} observations to {path}")


HELD_BYTES_PER_TARGET = 256
"""Memory of one target's outputs (mean and std) held whole for a CSV/Parquet file: its
DataFrame row and text (measured: 1,000,000 grid targets to CSV took 205 MB above the
process's base). Each quantile, interval bound, exceedance threshold or sample adds half
of it."""


def _working_memory(args: argparse.Namespace, conditioned: Any, targets: Any,
                    streamed: bool) -> int | None:
    """The chunk budget that keeps the whole process within ``--max-memory``.

    What the process already holds (libraries, model, observations) is subtracted; a
    quarter of the rest goes to a chunk's working memory, the rest to the block being
    written and the netCDF writer (``streamed``: measured, a half left too little) or, for
    outputs held whole, must hold them within half.
    """
    if args.max_memory is None:
        return None
    from bsatnp.data.tables import count_targets, resident_memory
    from bsatnp.options import parse_bytes

    bound, held = parse_bytes(args.max_memory), resident_memory()
    left = bound - held
    numbers = (2 + len(args.quantiles or ()) + len(args.exceedance or ())
               + 2 * (args.interval is not None) + args.samples)
    per_target = HELD_BYTES_PER_TARGET // 2 * numbers * max(1, len(conditioned.schema.values))
    outputs = 0 if streamed else per_target * count_targets(targets, conditioned.schema)
    if left <= 0 or outputs > left // 2:
        need = held + (2 * outputs if outputs else 64 * 2**20)
        why = ("--samples are drawn whole" if args.samples
               else "a --grid written to .nc streams")
        reason = (f"the {outputs / 2**20:,.0f} MiB of outputs held whole for "
                  f"{Path(args.output).suffix} ({why})" if outputs else "the predictions")
        raise ValueError(f"--max-memory {args.max_memory}: this process already holds "
                         f"{held / 2**20:,.0f} MiB (libraries, model, observations), which "
                         f"leaves too little for {reason}; give at least "
                         f"{need / 2**20:,.0f}MiB")
    return left // 4


def _finetune(args: argparse.Namespace) -> None:
    from bsatnp.data.files import read_table
    from bsatnp.data.geo import check_crs
    from bsatnp.options import refuse_numeric_options

    existing_file(args.data, "--data")
    check_crs(args.crs, "--crs")
    predictor = _predictor(args)
    refuse_numeric_options(predictor.model, {"--transform": args.transform != "none",
                                             "--units": args.units})
    roles = _roles(args)
    time = roles.get("time") or (predictor.schema.time if predictor.schema else None)
    data = read_table(args.data, time=time)
    tuned = predictor.finetune(data, steps=args.steps, split=args.split, lr=args.lr,
                               batch_size=args.batch_size, out_dir=args.out, n_ctx=args.n_ctx,
                               group=args.group,
                               overwrite=args.overwrite, resume=args.resume,
                               progress=not args.quiet,
                               space_scale=_number_or_text(args.space_scale),
                               value_transform=args.transform, **roles)
    print(tuned.describe())
    _print_paths({"best": Path(args.out) / "best.safetensors",
                  "last": Path(args.out) / "last.safetensors",
                  "log": Path(args.out) / "log.jsonl"})


def _info(args: argparse.Namespace) -> None:
    from bsatnp.predictor import Predictor

    path = checkpoint_path(args.checkpoint)
    ckpt = load_checkpoint(path)
    print(terminal_safe(f"{args.checkpoint}: bsatnp {ckpt.version} checkpoint, step {ckpt.step}"
          + ("" if ckpt.best_metric is None else f", best validation NLL {ckpt.best_metric:.4f}")))
    print(terminal_safe(Predictor.load(path).describe()))
    stored = (ckpt.extra or {}).get("experiment")
    if isinstance(stored, dict) and isinstance(stored.get("task"), dict):
        print(terminal_safe(f"task: {stored['task']}"))


def _models(args: argparse.Namespace) -> None:
    from bsatnp.pretrained import model_card, pretrained_names

    names = pretrained_names()
    if not names:
        print("no pretrained models ship with this version")
    for name in names:
        card = model_card(name)
        facts = [f"task {card['task']}"] if "task" in card else []
        steps = (card.get("training") or {}).get("steps_run")
        if steps is not None:
            facts.append(f"{steps:,} steps")
        in_domain = (card.get("metrics") or {}).get("in_domain") or {}
        gap = (in_domain.get("gap") or {}).get("nll")
        nll = (in_domain.get("model") or {}).get("nll")
        if isinstance(gap, dict) and "mean" in gap:
            facts.append(f"in-domain NLL gap to the oracle {gap['mean']:.3f} ± {gap['se']:.3f}")
        elif isinstance(nll, dict) and "mean" in nll:  # tasks without an exact oracle
            facts.append(f"in-domain NLL {nll['mean']:.3f} ± {nll['se']:.3f}")
        print(f"{name:<12} {'; '.join(facts)}" + (f" — {card['summary']}" if card.get("summary")
                                                  else ""))


def _predictor(args: argparse.Namespace) -> Any:
    from bsatnp.predictor import Predictor

    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("give exactly one of --checkpoint FILE or --model NAME "
                         "(see `bsatnp models`)")
    if args.model is not None:
        return Predictor.from_pretrained(args.model, device=_device(args))
    return Predictor.load(checkpoint_path(args.checkpoint), device=_device(args))


def _roles(args: argparse.Namespace) -> dict[str, Any]:
    roles = {"values": args.values, "space": args.space, "crs": args.crs, "time": args.time,
             "covariates": args.covariates, "units": args.units}
    return {key: value for key, value in roles.items() if value is not None}


def _number_or_text(text: str) -> float | str:
    """A number if the text reads as one (``"3"``), else the text (``"6h"``)."""
    try:
        return float(text)
    except ValueError:
        return text


def _neighbours(text: str) -> int | str | None:
    """``--neighbours``: ``auto``, ``all`` (``None``) or a count >= 1."""
    if text in ("auto", "all"):
        return None if text == "all" else text
    return _positive(int)(text)


def _grid_axes(text: str) -> dict[str, tuple[float, float, int]]:
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


def _plot(args: argparse.Namespace) -> None:
    from bsatnp.plot import plot_field, plot_learning_curve

    if args.log is not None:
        out = args.out or Path(args.log[0]).with_suffix(".png")
        path = plot_learning_curve(args.log, out, labels=args.label)
    else:
        model, config = _load(args)
        out = args.out or Path(args.checkpoint).with_name(f"field_{args.domain}.png")
        path = plot_field(model, out, seed=args.seed, task=config.task.domain(args.domain),
                          n_ctx=args.n_ctx)
    print(f"Wrote {path}")


def _tasks(args: argparse.Namespace) -> None:
    for name in task_names():
        cls = task_class(name)
        doc = sys.modules[cls.__module__].__doc__ or cls.__doc__ or ""
        summary = doc.strip().splitlines()[0] if doc.strip() else ""
        print(f"{name:<14} {cls.likelihood:<12} domains: {', '.join(cls.domains):<44} {summary}")


def _load(args: argparse.Namespace) -> tuple[nn.Module, ExperimentConfig]:
    """Model (eval mode, on the requested device) and experiment stored in a checkpoint."""
    ckpt = load_checkpoint(checkpoint_path(args.checkpoint))
    model = ckpt.build_model().to(_device(args)).eval()
    return model, experiment_from_checkpoint(ckpt)


def _report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write eval.json/eval.md into ``out``, print the table; returns the paths."""
    json_path, md_path = write_results(results, out)
    print()
    print(markdown_table(results))
    return {"metrics (JSON)": json_path, "metrics table": md_path}


def _print_paths(paths: dict[str, Path]) -> None:
    width = max(len(name) for name in paths)
    for name, path in paths.items():
        print(f"  {name:<{width}}  {path}")


def _device(args: argparse.Namespace) -> torch.device:
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


def _positive(kind: type, zero: bool = False) -> Any:
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


def _finite(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _bounded(low: int, high: int) -> Any:
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


def _parser() -> argparse.ArgumentParser:
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
    cmd.add_argument("--minutes", type=_positive(float, zero=True), default=DEMO_MINUTES,
                     help="training budget in minutes (%(default)s)")
    cmd.add_argument("--config", default=DEMO_CONFIG,
                     help="experiment to demo: a YAML file or bundled config (%(default)s; "
                          f"bundled: {', '.join(bundled_configs())})")
    cmd.set_defaults(command=_demo)

    cmd = sub.add_parser("train", parents=[common], help="train from a YAML experiment config",
                         description="Train a model on a registered task "
                         f"({', '.join(task_names())}) as a YAML experiment describes.")
    cmd.add_argument("--config", required=True,
                     help=f"YAML file, or a bundled config: {', '.join(bundled_configs())}")
    cmd.add_argument("--out", help="output directory (default: train.out_dir of the config, "
                     "or the resumed run's directory)")
    cmd.add_argument("--steps", type=_positive(int),
                     help="stop at this total step count (the LR schedule keeps train.steps)")
    cmd.add_argument("--minutes", type=_positive(float), help="stop after this wall-clock budget")
    start = cmd.add_mutually_exclusive_group()
    start.add_argument("--resume", help="checkpoint of a previous run to continue exactly")
    start.add_argument("--init", metavar="CHECKPOINT | MODEL",
                       help="start a fresh run (new optimiser and schedule) from the weights of "
                            "a checkpoint or a shipped model (bsatnp models): a warm restart "
                            "with a longer schedule, or another task config of the same model "
                            "(on your own data: bsatnp finetune)")
    cmd.add_argument("--overwrite", action="store_true",
                     help="start afresh in an --out directory that already holds a run")
    cmd.set_defaults(command=_train)

    cmd = sub.add_parser("evaluate", parents=[common],
                         help="score a checkpoint and its task's oracle on fixed batches")
    cmd.add_argument("--checkpoint", required=True)
    cmd.add_argument("--n-batches", type=_batch_counts, metavar="N | DOMAIN=N,...",
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
    cmd.set_defaults(command=_evaluate)

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
    cmd.add_argument("--exceedance", nargs="+", type=_finite, metavar="THRESHOLD",
                     help="probability that the value exceeds each threshold (in the values' "
                          "units), e.g. 75 100: columns exceedance_75.0, ...")
    cmd.add_argument("--samples", type=_bounded(0, MAX_SAMPLES), default=0, metavar="N",
                     help=f"marginal samples per target (0-{MAX_SAMPLES})")
    cmd.add_argument("--seed", type=_positive(int, zero=True), help="seed of the samples (>= 0)")
    cmd.add_argument("--chunk-size", type=_positive(int), help="targets per forward pass")
    cmd.add_argument("--neighbours", type=_neighbours, default="auto", metavar="K | auto | all",
                     help="predict each tile of targets from its K nearest observations "
                          "(auto: the model's training context size when there are more "
                          "observations; all: condition on every observation)")
    cmd.add_argument("--time-window", type=_number_or_text, metavar="SPAN",
                     help="space-time models: neighbours in space among the observations "
                          "within SPAN of each target's time (a number in the time column's "
                          "units, or a duration such as 6h for datetimes)")
    cmd.add_argument("--max-memory", help="bound on the whole process, e.g. 2GB: chunks get "
                     "what the libraries, model and observations leave; a --grid written to "
                     ".nc is predicted and written block by block (with bsatnp[dask]), other "
                     "outputs must fit whole or are refused")
    cmd.add_argument("--input", help="one split .csv or .npz in model units (format above)")
    cmd.add_argument("--output", required=True, help=".csv, .parquet or .nc (.npz: --input)")
    cmd.set_defaults(command=_predict)

    cmd = sub.add_parser(
        "finetune", parents=[common, source, schema],
        help="train a checkpoint or pretrained model further on your own table",
        description="Fine-tune on a table of observations in their own units; the run keeps "
        "its best validation state, with the schema and normaliser, in OUT/best.safetensors.")
    cmd.add_argument("--data", required=True, help=".csv, .parquet or .nc observations")
    cmd.add_argument("--out", default="runs/finetune", help="run directory (%(default)s)")
    cmd.add_argument("--steps", type=_positive(int), default=1000,
                     help="optimiser steps (%(default)s)")
    cmd.add_argument("--split", default="random", choices=SPLIT_KINDS,
                     help="how training tasks split rows into context and test (%(default)s; "
                          "gap: holes predicted from the rows around them, as local "
                          "conditioning predicts)")
    cmd.add_argument("--n-ctx", type=_positive(int), default=256,
                     help="context points per training task (%(default)s)")
    cmd.add_argument("--group", metavar="COLUMN",
                     help="a column naming each row's field (e.g. a date): every training "
                          "task is drawn from one field")
    cmd.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (%(default)s)")
    cmd.add_argument("--batch-size", type=_positive(int), default=8,
                     help="tasks per step (%(default)s)")
    start = cmd.add_mutually_exclusive_group()
    start.add_argument("--overwrite", action="store_true",
                       help="replace a run already in --out")
    start.add_argument("--resume", action="store_true",
                       help="continue the run in --out (same data and options) exactly "
                            "where it stopped")
    cmd.set_defaults(command=_finetune)

    cmd = sub.add_parser("info", help="describe a checkpoint: model, card, schema, normaliser")
    cmd.add_argument("checkpoint")
    cmd.set_defaults(command=_info)

    cmd = sub.add_parser("models", help="list the pretrained models shipped in the package")
    cmd.set_defaults(command=_models)

    cmd = sub.add_parser("plot", parents=[common],
                         help="plot a predicted field (--checkpoint) or a learning curve (--log)")
    source = cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint",
                        help="plot one field of its GP task predicted by this model")
    source.add_argument("--log", nargs="+",
                        help="plot the learning curve of this log.jsonl (several: one figure)")
    cmd.add_argument("--label", nargs="+", help="one name per --log (default: its directory)")
    cmd.add_argument("--out", help="PNG file (default: beside the input)")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the plotted task")
    cmd.add_argument("--domain", default="in_domain", help="a domain of the run's task")
    cmd.add_argument("--n-ctx", type=_positive(int), default=200,
                     help="context points (%(default)s)")
    cmd.set_defaults(command=_plot)

    cmd = sub.add_parser("tasks", help="list the registered tasks and their evaluation domains")
    cmd.set_defaults(command=_tasks)
    return parser
