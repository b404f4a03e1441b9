"""Joint samples of the user's data: spatially coherent fields in the data's units.

:meth:`Predictor.joint_samples <bsatnp.predictor.Predictor.joint_samples>` reads the
observations and targets as :meth:`~bsatnp.predictor.Predictor.predict` does and draws with
:func:`bsatnp.joint.autoregressive_samples` (Bruinsma et al. 2023), then maps the draws back
through the normaliser.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from bsatnp.batch import Batch
from bsatnp.data.tables import read_points
from bsatnp.joint import Order, autoregressive_samples, check_count
from bsatnp.models.base import model_device

if TYPE_CHECKING:
    from bsatnp.predictor import Predictor


def joint_samples(predictor: Predictor, observations: Any, targets: Any, n_samples: int, *,
                  chunk: int = 1, order: Order | Sequence[int] = "random", seed: int = 0,
                  samples_per_pass: int | None = 256, target_crs: str | None = None,
                  **roles: Any) -> np.ndarray:
    """Joint samples of the values at ``targets`` given ``observations``, in the data's units.

    The targets are visited in ``order`` in chunks of ``chunk``; each chunk is drawn from
    the model's predictive given all observations and the values drawn at the earlier
    targets (:func:`autoregressive_samples`), then mapped back through the normaliser and
    any value transform exactly as :meth:`Conditioned.predict
    <bsatnp.conditioned.Conditioned.predict>` maps its marginal samples (a likelihood of
    counts, presence or proportions draws in the data's units; with an exposure or
    trials column, per unit of it, as ``predict`` gives them). With
    ``chunk >= len(targets)`` the samples are those marginals (independent across
    targets); smaller chunks give coherent fields at one forward pass per chunk.

    Conditioning is **global**: every chunk sees every observation and every earlier
    target; there are no local neighbourhoods (``neighbours=``), so use it where the
    observations and targets together are of the size the model was trained on (a warning
    says when they are not).

    Args:
        predictor: A :class:`~bsatnp.predictor.Predictor` of any likelihood but
            ``categorical``.
        observations: DataFrame, xarray object or mapping of arrays, in the data's units.
        targets: The points to sample (read like :meth:`Conditioned.predict`'s targets).
        n_samples: Number of joint samples (>= 1).
        chunk: Targets per step (>= 1).
        order: ``"random"`` (a permutation drawn from ``seed``), ``"given"`` (the targets'
            order) or a permutation of ``range(n_targets)``.
        seed: Seed of the order and the samples.
        samples_per_pass: Samples per forward pass (memory bound; ``None``: all).
        target_crs: CRS of the targets if not the schema's.
        **roles: Keywords of :meth:`Predictor.observations
            <bsatnp.predictor.Predictor.observations>`: the schema fields (``values``,
            ``space``, ``crs``, ``time``, ``covariates``) when the predictor has none, and
            the normaliser options (``value_transform``, ``space_scale``, ...).

    Returns:
        ``[n_samples, n_targets]`` (``[n_samples, n_targets, n_values]`` for several value
        columns), float64, in the targets' row order.

    Raises:
        ValueError: On a categorical model, bad data or options.
    """
    model = predictor.model
    if model.likelihood == "categorical":
        raise ValueError("joint_samples gives values; a classifier's joint draws of classes "
                         "are bsatnp.joint.autoregressive_samples (one-hot)")
    check_count("n_samples", n_samples)
    check_count("chunk", chunk)
    schema, points, normalizer = predictor.observations(observations, **roles)
    target_points, _ = read_points(targets, schema, "targets", with_values=False,
                                   crs=target_crs)
    if schema.time and target_points.time_zone != points.time_zone:
        raise ValueError("the observations' and targets' times must both carry a timezone "
                         "or both not")
    context, test = normalizer.inputs(points, schema), normalizer.inputs(target_points, schema)
    for message in predictor.envelope_warnings(points.n, context):
        warnings.warn(message, stacklevel=2)
    if predictor.neighbours_for(points.n + target_points.n, "auto") is not None:
        warnings.warn(f"{points.n:,} observations + {target_points.n:,} targets are more "
                      "context than the model's training tasks held; joint_samples conditions "
                      "globally on all of them: expect degraded samples, use fewer targets "
                      "or observations at a time", stacklevel=2)
    device = model_device(model)
    tensors = {f"{role}_ctx": _as_tensor(context[role], f"observations' {role}", device)
               for role in (*model.roles, "f", "offset") if role in context}
    tensors.update({f"{role}_test": _as_tensor(test[role], f"targets' {role}", device)
                    for role in (*model.roles, "offset") if role in test})
    if not isinstance(order, str):
        order = torch.as_tensor(np.asarray(order), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    draws = autoregressive_samples(model, Batch(**tensors), n_samples, chunk=chunk,
                                   order=order, generator=generator,
                                   samples_per_pass=samples_per_pass)  # [S, 1, N, Dv]
    draws = draws[:, 0].double().cpu().numpy()
    if model.likelihood != "gaussian":  # drawn in the data's units, per unit of any offset
        values = draws if target_points.offset is None else draws / target_points.offset
        return values[..., 0] if values.shape[-1] == 1 else values
    with np.errstate(over="ignore", invalid="ignore"):
        loc, _ = normalizer.gaussian(draws, np.zeros_like(draws))
        values = normalizer.inverse(loc)
    if not np.isfinite(values).all():
        raise ValueError("joint samples are not finite in the data's units (the value "
                         "transform overflowed): check the values' units or transform")
    return values[..., 0] if values.shape[-1] == 1 else values


def _as_tensor(array: np.ndarray, what: str, device: torch.device) -> Tensor:
    """``[N, D]`` float64 → ``[1, N, D]`` float32; refuses what overflows float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        cast = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(cast).all():
        raise ValueError(f"{what} overflow float32 after normalisation; check their units")
    return torch.as_tensor(cast, device=device)[None]


def aggregate(samples: np.ndarray, groups: Sequence[Any] | np.ndarray | None = None, *,
              statistic: str = "sum", weights: Sequence[float] | np.ndarray | None = None,
              interval: float = 0.9) -> Any:
    """Areal aggregates of joint samples: the sum or mean over each group of targets.

    Each joint sample (a row of ``samples``, from :func:`joint_samples`) gives one value of
    the aggregate per group: the sum of its targets' values, or their mean weighted by
    ``weights`` (e.g. the targets' exposures, so that a mean of rates is the group's total
    count over its total exposure). The rows then give the aggregate's predictive: its mean,
    standard deviation and central ``interval``. Marginal (independent) samples would give
    an interval that is too narrow wherever the targets are correlated.

    Args:
        samples: ``[n_samples, n_targets]`` joint samples.
        groups: The group (area, polygon id) of each target ``[n_targets]``; ``None``: one
            group of all targets.
        statistic: ``"sum"`` or ``"mean"``.
        weights: Target weights of the mean ``[n_targets]`` (non-negative); ``None``:
            equal.
        interval: Central mass of the interval, in (0, 1).

    Returns:
        A DataFrame indexed by group with ``mean``, ``std``, ``lower``, ``upper`` and
        ``n_targets``.

    Raises:
        ValueError: On shapes that disagree, an unknown statistic, bad weights or interval.
    """
    import pandas as pd

    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[0] < 2:
        raise ValueError(f"samples must be [n_samples >= 2, n_targets], got shape "
                         f"{samples.shape}")
    n = samples.shape[1]
    labels = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
    if labels.shape != (n,):
        raise ValueError(f"groups must give one group per target ({n}), got shape "
                         f"{labels.shape}")
    if statistic not in ("sum", "mean"):
        raise ValueError(f"statistic must be 'sum' or 'mean', got {statistic!r}")
    if weights is not None and statistic != "mean":
        raise ValueError("weights weigh a mean: use statistic='mean'")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not (np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError(f"weights must be {n} finite numbers >= 0")
    if not 0.0 < interval < 1.0:
        raise ValueError(f"interval must be in (0, 1), got {interval}")
    names, codes = np.unique(labels, return_inverse=True)
    rows = []
    for code, name in enumerate(names):
        members = codes == code
        if statistic == "sum":
            values = samples[:, members].sum(1)
        else:
            total = w[members].sum()
            if total <= 0:
                raise ValueError(f"group {name!r}: its weights sum to 0")
            values = samples[:, members] @ w[members] / total
        low, high = np.quantile(values, [(1 - interval) / 2, (1 + interval) / 2])
        rows.append({"group": name, "mean": values.mean(), "std": values.std(ddof=1),
                     "lower": low, "upper": high, "n_targets": int(members.sum())})
    return pd.DataFrame(rows).set_index("group")
