"""Predictions in the data's units: the container a user gets back.

A Gaussian predictive in model units becomes mean and std through the normaliser and its
value transform, plus what was asked for (:class:`~bsatnp.options.OutputRequest`):
quantiles, an interval, exceedance probabilities, marginal samples; class probabilities
become a probability per class and the most likely class; any other likelihood (counts,
presence, proportions), whose values are modelled in the data's units, gives the same
outputs from its family (:func:`distribution_outputs`). The stores (:class:`MomentStore`,
:class:`ProbabilityStore`, :class:`DistributionStore`) collect a predictive chunk by
chunk. An output that is not finite is refused with its cause: the value transform, the
data, a diverged model or a normaliser that does not fit (:class:`OverflowBlame`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bsatnp.data.normalizer import Normalizer
from bsatnp.data.schema import Schema
from bsatnp.likelihoods import LikelihoodFamily
from bsatnp.models.base import MODERATE_INPUT
from bsatnp.options import OutputRequest, interval_levels
from bsatnp.tasks.frames import LocalFrame


@dataclass(frozen=True)
class OverflowBlame:
    """What decides whom a non-finite output blames.

    Attributes:
        stored_normalizer: The normaliser is the checkpoint's (not fitted on these data).
        largest_value: The largest finite ``|value|`` observed, in the data's units.
    """

    stored_normalizer: bool
    largest_value: float


def gaussian_outputs(template: Any, mean: np.ndarray, std: np.ndarray, norm: Normalizer,
                     schema: Schema, request: OutputRequest, blame: OverflowBlame) -> Any:
    """The container of a Gaussian predictive ``[N, Df]`` (model units) in the data's units.

    Per value column: ``mean``, ``std`` and what ``request`` asks for, with units and names
    as attributes (``<value>_`` prefixes for several values), built by ``template``.

    Raises:
        ValueError: If an output is not finite in float32, naming the output and the cause.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # refused below, with the cause
        outputs, extra, attrs = _gaussian_arrays(mean, std, norm, schema, request)
    for name, array in outputs.items():
        if not np.isfinite(array).all():
            _check_finite_output(name, array, _overflow_cause(norm, blame, mean, std))
        if name.endswith("samples"):
            attrs[name]["samples_are"] = "marginal (independent across targets)"
    return template.build(outputs, extra, attrs)


def categorical_outputs(template: Any, probs: np.ndarray, classes: Sequence[Any]) -> Any:
    """The container of class probabilities ``[N, C]``: ``probability`` and ``predicted_class``."""
    predicted = np.asarray(classes, dtype=object)[probs.argmax(-1)]
    outputs = {"probability": probs.T, "predicted_class": predicted}
    return template.build(outputs, {"probability": ("class", list(classes), "probability_")})


class MomentStore:
    """Mean and std ``[N, Df]`` of a Gaussian predictive, chunk by chunk.

    In model units; a neighbourhood's :class:`LocalFrame` is mapped back.
    """

    def __init__(self, n: int, dim_f: int) -> None:
        self.mean = np.empty((n, dim_f), np.float32)
        self.std = np.empty((n, dim_f), np.float32)

    def __call__(self, dist: Any, where: slice | np.ndarray, frame: LocalFrame | None) -> None:
        """Store the predictive of the targets ``where``."""
        mean, std = dist.mean[0].cpu().numpy(), dist.stddev[0].cpu().numpy()
        if frame is not None:
            mean, std = mean * frame.scale + frame.shift, std * frame.scale
        self.mean[where], self.std[where] = mean, std


class ProbabilityStore:
    """Class probabilities ``[N, C]``, chunk by chunk."""

    def __init__(self, n: int, classes: int) -> None:
        self.probs = np.empty((n, classes), np.float32)

    def __call__(self, dist: Any, where: slice | np.ndarray, frame: LocalFrame | None) -> None:
        """Store the predictive of the targets ``where``."""
        self.probs[where] = dist.probs[0].cpu().numpy()


class DistributionStore:
    """What ``request`` asks of a likelihood family's predictive, chunk by chunk.

    Mean, std, quantiles (interval ends included), exceedance probabilities and samples,
    each ``[..., N, Df]`` in the data's units (the family models them so). With the targets'
    exposures or trials ``per_unit [N, 1]`` (the data's units) every output is **per unit**
    of it (a rate, a share of trials): the values divided by it, and the thresholds of
    ``P(value / per_unit > threshold)``; ``expected`` keeps the mean count.
    """

    def __init__(self, n: int, dim_f: int, family: LikelihoodFamily,
                 request: OutputRequest, per_unit: np.ndarray | None = None) -> None:
        self.family, self.request, self.per_unit = family, request, per_unit
        self.levels = list(request.levels) + (list(interval_levels(request.interval))
                                              if request.interval is not None else [])
        self.rng = np.random.default_rng(request.seed)
        self.arrays = {"mean": np.empty((n, dim_f)), "std": np.empty((n, dim_f)),
                       "quantiles": np.empty((len(self.levels), n, dim_f)),
                       "exceedance": np.empty((len(request.thresholds), n, dim_f)),
                       "samples": np.empty((request.n_samples, n, dim_f))}
        if per_unit is not None:
            self.arrays["expected"] = np.empty((n, dim_f))

    def __call__(self, dist: Any, where: slice | np.ndarray, frame: LocalFrame | None) -> None:
        """Store the predictive of the targets ``where`` (values are never framed)."""
        a = self.arrays
        unit = np.ones((1, 1)) if self.per_unit is None else self.per_unit[where]
        mean = dist.mean[0].double().cpu().numpy()
        if self.per_unit is not None:
            a["expected"][where] = mean
        a["mean"][where] = mean / unit
        a["std"][where] = dist.stddev[0].double().cpu().numpy() / unit
        for i, level in enumerate(self.levels):
            a["quantiles"][i, where] = self.family.quantile(dist, level)[0].cpu().numpy() / unit
        for i, threshold in enumerate(self.request.thresholds):
            value = torch.as_tensor(float(threshold) * unit, dtype=torch.float64).expand(
                dist.mean.shape[1:])[None]
            a["exceedance"][i, where] = (1 - self.family.cdf(dist, value))[0].cpu().numpy()
        if self.request.n_samples:
            seed = int(self.rng.integers(2**63 - 1))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                draws = dist.sample((self.request.n_samples,))[:, 0]
            a["samples"][:, where] = draws.double().cpu().numpy() / unit


def distribution_outputs(template: Any, store: DistributionStore, schema: Schema) -> Any:
    """The container of a likelihood family's predictive (:class:`DistributionStore`).

    The same names as :func:`gaussian_outputs`: per value column ``mean``, ``std``,
    ``quantiles``, ``lower``/``upper``, ``exceedance``, ``samples``.
    """
    request, a = store.request, store.arrays
    outputs: dict[str, np.ndarray] = {}
    extra: dict[str, tuple[str, Sequence[Any], str]] = {}
    attrs: dict[str, dict[str, Any]] = {}
    n_levels = len(request.levels)
    for j, value in enumerate(schema.values):
        prefix = f"{value}_" if len(schema.values) > 1 else ""
        units = ({"units": schema.units[j]} if j < len(schema.units) else {})
        per = f" per {schema.offset}" if store.per_unit is not None else ""
        named = {"mean": a["mean"][:, j], "std": a["std"][:, j]}
        if store.per_unit is not None:
            named["expected_count"] = a["expected"][:, j]
        if request.levels:
            named["quantiles"] = a["quantiles"][:n_levels, :, j]
            extra[prefix + "quantiles"] = ("quantile", list(request.levels), prefix + "q")
        if request.interval is not None:
            named["lower"], named["upper"] = a["quantiles"][n_levels:, :, j]
        if request.thresholds:
            named["exceedance"] = a["exceedance"][:, :, j]
            extra[prefix + "exceedance"] = ("threshold", list(request.thresholds),
                                            prefix + "exceedance_")
        if request.n_samples:
            named["samples"] = a["samples"][:, :, j]
            extra[prefix + "samples"] = ("sample", list(range(request.n_samples)),
                                         prefix + "sample_")
        for name, array in named.items():
            if not np.isfinite(array).all():
                _check_finite_output(prefix + name, array, "the model's predictive is not "
                                     "finite there (a diverged model, or inputs far outside "
                                     "its training range)")
            outputs[prefix + name] = array.astype(np.float32)
            attrs[prefix + name] = {**units, "long_name": f"{value}{per} {name}"
                                    if name != "expected_count" else f"expected {value}"}
        if request.thresholds:
            attrs[prefix + "exceedance"] = {
                "units": "1", "long_name": f"P({value}{per} > threshold)",
                **({"threshold_units": units["units"]} if units else {})}
        if request.n_samples:
            attrs[prefix + "samples"]["samples_are"] = "marginal (independent across targets)"
    return template.build(outputs, extra, attrs)


def largest_finite(values: np.ndarray | None) -> float:
    """The largest finite ``|value|`` (0 for none)."""
    if values is None or not values.size:
        return 0.0
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size else 0.0


def _gaussian_arrays(mean: np.ndarray, std: np.ndarray, norm: Normalizer, schema: Schema,
                     request: OutputRequest
                     ) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, Sequence[Any], str]],
                                dict[str, dict[str, Any]]]:
    """The outputs (float32), their extra dimensions and attributes, by output name."""
    loc, scale = norm.gaussian(mean.astype(np.float64), std.astype(np.float64))
    user_mean, user_std = norm.moments(loc, scale)
    outputs: dict[str, np.ndarray] = {}
    extra: dict[str, tuple[str, Sequence[Any], str]] = {}
    attrs: dict[str, dict[str, Any]] = {}
    rng = np.random.default_rng(request.seed)
    for j, value in enumerate(schema.values):
        prefix = f"{value}_" if len(schema.values) > 1 else ""
        units = ({"units": schema.units[j]} if j < len(schema.units) else {})
        named = {"mean": user_mean[:, j], "std": user_std[:, j]}
        if request.levels:
            named["quantiles"] = np.stack([norm.quantile(loc[:, j], scale[:, j], q)
                                           for q in request.levels])
            extra[prefix + "quantiles"] = ("quantile", list(request.levels), prefix + "q")
        if request.interval is not None:
            low, high = interval_levels(request.interval)
            named["lower"] = norm.quantile(loc[:, j], scale[:, j], low)
            named["upper"] = norm.quantile(loc[:, j], scale[:, j], high)
        if request.thresholds:
            named["exceedance"] = np.stack([norm.exceedance(loc[:, j], scale[:, j], t)
                                            for t in request.thresholds])
            extra[prefix + "exceedance"] = ("threshold", list(request.thresholds),
                                            prefix + "exceedance_")
        if request.n_samples:
            draws = loc[:, j] + scale[:, j] * rng.standard_normal((request.n_samples, len(loc)))
            named["samples"] = norm.inverse(draws)
            extra[prefix + "samples"] = ("sample", list(range(request.n_samples)),
                                         prefix + "sample_")
        for name, array in named.items():
            outputs[prefix + name] = array.astype(np.float32)
            attrs[prefix + name] = {**units, "long_name": f"{value} {name}"}
        if request.thresholds:  # a probability; the thresholds are in the value's units
            attrs[prefix + "exceedance"] = {
                "units": "1", "long_name": f"P({value} > threshold)",
                **({"threshold_units": units["units"]} if units else {})}
    return outputs, extra, attrs


def _check_finite_output(name: str, array: np.ndarray, cause: str) -> None:
    """Refuse an output that is not finite (in float32), naming the cause."""
    bad = ~np.isfinite(array)
    if not bad.any():
        return
    count = int(bad.sum())
    raise ValueError(f"prediction {name!r} is not finite at {count:,} target(s): {cause}")


def _overflow_cause(norm: Normalizer, blame: OverflowBlame, mean: np.ndarray,
                    std: np.ndarray) -> str:
    """Why outputs in the data's units overflow float32: transform, data, model or normaliser."""
    largest_value = blame.largest_value
    if norm.value_transform != "none":
        return (f"the inverse {norm.value_transform!r} transform overflows float32 there: the "
                "values span too many orders of magnitude for it (fit on a narrower range, or "
                "use value_transform='none')")
    if largest_value * MODERATE_INPUT > np.finfo(np.float32).max:
        return "the values overflow float32 there: rescale them (e.g. other units)"
    model_units = max(largest_finite(mean), largest_finite(std))
    if model_units > MODERATE_INPUT:
        return (f"the model's outputs are huge in model units (up to {model_units:.3g}) for "
                f"observed values of at most {largest_value:.3g}: the model itself is broken "
                "(diverged weights): use an earlier checkpoint")
    whose = "the stored normaliser (the checkpoint's)" if blame.stored_normalizer \
        else "the normaliser"
    return (f"{whose} maps moderate outputs (up to {model_units:.3g} in model units) out of "
            f"float32 with value scale {', '.join(f'{v:.3g}' for v in norm.value_scale)}, "
            f"for observed values of at most {largest_value:.3g}: it was fitted on very "
            "different data, or is damaged; refit it (Predictor.fit_normalizer)")
