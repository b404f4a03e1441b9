"""Command-line interface: ``bsatnp {demo,train,evaluate,predict,finetune,info,models,plot,tasks}``.

Bad configs, checkpoints and input files end the program with a one-line message on
stderr and exit code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bsatnp import cli_data
from bsatnp.baselines import calibrated_local_averages
from bsatnp.cli_args import build_parser, device_of, print_paths
from bsatnp.evaluate import evaluate
from bsatnp.experiment import ExperimentConfig, experiment_from_checkpoint, load_experiment
from bsatnp.experiment_trainer import build_trainer
from bsatnp.io.checkpoint import load_checkpoint
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
    trainer = build_trainer(config, out_dir=run_dir, device=device_of(args), overwrite=True)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(f"Training a {type(trainer.model).__name__} ({n_params:,} parameters) on the "
          f"{config.task.name} task ({args.config} config) for {args.minutes:g} min on "
          f"{device_of(args)} "
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
    print_paths(paths)


def _train(args: argparse.Namespace) -> None:
    from bsatnp.train.distributed import local_device, replicas_from_environment

    config = load_experiment(args.config)
    device = local_device(device_of(args))
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
    print_paths({name: trainer.out_dir / f"{name}.safetensors" for name in ("last", "best")}
                 | {"log": trainer.out_dir / "log.jsonl"})


def _evaluate(args: argparse.Namespace) -> None:
    model, config = _load(args)
    scored: nn.Module | dict[str, nn.Module] = model
    if args.baselines:
        validation = eval_batches(config.task, config.train.val_batches, config.eval.val_seed,
                                  split="valid")
        scored = {"model": model, **calibrated_local_averages(
            args.baselines, validation, config.task.likelihood)}
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
    print_paths(_report(results, Path(args.out or Path(args.checkpoint).parent)))


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


def _plot(args: argparse.Namespace) -> None:
    from bsatnp.plot import plot_comparison, plot_field, plot_learning_curve

    if args.log is not None:
        out = args.out or Path(args.log[0]).with_suffix(".png")
        path = plot_learning_curve(args.log, out, labels=args.label)
    elif len(args.checkpoint) == 1:
        model, config = _load_checkpoint(args.checkpoint[0], args)
        out = args.out or Path(args.checkpoint[0]).with_name(f"field_{args.domain}.png")
        path = plot_field(model, out, seed=args.seed, task=config.task.domain(args.domain),
                          n_ctx=args.n_ctx)
    else:
        labels = args.label or [_run_name(c) for c in args.checkpoint]
        if len(labels) != len(args.checkpoint):
            raise ValueError(f"{len(labels)} labels for {len(args.checkpoint)} checkpoints")
        loaded = [_load_checkpoint(c, args) for c in args.checkpoint]
        out = args.out or Path(args.checkpoint[0]).with_name(f"compare_{args.domain}.png")
        path = plot_comparison({label: model for label, (model, _) in zip(labels, loaded)},
                               out, seed=args.seed,
                               task=loaded[0][1].task.domain(args.domain), n_ctx=args.n_ctx)
    print(f"Wrote {path}")


def _run_name(checkpoint: str) -> str:
    """A checkpoint's name in a figure: its run directory, or a shipped model's name."""
    path = Path(checkpoint)
    return path.parent.name if path.suffix == ".safetensors" and path.parent.name else path.stem


def _tasks(args: argparse.Namespace) -> None:
    for name in task_names():
        cls = task_class(name)
        doc = sys.modules[cls.__module__].__doc__ or cls.__doc__ or ""
        summary = doc.strip().splitlines()[0] if doc.strip() else ""
        print(f"{name:<14} {cls.likelihood:<12} domains: {', '.join(cls.domains):<44} {summary}")


def _load(args: argparse.Namespace) -> tuple[nn.Module, ExperimentConfig]:
    """Model (eval mode, on the requested device) and experiment of ``--checkpoint``."""
    return _load_checkpoint(args.checkpoint, args)


def _load_checkpoint(checkpoint: str,
                     args: argparse.Namespace) -> tuple[nn.Module, ExperimentConfig]:
    """Model (eval mode, on ``--device``) and experiment stored in a checkpoint."""
    ckpt = load_checkpoint(checkpoint_path(checkpoint))
    model = ckpt.build_model().to(device_of(args)).eval()
    return model, experiment_from_checkpoint(ckpt)


def _report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write eval.json/eval.md into ``out``, print the table; returns the paths."""
    json_path, md_path = write_results(results, out)
    print()
    print(markdown_table(results))
    return {"metrics (JSON)": json_path, "metrics table": md_path}





COMMANDS = {"demo": _demo, "train": _train, "evaluate": _evaluate, "predict": cli_data.predict,
            "finetune": cli_data.finetune, "info": _info, "models": _models, "plot": _plot,
            "tasks": _tasks}
"""Each subcommand's function (:func:`bsatnp.cli_args.build_parser` names them)."""
