"""Models shipped inside the package: ``<name>.safetensors`` beside this file.

Each file is a bsatnp checkpoint (weights and model config only, no optimiser state) whose
``extra["predictor"]["card"]`` is its model card: the task, the training budget and recipe,
metrics against the task's oracle with standard errors, and the envelope of data it saw
(box, point counts, lengthscales), which :class:`bsatnp.predictor.Predictor` uses to scale
the user's coordinates. Loading needs neither the network nor the training extra.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from bsatnp.io.checkpoint import load_checkpoint


def pretrained_names() -> list[str]:
    """Names of the shipped models."""
    folder = resources.files("bsatnp") / "pretrained"
    return sorted(p.name.removesuffix(".safetensors") for p in folder.iterdir()
                  if p.name.endswith(".safetensors"))


def pretrained_path(name: str) -> Path:
    """File of the shipped model ``name``.

    Raises:
        ValueError: If no such model ships with this version.
    """
    names = pretrained_names()
    if name not in names:
        raise ValueError(f"no pretrained model {name!r}; shipped: {names or 'none'}")
    return Path(str(resources.files("bsatnp") / "pretrained" / f"{name}.safetensors"))


def model_card(name: str) -> dict[str, Any]:
    """The card of the shipped model ``name`` (empty if it has none)."""
    stored = load_checkpoint(pretrained_path(name)).provenance.predictor or {}
    card = stored.get("card") or {}
    return dict(card)


def checkpoint_path(given: str | Path) -> Path:
    """A checkpoint file, or the file of the shipped model of that name.

    An existing file wins; otherwise a shipped model's name (``gp2d``) gives its file; any
    other value comes back as a path (whose loader then reports that it does not exist).
    """
    path = Path(given)
    if not path.exists() and str(given) in pretrained_names():
        return pretrained_path(str(given))
    return path
