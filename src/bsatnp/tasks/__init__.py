"""Tasks: the contract (:class:`Task`), the registry, and the paper's benchmarks.

Importing this package registers the bundled tasks: the synthetic ``gp2d``, ``multiscale``,
``geodesic``, ``fixed_effects``, ``sir``, ``gneiting``, the broad-prior ``spatial`` and the
counts/presence/proportions of ``latent_gp``, and
the real-data ``beijing`` and ``era5`` (their data are read on the first batch, see
:mod:`bsatnp.tasks.real_data`).
"""

from bsatnp.tasks import (  # noqa: F401 (importing registers them)
    beijing,
    era5,
    fixed_effects,
    geodesic,
    gneiting,
    gp2d,
    latent,
    multiscale,
    sir,
    spatial,
)
from bsatnp.tasks.base import IN_DOMAIN, Task, batch_generator, eval_batches
from bsatnp.tasks.registry import register_task, task_class, task_names

__all__ = ["IN_DOMAIN", "Task", "batch_generator", "eval_batches", "register_task",
           "task_class", "task_names"]
