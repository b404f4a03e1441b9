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
from bsatnp.joint import Order, autoregressive_samples, check_count, check_gaussian
from bsatnp.models.base import model_device

if TYPE_CHECKING:
    from bsatnp.predictor import Predictor


def joint_samples(predictor: Predictor, observations: Any, targets: Any, n_samples: int, *,
                  chunk: int = 1, order: Order | Sequence[int] = "random", seed: int = 0,
                  samples_per_pass: int | None = 256, target_crs: str | None = None,
                  **roles: Any) -> np.ndarray:
    """Joint samples of the values at ``targets`` given ``observations``, in the data's units.

    The targets are visited in ``order`` in chunks of ``chunk``; each chunk is drawn from
    the model's Gaussian predictive given all observations and the values drawn at the
    earlier targets (:func:`autoregressive_samples`), then mapped back through the
    normaliser and any value transform exactly as :meth:`Conditioned.predict
    <bsatnp.conditioned.Conditioned.predict>` maps its marginal samples. With
    ``chunk >= len(targets)`` the samples are those marginals (independent across
    targets); smaller chunks give coherent fields at one forward pass per chunk.

    Conditioning is **global**: every chunk sees every observation and every earlier
    target; there are no local neighbourhoods (``neighbours=``), so use it where the
    observations and targets together are of the size the model was trained on (a warning
    says when they are not).

    Args:
        predictor: A Gaussian :class:`~bsatnp.predictor.Predictor`.
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
    check_gaussian(model)
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
               for role in (*model.roles, "f")}
    tensors.update({f"{role}_test": _as_tensor(test[role], f"targets' {role}", device)
                    for role in model.roles})
    if not isinstance(order, str):
        order = torch.as_tensor(np.asarray(order), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    draws = autoregressive_samples(model, Batch(**tensors), n_samples, chunk=chunk,
                                   order=order, generator=generator,
                                   samples_per_pass=samples_per_pass)  # [S, 1, N, Dv]
    draws = draws[:, 0].double().cpu().numpy()
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
