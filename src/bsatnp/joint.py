"""Spatially coherent joint samples from a diagonal model, autoregressively.

A neural process's predictive is a product of independent marginals, one per test point:
its samples are noise, not fields. Used autoregressively (Bruinsma et al. 2023,
"Autoregressive conditional neural processes", ICLR) the same model gives joint samples:
the test points are visited in an order, in chunks; each chunk is drawn from the model's
diagonal predictive given the context *and the values already drawn* (appended to the
context as observations), so later points see the earlier ones and the samples are
coherent in space. The same factorisation gives a joint log-likelihood of observed values,

    log p(y_1, ..., y_N | context) = Σ_chunks log p(y_chunk | context, y_earlier chunks),

which with one chunk of all points is the diagonal one (the sum of the marginal
log-densities). Every likelihood: a chunk's value is the inverse CDF of its predictive at
``Φ(ε)`` for a standard-normal ``ε`` (``μ + σ·ε`` for a Gaussian; the sampled class, one-hot,
for a classifier), and a drawn count enters the context with its point's exposure or trials.

Here on tensors: :func:`autoregressive_samples` (``[S, B, N, Dv]``, the samples stacked
along the batch dimension, so one forward pass per chunk serves them all) and
:func:`autoregressive_log_likelihood` (``[B]``), over any
:class:`~bsatnp.models.base.NeuralProcess` and :class:`~bsatnp.batch.Batch`; on the user's
data, :meth:`Predictor.joint_samples <bsatnp.predictor.Predictor.joint_samples>`
(:mod:`bsatnp.joint_data`), ``[n_samples, n_targets]`` in the data's units.

Each chunk re-encodes the grown context (the context tokens attend to each other, so an
appended point changes them all): the cost is the number of chunks times one forward pass
over ``n_context + N`` points, not one pass. Conditioning is global: every chunk sees all
observations and every earlier target (no local neighbourhoods). A drawn value enters the
context as an observation would: where the model predicts noise-free values but was
trained on noisy context (the GP tasks), the appended values are read as noisy ones, so
the joint is an approximation even for a perfect marginal model.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution

from bsatnp.batch import ROLES, Batch
from bsatnp.likelihoods import likelihood_family
from bsatnp.models.base import NeuralProcess

Order = Literal["random", "given"]
"""How the test points are visited: a seeded random permutation per task, or as given."""


# --------------------------------------------------------------------------- tensors
@torch.no_grad()
def autoregressive_samples(model: NeuralProcess, batch: Batch, n_samples: int, *,
                           chunk: int = 1, order: Order | Tensor = "random",
                           generator: torch.Generator | None = None,
                           samples_per_pass: int | None = None) -> Tensor:
    """Joint samples at the test points of ``batch``, drawn chunk by chunk.

    The test points are visited in ``order`` in chunks of ``chunk`` points; chunk ``k`` is
    drawn from ``model``'s diagonal predictive given the context plus the values drawn for
    chunks ``0..k-1`` (appended as valid context points). The ``n_samples`` samples are
    stacked along the batch dimension (task ``b`` of sample ``s`` is row ``s·B + b``), so
    each chunk is one forward pass over ``samples_per_pass · B`` tasks.

    Test points with ``mask_test`` False are sampled like the others but never appended as
    context (padding cannot leak into the other points); padded context slots are dropped
    by the model as always.

    Randomness, all from ``generator``: first the order (``"random"``: one permutation per
    task), then one standard-normal draw per sample, task, position in the order and value
    (``[S, B, N, Dv]``), whatever ``chunk`` and ``samples_per_pass`` are; the first chunk's
    samples are therefore the same for every ``chunk`` setting at and above its size.

    Args:
        model: A :class:`~bsatnp.models.base.NeuralProcess` (in eval mode).
        batch: Context and test inputs (``f_test`` is not used).
        n_samples: Samples ``S`` per task (>= 1).
        chunk: Test points per step (>= 1; ``>= N`` gives the diagonal's samples).
        order: ``"random"``, ``"given"`` (the batch's order) or a permutation of
            ``range(N)`` (``[N]`` for every task, or ``[B, N]``).
        generator: Source of randomness (the global RNG when ``None``).
        samples_per_pass: Samples per forward pass (memory bound; ``None``: all).

    Returns:
        Samples ``[S, B, N, Dv]`` in the model's units, in the batch's test order (a
        classifier's are one-hot over its ``Dv`` classes).

    Raises:
        ValueError: On bad ``n_samples``/``chunk``/``order``, or a batch that does not
            fit the model.
    """
    check_model(model)
    check_count("n_samples", n_samples)
    check_count("chunk", chunk)
    if samples_per_pass is not None:
        check_count("samples_per_pass", samples_per_pass)
    model.check_batch(batch)
    B, N, Dv = batch.batch_size, batch.n_test, model.width("f")
    perm = _order(order, B, N, generator, batch.f_ctx.device)
    dtype = batch.f_ctx.dtype
    eps = torch.randn(n_samples, B, N, Dv, generator=generator, dtype=dtype,
                      device=batch.f_ctx.device)
    permuted = _permute_test(batch, perm)
    step = samples_per_pass or n_samples
    out = torch.empty(n_samples, B, N, Dv, dtype=dtype, device=batch.f_ctx.device)
    for first in range(0, n_samples, step):
        group = slice(first, min(first + step, n_samples))
        count = group.stop - group.start
        stacked = _repeat(permuted, count)
        noise = eps[group].reshape(count * B, N, Dv)
        values = torch.zeros(count * B, N, Dv, dtype=dtype, device=batch.f_ctx.device)
        for start, stop in _chunks(N, chunk):
            dist = model(_step(stacked, values, start, stop))
            values[:, start:stop] = _inverse_cdf(model, dist, noise[:, start:stop]).to(dtype)
        out[group] = values.reshape(count, B, N, Dv)
    # Back to the batch's order: position i of the order holds test point perm[b, i].
    index = perm[None, :, :, None].expand(n_samples, B, N, Dv)
    return torch.empty_like(out).scatter_(2, index, out)


def autoregressive_log_likelihood(model: NeuralProcess, batch: Batch, *, chunk: int = 1,
                                  order: Order | Tensor = "random",
                                  generator: torch.Generator | None = None) -> Tensor:
    """Joint log-likelihood of ``batch.f_test`` under the autoregressive factorisation.

    ``Σ_k log p(y_chunk_k | context, y_chunk_0..k-1)``, each term the model's diagonal
    log-density of a chunk given the context plus the observed values of the
    earlier chunks (appended as context). With ``chunk >= N`` this is the diagonal
    log-likelihood, ``model(batch).log_prob(f_test)`` summed. Test points with
    ``mask_test`` False neither count nor are appended. Gradients flow when enabled
    (the caller's grad mode).

    Args:
        model: A :class:`~bsatnp.models.base.NeuralProcess`.
        batch: Context, test inputs and ``f_test``.
        chunk: Test points per step (>= 1).
        order: As in :func:`autoregressive_samples` (a random order comes from
            ``generator``).
        generator: Source of the random order.

    Returns:
        Log-likelihood per task ``[B]`` (summed over its valid test points and values),
        in the model's units (nats).

    Raises:
        ValueError: On a batch without ``f_test`` or that does not fit the model, or bad
            ``chunk``/``order``.
    """
    check_model(model)
    check_count("chunk", chunk)
    model.check_batch(batch)
    if batch.f_test is None:
        raise ValueError("autoregressive_log_likelihood needs f_test (the values to score)")
    B, N = batch.batch_size, batch.n_test
    perm = _order(order, B, N, generator, batch.f_ctx.device)
    permuted = _permute_test(batch, perm)
    values, valid = permuted.f_test, permuted.test_mask()
    total = torch.zeros(B, dtype=values.dtype, device=values.device)
    for start, stop in _chunks(N, chunk):
        dist = model(_step(permuted, values, start, stop))
        target = values[:, start:stop].to(dist.mean.dtype)
        keep = valid[:, start:stop]
        # Masked targets may hold anything (NaN): score a 0 there and drop the term.
        if isinstance(dist, Categorical):  # one-hot values → class indices
            log_prob = dist.log_prob(target.argmax(-1))
        else:
            target = torch.where(keep[..., None], target, dist.mean.detach())
            log_prob = dist.log_prob(target).sum(-1)
        total = total + torch.where(keep, log_prob, torch.zeros_like(log_prob)).sum(-1)
    return total


# ------------------------------------------------------------------------- helpers
def check_model(model: NeuralProcess) -> None:
    """Refuse what is not a :class:`NeuralProcess`."""
    if not isinstance(model, NeuralProcess):
        raise ValueError(f"model must be a bsatnp NeuralProcess, got {type(model).__name__}")


def _inverse_cdf(model: NeuralProcess, dist: Distribution, eps: Tensor) -> Tensor:
    """Values ``[B, n, Dv]`` at standard-normal draws ``eps``: the inverse CDF at ``Φ(ε)``."""
    if isinstance(dist, Categorical):  # the class whose cumulative share first passes u
        u = torch.special.ndtr(eps[..., 0].double())
        cumulative = dist.probs.double().cumsum(-1)
        classes = (cumulative < u[..., None]).sum(-1).clamp_max(cumulative.shape[-1] - 1)
        return torch.nn.functional.one_hot(classes, cumulative.shape[-1])
    if model.likelihood == "gaussian":
        return dist.mean + dist.stddev * eps
    family = likelihood_family(model.likelihood)
    u = torch.special.ndtr(eps.double()).clamp(1e-12, 1 - 1e-12)
    return family.quantile(dist, u)


def check_count(name: str, value: Any) -> None:
    """Refuse a count that is not an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _chunks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, n)) for start in range(0, n, chunk)]


def _order(order: Order | Tensor, B: int, N: int, generator: torch.Generator | None,
           device: torch.device) -> Tensor:
    """The visiting order ``[B, N]``: position ``i`` of task ``b`` is test point ``[b, i]``."""
    if isinstance(order, str):
        if order == "given":
            return torch.arange(N, device=device).expand(B, N)
        if order == "random":
            keys = torch.rand(B, N, generator=generator, device=device)
            return keys.argsort(dim=1)
        raise ValueError(f"order must be 'random', 'given' or a permutation, got {order!r}")
    perm = torch.as_tensor(order, device=device)
    if perm.dtype not in (torch.int32, torch.int64) or perm.ndim not in (1, 2):
        raise ValueError(f"an order must be an integer tensor [N] or [B, N], got "
                         f"{perm.dtype} of shape {tuple(perm.shape)}")
    perm = perm.long()
    if perm.ndim == 1 and perm.shape[0] == N:
        perm = perm.expand(B, N)
    if tuple(perm.shape) != (B, N) or not bool(
            (perm.sort(dim=1).values == torch.arange(N, device=device)).all()):
        raise ValueError(f"order must be a permutation of range({N}) per task")
    return perm


def _permute_test(batch: Batch, perm: Tensor) -> Batch:
    """The batch with its test points (and ``f_test``, ``mask_test``) in the order ``perm``."""
    updates: dict[str, Tensor | None] = {}
    for role in (*ROLES, "f", "offset"):
        value = batch.test(role)
        if value is not None:
            index = perm[..., None].expand(-1, -1, value.shape[-1])
            updates[f"{role}_test"] = value.gather(1, index)
    if batch.mask_test is not None:
        updates["mask_test"] = batch.mask_test.gather(1, perm)
    return batch.map(**updates)


def _repeat(batch: Batch, count: int) -> Batch:
    """The batch's tasks ``count`` times along the batch dimension (row ``s·B + b``)."""
    updates: dict[str, Tensor | None] = {}
    for name in ("mask_ctx", "mask_test", *(f"{r}_{w}" for r in (*ROLES, "f", "offset")
                                           for w in ("ctx", "test"))):
        value = getattr(batch, name)
        if value is not None:
            updates[name] = value.repeat(count, *([1] * (value.ndim - 1)))
    return batch.map(**updates)


def _step(batch: Batch, values: Tensor, start: int, stop: int) -> Batch:
    """Context plus test points ``[:start]`` holding ``values``; test points ``[start:stop]``.

    Appended points are valid context where ``mask_test`` is (all, without a mask).
    """
    fields: dict[str, Tensor | None] = {}
    for role in ROLES:
        ctx, test = batch.ctx(role), batch.test(role)
        if ctx is not None:
            fields[f"{role}_ctx"] = torch.cat([ctx, test[:, :start].to(ctx.dtype)], dim=1)
            fields[f"{role}_test"] = test[:, start:stop]
    fields["f_ctx"] = torch.cat([batch.f_ctx, values[:, :start].to(batch.f_ctx.dtype)], dim=1)
    if batch.offset_test is not None:  # drawn counts rest on their points' exposures
        known = batch.offset_ctx if batch.offset_ctx is not None else torch.ones_like(
            batch.f_ctx)
        fields["offset_ctx"] = torch.cat([known, batch.offset_test[:, :start]], dim=1)
        fields["offset_test"] = batch.offset_test[:, start:stop]
    elif batch.offset_ctx is not None:
        fields["offset_ctx"] = torch.cat([batch.offset_ctx, torch.ones_like(
            values[:, :start])], dim=1)
    if batch.mask_ctx is None and batch.mask_test is None:
        fields["mask_ctx"] = None
    else:
        fields["mask_ctx"] = torch.cat([batch.context_mask(), batch.test_mask()[:, :start]],
                                       dim=1)
    return Batch(**fields)
