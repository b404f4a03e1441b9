"""The one model contract: every family is a :class:`NeuralProcess`.

A neural process maps a :class:`~bsatnp.batch.Batch` (context and test sets) to a
predictive distribution at the test points. The base class owns what every family shares:
the config (a frozen :class:`~bsatnp.config.Config` dataclass with ``dim_<role>`` widths),
input checks, sanitising padding, ``predict`` and conditioning once for many test sets
(:meth:`NeuralProcess.condition`); a family implements only :meth:`NeuralProcess.predictive`
on a checked, sanitised batch, and may split it into :meth:`~NeuralProcess.encode` (context
only) and :meth:`~NeuralProcess.decode` (test points) so the context is computed once.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution

from bsatnp.batch import ROLES, Batch
from bsatnp.config import Config
from bsatnp.likelihoods import offset_of, value_features


class FamilyConfig(Config):
    """What every family's config states, read through one typed interface.

    A family's config is a frozen dataclass deriving from this class, with its own fields:
    ``dim_s``, ``dim_f`` and ``likelihood`` always, ``dim_x``/``dim_t`` where the family
    reads those roles. Callers ask :meth:`width`, :attr:`roles`, :attr:`great_circle` and
    :attr:`memory_widths`; none probes a field by name.
    """

    likelihood: str

    def width(self, role: str) -> int:
        """Features of ``role`` (``x``, ``s``, ``t`` or ``f``); 0 for a role not read."""
        if role not in (*ROLES, "f"):
            raise ValueError(f"role must be one of {(*ROLES, 'f')}, got {role!r}")
        return int(getattr(self, f"dim_{role}", 0))

    @property
    def roles(self) -> tuple[str, ...]:
        """Input roles the model reads (width > 0), in ``x, s, t`` order."""
        return tuple(r for r in ROLES if self.width(r) > 0)

    @property
    def great_circle(self) -> bool:
        """Whether space is measured by great-circle distance on (lon, lat) degrees."""
        return False

    @property
    def value_inputs(self) -> int:
        """Features a context value is embedded with (``Df``, or ``2·Df`` with an offset).

        ``2·Df`` where the likelihood reads an offset
        (:func:`~bsatnp.likelihoods.value_features`).
        """
        return self.width("f") * (2 if offset_of(self.likelihood) is not None else 1)

    @property
    def memory_widths(self) -> tuple[int, ...]:
        """Widths of the activations one test point holds in a forward pass (for sizing)."""
        return ()


class NeuralProcess(nn.Module):
    """Base of every model family (BSA-TNP, TNP-D, TE-TNP, ConvCNP).

    Subclasses name their config dataclass in ``config_class``, call
    ``super().__init__(config, overrides)`` and implement :meth:`predictive`. A role
    ``r`` in ``x, s, t`` is read when the config has ``dim_r > 0``; ``dim_f`` is the
    value width (classes for a categorical model).

    Args:
        config: Model configuration (default: ``config_class()``).
        overrides: Fields of the configuration to change.

    Example:
        >>> dist = model(batch)          # Normal [B, Lt, Df] or Categorical [B, Lt]
        >>> mean, std = model.predict(batch)
    """

    config_class: ClassVar[type[FamilyConfig]]
    trainable: ClassVar[bool] = True
    """Whether the family has weights to train (the local averages have none)."""

    def __init__(self, config: FamilyConfig | None, overrides: dict[str, Any]) -> None:
        super().__init__()
        config = config or self.config_class()
        if not isinstance(config, self.config_class):
            raise ValueError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                             f"got {type(config).__name__}")
        self.config: Any = config.replaced(**overrides) if overrides else config

    @property
    def roles(self) -> tuple[str, ...]:
        """Input roles the model reads (``dim_<role> > 0``), in ``x, s, t`` order."""
        return self.config.roles  # type: ignore[no-any-return]

    def width(self, role: str) -> int:
        """Features of ``role`` (``x``, ``s``, ``t`` or ``f``; 0 for a role not read)."""
        return self.config.width(role)  # type: ignore[no-any-return]

    @property
    def great_circle(self) -> bool:
        """Whether the model measures space by great-circle distance on lon/lat degrees."""
        return bool(self.config.great_circle)

    @property
    def bytes_per_target(self) -> int:
        """Working memory of one target in a chunk (activations alive at once, float32, ×4)."""
        return 4 * 4 * max(1024, 3 * sum(self.config.memory_widths))

    @property
    def likelihood(self) -> str:
        """``"gaussian"`` or ``"categorical"``: the distribution :meth:`forward` returns."""
        return str(self.config.likelihood)

    @property
    def translation_invariant_roles(self) -> tuple[str, ...]:
        """Roles whose common translation cannot change predictions (read as differences).

        Callers centre these in float64 before the float32 cast to keep their precision.
        """
        return ()

    def with_likelihood(self, likelihood: str) -> NeuralProcess:
        """The same architecture ending in ``likelihood``, with these weights where shared.

        Every weight is copied where its shape matches; where it does not (the token
        embedding's first layer, which reads the value features, and the head's last
        layer, which gives the family's parameters) the leading block the two share is
        copied and the rest keeps its fresh initialisation: a count model started from a
        Gaussian one keeps what it learnt of space.
        """
        model = type(self)(self.config.replaced(likelihood=likelihood))
        own = model.state_dict()
        for name, weight in self.state_dict().items():
            if name in own and own[name].ndim == weight.ndim:
                shared = tuple(slice(0, min(a, b)) for a, b in zip(own[name].shape,
                                                                      weight.shape))
                own[name][shared] = weight[shared]
        model.load_state_dict(own)
        return model.to(model_device(self)).train(self.training)

    def check_batch(self, batch: Batch) -> None:
        """Raise ``ValueError`` if ``batch`` does not fit this model (shapes, roles, values)."""
        if not isinstance(batch, Batch):
            raise ValueError(f"batch must be a bsatnp.Batch, got {type(batch).__name__}")
        batch.validate(required_roles=self.roles)
        unused = [r for r in ROLES if r not in self.roles and batch.ctx(r) is not None]
        if unused and not getattr(self, "_warned_unused", False):
            self._warned_unused = True
            warnings.warn(f"{type(self).__name__} reads no {'/'.join(unused)} role "
                          f"(dim_{unused[0]}=0): the batch's {unused} inputs are ignored",
                          stacklevel=3)
        offsets = [name for name in ("offset_ctx", "offset_test") if getattr(batch, name)
                   is not None]
        if offsets and not offset_of(self.likelihood) is not None:
            raise ValueError(f"{offsets[0]} is given but the model's likelihood "
                             f"({self.likelihood}) reads no exposure or trials")
        for role in (*self.roles, "f"):
            want = self.width(role)
            got = batch.ctx(role).shape[-1]
            if got != want:
                raise ValueError(
                    f"{role}_ctx has {got} features but the model was built with dim_{role}={want}"
                )

    def forward(self, batch: Batch) -> Distribution:
        """Predictive distribution at the test points.

        Floating inputs of another dtype (numpy's float64, float16, bfloat16) are cast to
        the dtype of the model's parameters first.

        Args:
            batch: Context ``(roles, f, mask_ctx)`` and test ``(roles)`` inputs.

        Returns:
            ``Normal`` with mean/stddev ``[B, Lt, Df]`` or ``Categorical`` with logits
            ``[B, Lt, C]``.
        """
        self.check_batch(batch)
        return self.predictive(self.model_view(batch.to(dtype=model_dtype(self)).sanitized()))

    def model_view(self, batch: Batch) -> Batch:
        """A sanitised batch as the family reads it.

        Where the likelihood reads an offset, the context values become
        :func:`~bsatnp.likelihoods.value_features` (rate and log offset, ``2·Df``
        features); the test offsets stay for the head.
        """
        if not offset_of(self.likelihood) is not None:
            return batch
        return batch.map(f_ctx=value_features(batch.f_ctx, batch.offset_ctx), offset_ctx=None)

    @abstractmethod
    def predictive(self, batch: Batch) -> Distribution:
        """The family's computation on a checked batch whose padding is zeroed."""

    @torch.no_grad()
    def predict(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Predictive mean and standard deviation ``[B, Lt, Df]`` without gradients.

        Raises:
            ValueError: If the inputs do not fit the model, or the predictions are not
                finite (inputs far outside any training range overflow float32).
        """
        dist = self(batch)
        check_finite_prediction(dist, batch, self)
        return dist.mean, dist.stddev

    def encode(self, batch: Batch) -> Any:
        """What the family computes from the context of a sanitised batch alone.

        The default keeps nothing: :meth:`decode` then recomputes from the whole batch.
        """
        return None

    def decode(self, encoded: Any, batch: Batch) -> Distribution:
        """Predictive at the test points of ``batch`` from :meth:`encode` of its context."""
        return self.predictive(batch)

    @torch.no_grad()
    def condition(self, batch: Batch) -> ConditionedModel:
        """Encode the context of ``batch`` once, to predict at any number of test sets.

        Args:
            batch: Context (and any test points, which are only used for the checks).

        Returns:
            A :class:`ConditionedModel` whose ``predictive(test)`` reuses the encoding;
            its result equals ``model(batch)`` for the same test points up to float
            round-off, whatever the chunking.
        """
        self.check_batch(batch)
        context = self.model_view(batch.to(dtype=model_dtype(self)).sanitized())
        return ConditionedModel(self, context, self.encode(context))


class ConditionedModel:
    """A model with its context encoded once (from :meth:`NeuralProcess.condition`).

    Args:
        model: The model.
        context: Checked, sanitised batch whose context is used.
        encoded: ``model.encode(context)``.
    """

    def __init__(self, model: NeuralProcess, context: Batch, encoded: Any) -> None:
        self.model, self.context, self.encoded = model, context, encoded

    @torch.no_grad()
    def predictive(self, test: Mapping[str, Tensor]) -> Distribution:
        """Predictive at new test points ``{role: [B, Lt, Dr]}``.

        Every role the model reads, and ``offset_test`` where its likelihood reads one
        (``None``: 1).

        Raises:
            ValueError: If the test points do not fit the model (roles, shapes, NaN).
        """
        fields = {f"{role}_test" for role in ROLES} | {"offset_test"}
        unknown = set(test) - fields
        if unknown:
            raise ValueError(f"unknown test fields {sorted(unknown)}; expected x/s/t_test "
                             "or offset_test")
        batch = self.context.map(**{name: test.get(name) for name in fields},
                                 f_test=None, mask_test=None)
        batch.validate(required_roles=self.model.roles)
        width = self.model.width("f")
        if batch.offset_test is not None and batch.offset_test.shape[-1] != width:
            raise ValueError(f"offset_test has {batch.offset_test.shape[-1]} features but the "
                             f"model predicts {width} values")
        dist = self.model.decode(self.encoded, batch.to(dtype=model_dtype(self.model)))
        check_finite_prediction(dist, batch, self.model)
        return dist


MODERATE_INPUT = 1e3
"""Inputs of at most this size cannot overflow a healthy model (blame the model then)."""


def check_finite_prediction(dist: Distribution, batch: Batch,
                            model: nn.Module | None = None) -> None:
    """Raise ``ValueError`` naming the likely cause if ``dist`` has non-finite parameters.

    The cause named: the ``model``'s weights if any is NaN/inf; the model if every input is
    moderate (at most :data:`MODERATE_INPUT` in size); else the inputs.
    """
    params = [dist.probs] if isinstance(dist, Categorical) else [dist.mean, dist.stddev]
    if all(bool(torch.isfinite(p).all()) for p in params):
        return
    if model is not None:
        damaged = [name for name, p in model.state_dict().items()
                   if p.is_floating_point() and not bool(torch.isfinite(p).all())]
        if damaged:
            raise ValueError(f"the model's predictions are not finite because the model is "
                             f"damaged: {len(damaged)} weight tensor(s) hold NaN or inf (e.g. "
                             f"{damaged[0]!r}); it diverged in training or its file is "
                             "corrupt: use an earlier checkpoint")
    largest = {role: float(batch.ctx(role).abs().max()) for role in (*ROLES, "f")
               if batch.ctx(role) is not None}
    role, value = max(largest.items(), key=lambda item: item[1])
    if value < MODERATE_INPUT:
        raise ValueError(f"the model's predictions are not finite although its inputs are "
                         f"moderate (largest |{role}_ctx| = {value:.3g}): the model itself is "
                         "broken (diverged weights, or a normaliser that does not fit it)")
    raise ValueError(f"the model's predictions are not finite: the inputs are far outside "
                     f"any training range (largest |{role}_ctx| = {value:.3g}); normalise the "
                     "data first (bsatnp.Predictor does this in the data's units)")


def model_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of the model's first floating parameter (float32 if none)."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


class Family(NamedTuple):
    """A model class and the config dataclass it is built from."""

    config: type[FamilyConfig]
    model: type[NeuralProcess]


FAMILIES: dict[str, Family] = {}
"""Model families by name, filled by :func:`register_family`."""

_Model = TypeVar("_Model", bound=type[NeuralProcess])


def register_family(name: str) -> Callable[[_Model], _Model]:
    """Class decorator: make a :class:`NeuralProcess` subclass a model family named ``name``.

    Its ``config_class`` is how stored configs of that family are read back
    (:mod:`bsatnp.models.registry`).

    Raises:
        ValueError: If the class is not a NeuralProcess, or the name is taken by another.
    """

    def register(cls: _Model) -> _Model:
        if not (isinstance(cls, type) and issubclass(cls, NeuralProcess)):
            raise ValueError(f"{cls!r} does not implement bsatnp.models.NeuralProcess")
        known = FAMILIES.get(name)
        if known is not None and known.model is not cls:
            raise ValueError(f"model family {name!r} is taken by {known.model.__qualname__}")
        FAMILIES[name] = Family(cls.config_class, cls)
        return cls

    return register
