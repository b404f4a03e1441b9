"""Progress bars: tqdm, imported lazily because it is an optional dependency."""

from __future__ import annotations

from typing import Any


def tqdm_class() -> Any:
    """The ``tqdm.auto.tqdm`` class.

    Raises:
        ImportError: If tqdm is not installed, naming the extra that provides it.
    """
    try:
        from tqdm.auto import tqdm
    except ImportError as err:
        raise ImportError(
            "progress bars need the 'tqdm' package (a dependency of bsatnp): pip install tqdm"
        ) from err
    return tqdm
