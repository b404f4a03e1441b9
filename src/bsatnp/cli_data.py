"""The own-data commands, ``bsatnp predict`` and ``bsatnp finetune``: files in, files out.

Each reads the user's table (CSV, Parquet, netCDF), loads a shipped or saved
:class:`~bsatnp.predictor.Predictor`, and writes what was asked in the data's units; every
option that would be ignored, and every output that would overwrite an input, is refused
before anything is read or written.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from bsatnp.cli_args import device_of, grid_axes, number_or_text, print_paths
from bsatnp.io.checkpoint import load_model
from bsatnp.io.files import existing_file, refuse_overwriting_inputs
from bsatnp.predict import predict_file
from bsatnp.pretrained import checkpoint_path


def predict(args: argparse.Namespace) -> None:
    """``bsatnp predict``: observations and targets (a file or ``--grid``) in, predictions.

    They are written in the data's units (or, with ``--input``, one split file in model
    units).
    """
    if args.input is not None:  # one split CSV/NPZ in model units (the original form)
        if args.checkpoint is None:
            raise ValueError("--input needs --checkpoint")
        ignored = [option for option, value, default in (
            ("--values", args.values, None), ("--space", args.space, None),
            ("--crs", args.crs, None),
            ("--time", args.time, None), ("--covariates", args.covariates, None),
            ("--units", args.units, None), ("--space-scale", args.space_scale, "auto"),
            ("--exposure", args.exposure, None), ("--trials", args.trials, None),
            ("--transform", args.transform, "none"), ("--target-crs", args.target_crs, None),
            ("--quantiles", args.quantiles, None), ("--interval", args.interval, None),
            ("--exceedance", args.exceedance, None), ("--samples", args.samples, 0),
            ("--seed", args.seed, None), ("--joint", args.joint, None),
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
        path = predict_file(load_model(checkpoint_path(args.checkpoint), device_of(args)),
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
    if args.joint is not None and (not args.samples or Path(args.output).suffix.lower()
                                   == ".nc"):
        raise ValueError("--joint makes the --samples joint: give --samples N and a table "
                         "output (.csv or .parquet)")
    if args.joint is not None and args.time_window is not None:
        raise ValueError("--joint conditions every chunk on all observations; --time-window "
                         "would be ignored")
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
        joint = args.joint is not None
        out = conditioned.predict(targets, **options, n_samples=0 if joint else args.samples,
                                  seed=None if joint else args.seed, progress=not args.quiet,
                                  as_table=Path(args.output).suffix.lower() != ".nc")
        if joint:
            draws = predictor.joint_samples(observations, targets, args.samples,
                                            chunk=args.joint, seed=args.seed or 0,
                                            target_crs=args.target_crs,
                                            **{k: v for k, v in conditioning.items()
                                               if k != "time_window"})
            out = add_joint_samples(out, draws, conditioned.schema.values)
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


def finetune(args: argparse.Namespace) -> None:
    """``bsatnp finetune``: a model fine-tuned on the user's table, saved as a predictor."""
    from bsatnp.data.files import read_table
    from bsatnp.data.geo import check_crs
    from bsatnp.options import refuse_numeric_options

    existing_file(args.data, "--data")
    check_crs(args.crs, "--crs")
    predictor = _predictor(args)
    if args.likelihood is not None and args.likelihood != predictor.model.likelihood:
        predictor = predictor.with_likelihood(args.likelihood)  # --resume: as the run began
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
    print_paths({"best": Path(args.out) / "best.safetensors",
                  "last": Path(args.out) / "last.safetensors",
                  "log": Path(args.out) / "log.jsonl"})


def _predictor(args: argparse.Namespace) -> Any:
    from bsatnp.predictor import Predictor

    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("give exactly one of --checkpoint FILE or --model NAME "
                         "(see `bsatnp models`)")
    if args.model is not None:
        return Predictor.from_pretrained(args.model, device=device_of(args))
    return Predictor.load(checkpoint_path(args.checkpoint), device=device_of(args))


def _roles(args: argparse.Namespace) -> dict[str, Any]:
    roles = {"values": args.values, "space": args.space, "crs": args.crs, "time": args.time,
             "covariates": args.covariates, "units": args.units, "exposure": args.exposure,
             "trials": args.trials}
    return {key: value for key, value in roles.items() if value is not None}


def add_joint_samples(table: Any, draws: Any, values: tuple[str, ...]) -> Any:
    """The prediction table with the joint draws ``[S, N(, V)]`` as ``sample_<i>`` columns.

    ``<value>_sample_<i>`` for several values; ``table.attrs`` marks them as joint.
    """
    import numpy as np

    draws = np.asarray(draws, np.float32)
    columns = {}
    for j, value in enumerate(values):
        prefix = f"{value}_" if len(values) > 1 else ""
        block = draws if draws.ndim == 2 else draws[..., j]
        columns.update({f"{prefix}sample_{i}": block[i] for i in range(len(block))})
    joined = table.assign(**columns)
    joined.attrs["samples_are"] = "joint (autoregressive, coherent across targets)"
    return joined
