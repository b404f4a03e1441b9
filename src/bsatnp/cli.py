"""Command-line interface: ``bsatnp {demo,train,evaluate,predict,finetune,info,models,plot,tasks}``.

Bad configs, checkpoints and input files end the program with a one-line message on
stderr and exit code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bsatnp.baselines import calibrated_local_averages
from bsatnp.cli_args import build_parser, grid_axes, number_or_text
from bsatnp.evaluate import evaluate
from bsatnp.experiment import (
    ExperimentConfig,
    build_trainer,
    experiment_from_checkpoint,
    load_experiment,
)
from bsatnp.io.checkpoint import load_checkpoint, load_model
from bsatnp.io.files import existing_file, refuse_overwriting_inputs
from bsatnp.predict import predict_file
from bsatnp.pretrained import checkpoint_path
from bsatnp.reports import markdown_table, write_results
from bsatnp.tasks import eval_batches, task_class, task_names
from bsatnp.text import terminal_safe

DEMO_RUN_FILES = ("log.jsonl", "last.safetensors", "best.safetensors")

def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 success, 2 bad input).

    A user error (bad arguments, files, configs, checkpoints or data; a missing extra) is
    one line on stderr naming the file, line or argument; ``--debug`` shows the traceback.
    """
    args = build_parser().parse_args(argv)
    shown = warnings.formatwarning
    if not getattr(args, "debug", False):  # a warning is one line too, without source code
        warnings.formatwarning = lambda message, *_, **__: (
            f"bsatnp {args.name}: warning: {' '.join(str(message).split())}\n")
    try:
        COMMANDS[args.name](args)
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
            ("--holdout", args.holdout, None),
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
    if args.holdout is not None and args.neighbours != "choose":
        raise ValueError("--holdout shapes the rows held out by --neighbours choose; without "
                         "it it would be ignored")
    roles = _roles(args)
    time = roles.get("time") or (predictor.schema.time if predictor.schema else None)
    observations = read_table(args.observations, time=time)
    targets = (read_table(args.targets, time=time) if args.targets is not None
               else grid(**grid_axes(args.grid)))
    conditioning = {"space_scale": number_or_text(args.space_scale),
                    "value_transform": args.transform, "time_window": args.time_window,
                    **roles}
    neighbours = args.neighbours
    if neighbours == "choose":
        neighbours = _chosen_neighbours(predictor, observations, args.holdout or "random",
                                        conditioning)
    conditioned = predictor.condition(observations, neighbours=neighbours, **conditioning)
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


def _chosen_neighbours(predictor: Any, observations: Any, geometry: str,
                       options: dict[str, Any]) -> int:
    """``--neighbours choose``: :func:`bsatnp.choose_neighbours`, reported in one line."""
    from bsatnp.holdout import choose_neighbours

    choice = choose_neighbours(predictor, observations, geometry=geometry, **options)
    scores = ", ".join(f"{k}: {v:.4g}" for k, v in sorted(choice.crps.items()))
    print(f"Chose {choice.neighbours} neighbours from {choice.held_out:,} observations held "
          f"out ({geometry}); mean CRPS by K: {scores}")
    return choice.neighbours


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
                               space_scale=number_or_text(args.space_scale),
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
    stored = ckpt.provenance.experiment
    if stored is not None and isinstance(stored.get("task"), dict):
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




COMMANDS = {"demo": _demo, "train": _train, "evaluate": _evaluate, "predict": _predict,
            "finetune": _finetune, "info": _info, "models": _models, "plot": _plot,
            "tasks": _tasks}
"""Each subcommand's function (:func:`bsatnp.cli_args.build_parser` names them)."""
