"""The roles of the user's columns, resolved and checked against a model.

:func:`resolve_schema` builds the :class:`~bsatnp.data.Schema` of a table from the role
arguments (or checks them against a stored schema); :func:`check_schema` refuses a schema
that does not give the model the roles and widths it reads, naming what differs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from bsatnp.data.geo import check_crs
from bsatnp.data.schema import Schema
from bsatnp.data.tables import class_labels, time_kind_of
from bsatnp.likelihoods import likelihood_family, offset_of
from bsatnp.models.base import NeuralProcess


def resolve_schema(model: NeuralProcess, stored: Schema | None, data: Any, **roles: Any
                   ) -> Schema:
    """The schema for ``data`` and ``model``: ``stored`` (a predictor's), or one from roles.

    ``roles`` are :class:`~bsatnp.data.Schema` fields (``values``, ``space``, ``crs``,
    ``time``, ``covariates``, ``units``; a single name may be a string), and ``exposure``
    (a count model) or ``trials`` (a binomial model) naming the column of
    :attr:`Schema.offset <bsatnp.data.Schema.offset>`. Given with a stored schema they
    must agree with it.

    Raises:
        ValueError: If the roles disagree with the stored schema or do not fit the model.
    """
    roles = dict(roles)
    for meaning in ("exposure", "trials"):
        column = roles.pop(meaning, None)
        if column is None:
            continue
        reads = offset_of(model.likelihood)
        if reads != meaning:
            raise ValueError(f"{meaning}={column!r}: a {model.likelihood} model reads "
                             + (f"{reads} (give {reads}=...)" if reads else
                                "no exposure or trials"))
        roles["offset"] = str(column)
    given = {key: _as_names(value) if key in ("values", "space", "covariates", "units")
             else value for key, value in roles.items() if value is not None}
    if stored is not None:
        fields = stored.to_dict()
        clash = {key: (value, fields[key]) for key, value in given.items()
                 if _plain(fields.get(key)) != _plain(value)}
        if clash:
            details = "; ".join(f"{k}: given {v[0]!r}, model has {v[1]!r}"
                                for k, v in clash.items())
            raise ValueError(f"the data's schema does not match the model's ({details}); "
                             "rename the columns or omit these arguments")
        return stored
    if "values" not in given:
        raise ValueError("name the value column(s): values='pm25' (the model has no "
                         "stored schema)")
    schema = Schema(**given)
    check_crs(schema.crs, "crs")
    if schema.time:
        schema = replace(schema, time_kind=time_kind_of(data, schema))
    if model.likelihood == "categorical":
        schema = replace(schema, classes=class_labels(data, schema))
    check_schema(model, schema)
    return schema

def check_schema(model: NeuralProcess, schema: Schema) -> None:
    """Raise ``ValueError`` if ``schema`` does not give ``model`` the roles it reads."""
    dim_f = model.width("f")
    needs = {"s": len(schema.space), "t": 1 if schema.time else 0,
             "x": len(schema.covariates)}
    for role, what in (("s", "space"), ("t", "time"), ("x", "covariates")):
        want = model.width(role)
        if needs[role] != want:
            raise ValueError(f"the model reads {want} {what} column(s) (dim_{role}={want}) "
                             f"but the schema names {needs[role]}")
    if model.likelihood == "categorical":
        if len(schema.values) == 1 and len(schema.classes) > dim_f and all(
                _is_number(label) for label in schema.classes) and not all(
                float(label).is_integer() for label in schema.classes):  # measurements
            raise ValueError(f"this model is a classifier of {dim_f} labels, but the "
                             f"value column {schema.values[0]!r} holds numbers "
                             f"({len(schema.classes):,} distinct): give a column of class "
                             "labels, or use a model of numeric values (bsatnp models)")
        if len(schema.values) != 1 or len(schema.classes) != dim_f:
            shown = repr(tuple(schema.classes[:8])) + (
                f" and {len(schema.classes) - 8} more" if len(schema.classes) > 8 else "")
            raise ValueError(f"the model predicts {dim_f} classes from one label "
                             f"column; the data have {len(schema.values)} value column(s) "
                             f"with classes {shown}")
    elif len(schema.values) != dim_f:
        raise ValueError(f"the model predicts {dim_f} value(s) but the schema names "
                         f"{len(schema.values)}: {schema.values}")
    if model.great_circle and schema.crs is None:
        raise ValueError("this model reads lon/lat degrees (great-circle distances): "
                         "declare the coordinates' crs, e.g. crs='lonlat'")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _as_names(value: Any) -> tuple[str, ...]:
    """Column names as strings: one name (any label, e.g. the integer ``0``) or several."""
    if isinstance(value, (str, int, np.integer)):
        return (str(value),)
    return tuple(str(v) for v in value)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return value


def check_values(model: NeuralProcess, values: np.ndarray | None, schema: Schema,
                 offset: np.ndarray | None = None) -> None:
    """Refuse observed values outside the support of the model's likelihood.

    Counts must be integers >= 0; presence 0 or 1; proportions within [0, 1]; successes
    at most their trials, whole numbers of trials (a Gaussian or categorical model takes
    any value or label).

    Raises:
        ValueError: Naming the value column, how many values are outside and the first.
    """
    if values is None or model.likelihood in ("gaussian", "categorical"):
        return
    family = likelihood_family(model.likelihood)
    low, high = family.bounds
    for j, name in enumerate(schema.values):
        column = values[:, j]
        bad = (column < low) | (column > high)
        if family.discrete:
            bad |= column != np.floor(column)
        if bad.any():
            what = ("integers" + (" 0 or 1" if high == 1 else " >= 0") if family.discrete
                    else f"within [{low:g}, {high:g}]")
            raise ValueError(f"a {model.likelihood} model reads {what}: value column {name!r} "
                             f"has {int(bad.sum()):,} that are not (e.g. {column[bad][0]!r})")
        if family.offset == "trials" and offset is not None:
            trials = offset[:, 0]
            bad = (column > trials) | (trials != np.floor(trials))
            if bad.any():
                first = int(np.argmax(bad))
                raise ValueError(f"a binomial model reads successes out of whole trials: "
                                 f"{int(bad.sum()):,} rows of {name!r} are not (e.g. "
                                 f"{column[first]!r} of {trials[first]!r} trials in "
                                 f"{schema.offset!r})")
