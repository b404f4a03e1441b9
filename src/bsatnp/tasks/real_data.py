"""Where the real datasets live, and small helpers shared by the real-data tasks.

The data are read in place, never copied into the repository: :func:`data_dir` is the
folder ``$BSATNP_DATA`` when that variable is set, else the first ``shared/data`` folder
found next to an ancestor of this package (a checkout at ``<root>`` finds
``<root>/../shared/data``). Each task loads its files once per process (its loader is
cached by path), so drawing a batch never touches the disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from bsatnp.tasks.base import SPLITS

DATA_ENV = "BSATNP_DATA"
"""Environment variable naming the data folder (it holds ``beijing_air_quality/``, ...)."""


def data_dir() -> Path:
    """The folder holding the real datasets.

    Returns:
        ``$BSATNP_DATA`` if set, else the nearest ``<ancestor>/shared/data`` above this file.

    Raises:
        FileNotFoundError: If ``$BSATNP_DATA`` is set to a missing folder, or it is unset
            and no ``shared/data`` folder is found.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"${DATA_ENV} = {env!r} is not a directory")
        return path
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        "no real-data folder found: set the environment variable "
        f"{DATA_ENV} to the folder that holds beijing_air_quality/ and era5/ "
        "(by default <repository root>/../shared/data)"
    )


def dataset_dir(name: str) -> Path:
    """The folder of dataset ``name`` inside :func:`data_dir`.

    Raises:
        FileNotFoundError: If the data folder or the dataset's folder is missing.
    """
    path = data_dir() / name
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found (the data folder is {DATA_ENV} or "
                                "<repository root>/../shared/data)")
    return path


def check_split(split: str) -> None:
    """Raise ``ValueError`` unless ``split`` is one of ``train``, ``valid``, ``test``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
