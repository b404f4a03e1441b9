"""The one configuration dialect: frozen dataclasses built from plain mappings, type-checked.

Every config in the package (model families, tasks, training, evaluation) is a frozen
dataclass read by :func:`build_dataclass`, whether it comes from YAML or from a
checkpoint; the :class:`Config` mixin gives the model and training configs their
``to_dict``/``from_dict`` round trip through it.

:func:`build_dataclass` checks keys and value types against the dataclass annotations
(``int``, ``float``, ``str``, ``bool``, ``Literal[...]``, ``tuple[...]``, ``dict[...]``,
unions such as ``int | None``, nested dataclasses), converts lists to tuples and integers
to floats where the annotation asks for them, then calls the constructor. Every error is a
``ValueError`` that names the offending key by its dotted path (``train.lr``), so a user can
find it.

A ``Literal[...]`` field is the one way to restrict a field to a few choices: the parser
refuses any other value naming the field and its choices, and :func:`check_literals`
(called by the dataclass's ``__post_init__``) does the same for direct construction.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, fields, is_dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound="Config")
Converters = Mapping[Any, Callable[[Any], Any]]
"""Annotation → function building that type from a plain value (e.g. a prior's spec)."""

_UNIONS = (typing.Union, types.UnionType)


class Config:
    """Mixin of a frozen config dataclass: plain-data round trip through the strict parser."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (inverse of :meth:`from_dict`)."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: Any) -> C:
        """Rebuild from :meth:`to_dict` output, YAML or a checkpoint (missing keys: defaults).

        Raises:
            ValueError: On a non-mapping, an unknown key or a value of the wrong type or
                range; the message starts with the class name and the key.
        """
        return build_dataclass(cls, data, cls.__name__)

    def replaced(self: C, **overrides: Any) -> C:
        """A copy with ``overrides`` applied (checked like :meth:`from_dict`)."""
        return type(self).from_dict({**self.to_dict(), **overrides})


def build_dataclass(cls: type[T], data: Any, where: str, converters: Converters | None = None) -> T:
    """Instantiate the dataclass ``cls`` from the mapping ``data``.

    Args:
        cls: A dataclass whose fields are annotated with supported types.
        data: Field values; missing fields take their defaults.
        where: Dotted name of ``data`` used in error messages (e.g. ``"model"``).
        converters: Builders for annotations the checker does not know (e.g. ``Prior``);
            a converter raises ``ValueError`` on bad input.

    Returns:
        The instance.

    Raises:
        ValueError: On a non-mapping, an unknown key, a value of the wrong type, or a
            value the dataclass itself rejects; the message starts with ``where.key``.
    """
    converters = converters or {}
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}"
        )
    names = [f.name for f in fields(cls) if f.init]
    unknown = sorted(str(key) for key in data if key not in names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys are {names}")
    hints = typing.get_type_hints(cls)
    kwargs = {key: _coerce(value, hints[key], f"{where}.{key}", converters)
              for key, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err


def _coerce(value: Any, hint: Any, where: str, converters: Converters) -> Any:
    """``value`` checked against (and converted to) the annotation ``hint``."""
    if hint in converters:
        try:
            return converters[hint](value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from err
    if is_dataclass(hint):
        if isinstance(value, hint):  # already built (e.g. a BiasSpec passed as an override)
            return value
        return build_dataclass(hint, value, where, converters)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        for choice in args:
            if _is_choice(value, choice):
                return choice
        raise ValueError(f"{where}: expected one of {args}, got {value!r}")
    if origin in _UNIONS:
        return _coerce_union(value, hint, args, where, converters)
    if origin is tuple:
        return _coerce_tuple(value, hint, args, where, converters)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(where, hint, value)
        key_hint, value_hint = args
        return {
            _coerce(k, key_hint, where, converters): _coerce(v, value_hint, f"{where}.{k}",
                                                             converters)
            for k, v in value.items()
        }
    return _coerce_scalar(value, hint, where)


def _coerce_union(value: Any, hint: Any, args: tuple[Any, ...], where: str,
                  converters: Converters) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise _type_error(where, hint, value)
    alternatives = [alternative for alternative in args if alternative is not type(None)]
    if len(alternatives) == 1:  # ``X | None``: X's own message says what is wrong
        return _coerce(value, alternatives[0], where, converters)
    for alternative in alternatives:
        try:
            return _coerce(value, alternative, where, converters)
        except ValueError:
            continue
    raise _type_error(where, hint, value)


def _coerce_tuple(value: Any, hint: Any, args: tuple[Any, ...], where: str,
                  converters: Converters) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise _type_error(where, hint, value)
    item_hints = args[:1] * len(value) if args[1:] == (Ellipsis,) else args
    if len(item_hints) != len(value):
        raise ValueError(f"{where}: expected {len(item_hints)} items, got {len(value)}")
    return tuple(_coerce(v, h, f"{where}[{i}]", converters)
                 for i, (v, h) in enumerate(zip(value, item_hints, strict=True)))


def _coerce_scalar(value: Any, hint: Any, where: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{where}: unsupported annotation {hint!r}")
    raise _type_error(where, hint, value)


def check_literals(instance: Any) -> None:
    """Refuse a ``Literal[...]`` field of the dataclass ``instance`` holding another value.

    The parser refuses such values when it reads them; this check, called first in a
    config's ``__post_init__``, covers direct construction (``TNPDConfig(norm="middle")``).

    Raises:
        ValueError: ``<Class>.<field> must be one of (<choices>), got <value>``.
    """
    for name, choices in _literal_fields(type(instance)):
        value = getattr(instance, name)
        if not any(_is_choice(value, choice) for choice in choices):
            raise ValueError(f"{type(instance).__name__}.{name} must be one of {choices}, "
                             f"got {value!r}")


@functools.cache
def _literal_fields(cls: type) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """``(name, choices)`` of the dataclass fields of ``cls`` annotated ``Literal[...]``."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, typing.get_args(hints[f.name])) for f in fields(cls)
                 if typing.get_origin(hints[f.name]) is Literal)


def _is_choice(value: Any, choice: Any) -> bool:
    """Whether ``value`` is the literal ``choice`` (``True`` is not ``1``)."""
    return (isinstance(value, type(choice)) and isinstance(value, bool) == isinstance(choice, bool)
            and value == choice)


def _type_error(where: str, hint: Any, value: Any) -> ValueError:
    name = hint.__name__ if isinstance(hint, type) else str(hint)
    return ValueError(f"{where}: expected {name}, got {value!r} ({type(value).__name__})")
