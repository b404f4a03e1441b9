"""Model families by name: how configs, checkpoints and experiments find a model class.

A model config is stored as plain data with a ``family`` key next to the config's own
fields, e.g. ``{"family": "tnpd", "num_blocks": 6, ...}``. A missing ``family`` means
``"bsatnp"`` (checkpoints written before other families existed). Before bsatnp had the
paper's TNP-D, ``tnpd`` named a KRBlock model with locations embedded and no bias (the
reference's SA-TNP), which is a BSA-TNP with ``use_s="embed"``; such stored configs (they
have ``obs_dim``) are read as that BSA-TNP, whose weights have the same names.
"""

from __future__ import annotations

from typing import Any

from torch import nn

# Each family module registers its class (@register_family) when imported.
import bsatnp.models.bsatnp
import bsatnp.models.convcnp
import bsatnp.models.local_average
import bsatnp.models.tetnp
import bsatnp.models.tnpd  # noqa: F401
from bsatnp.models.base import FAMILIES, Family, FamilyConfig

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "Family", "ModelConfig", "build_model",
           "config_from_dict", "config_to_dict", "family_name", "split_family"]

ModelConfig = FamilyConfig
"""Any model family's configuration."""

DEFAULT_FAMILY = "bsatnp"


def family_name(config: Any) -> str:
    """Name of the family whose config class ``config`` is an instance of.

    Raises:
        ValueError: If ``config`` belongs to no registered family.
    """
    for name, family in FAMILIES.items():
        if type(config) is family.config:
            return name
    raise ValueError(f"{type(config).__name__} is not the config of a known model family")


def split_family(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(family, fields)`` of stored config data (``family`` defaults to ``"bsatnp"``).

    Raises:
        ValueError: If the family is unknown.
    """
    fields = dict(data)
    name = fields.pop("family", DEFAULT_FAMILY)
    if name == "tnpd" and "obs_dim" in fields:  # the former tnpd: SA-TNP (module doc)
        fields.pop("keys", None)  # its all-masked mode predicted the same
        return DEFAULT_FAMILY, {**fields, "use_s": "embed"}
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    return name, fields


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """Plain data of ``config`` with its ``family`` (inverse of :func:`config_from_dict`)."""
    return {"family": family_name(config), **config.to_dict()}


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuild a config from :func:`config_to_dict` output.

    Raises:
        ValueError: On an unknown family, an unknown key or an invalid value.
    """
    name, fields = split_family(data)
    config: ModelConfig = FAMILIES[name].config.from_dict(fields)
    return config


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model of ``config``'s family."""
    return FAMILIES[family_name(config)].model(config)
