"""The floors of docs/design.md, checked on the import graph of src/bsatnp.

Every import counts (module level or deferred inside a function), except those under
``if TYPE_CHECKING:``, which run for type checkers only. ``from package import module``
depends on that module, not on the package's ``__init__``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src"

FLOORS: dict[str, int] = {
    # 0, the basement: plain records and helpers every floor may use
    "bsatnp": 0, "bsatnp.batch": 0, "bsatnp.config": 0, "bsatnp.geometry": 0,
    "bsatnp.likelihoods": 0,
    "bsatnp.progress": 0, "bsatnp.text": 0, "bsatnp.precision": 0, "bsatnp.io": 0,
    "bsatnp.io.files": 0,
    # 1: biased attention
    "bsatnp.attention": 1,
    # 2: the model zoo and the tasks, side by side
    "bsatnp.models": 2, "bsatnp.tasks": 2,
    # 3: what trains, scores, stores and reads data, over models and tasks
    "bsatnp.loss": 3, "bsatnp.metrics": 3, "bsatnp.io.checkpoint": 3,
    "bsatnp.io.reference_weights": 3, "bsatnp.train": 3, "bsatnp.data": 3,
    "bsatnp.baselines": 3, "bsatnp.pretrained": 3,
    # 4, the top floor: the experiment layer and the user's API and command
    "bsatnp.evaluate": 4, "bsatnp.score_cache": 4, "bsatnp.reports": 4,
    "bsatnp.experiment": 4, "bsatnp.experiment_trainer": 4, "bsatnp.plot": 4,
    "bsatnp.predict": 4,
    "bsatnp.options": 4, "bsatnp.outputs": 4, "bsatnp.conditioned": 4,
    "bsatnp.locally_conditioned": 4, "bsatnp.model_schema": 4, "bsatnp.predictor": 4,
    "bsatnp.finetune": 4, "bsatnp.holdout": 4, "bsatnp.joint": 4, "bsatnp.joint_data": 4,
    "bsatnp.estimator": 4,
    "bsatnp.cli": 4, "bsatnp.cli_args": 4, "bsatnp.cli_data": 4, "bsatnp.__main__": 4,
}
"""Each module's floor, by its longest listed prefix."""

NEVER: dict[str, tuple[str, ...]] = {
    "bsatnp.tasks": ("bsatnp.models",),
    "bsatnp.models": ("bsatnp.tasks",),
    "bsatnp.train": ("bsatnp.models", "bsatnp.tasks", "bsatnp.data", "bsatnp.baselines"),
    "bsatnp.data": ("bsatnp.models", "bsatnp.train", "bsatnp.baselines", "bsatnp.io.checkpoint"),
    # the own-data road never reaches into the experiment layer or the command
    **{own: ("bsatnp.experiment", "bsatnp.experiment_trainer", "bsatnp.cli", "bsatnp.plot",
             "bsatnp.predict")
       for own in ("bsatnp.options", "bsatnp.outputs", "bsatnp.conditioned",
                   "bsatnp.locally_conditioned", "bsatnp.model_schema", "bsatnp.predictor",
                   "bsatnp.finetune", "bsatnp.holdout", "bsatnp.joint", "bsatnp.joint_data",
                   "bsatnp.estimator")},
}
"""Sideways or downward imports that are still not allowed, by importer prefix."""


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_name(path): path for path in (ROOT / "bsatnp").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(block.test)
                       for statement in block.body for node in ast.walk(statement)}
        found: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: relative import (the package uses absolute)"
                base = node.module or ""
                submodules = {f"{base}.{a.name}" for a in node.names
                              if f"{base}.{a.name}" in modules}
                found |= submodules
                if len(submodules) < len(node.names) and base in modules:
                    found.add(base)
        graph[name] = found - {name}
    return graph


def _floor(module: str) -> int:
    prefixes = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    if not prefixes:
        raise AssertionError(f"{module} has no floor in FLOORS: add it (and to docs/design.md)")
    return FLOORS[max(prefixes, key=len)]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


GRAPH = _graph()


def test_every_module_has_a_floor():
    for module in GRAPH:
        _floor(module)


def test_nothing_imports_upward():
    upward = [f"{a} (floor {_floor(a)}) imports {b} (floor {_floor(b)})"
              for a, targets in GRAPH.items() for b in targets if _floor(b) > _floor(a)]
    assert not upward, "\n".join(upward)


def test_forbidden_sideways_imports():
    bad = [f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
           for importer, banned in NEVER.items() if _within(a, importer)
           for prefix in banned if _within(b, prefix)]
    assert not bad, "\n".join(bad)


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("rule", [
    ("tasks/ and data/ never load attention kernels or models",
     "import bsatnp.tasks, bsatnp.data.neighbours, bsatnp.data.table_task",
     ("bsatnp.attention", "bsatnp.models")),
    ("the own-data path never loads the experiment layer",
     "import bsatnp; bsatnp.Predictor.from_pretrained('gp2d')",
     ("bsatnp.experiment", "bsatnp.cli", "bsatnp.plot", "bsatnp.train")),
])
def test_what_an_import_loads(rule):
    _, code, banned = rule
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}; print('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert not [m for m in loaded if any(_within(m, prefix) for prefix in banned)]


def test_the_checker_finds_a_cycle_and_an_upward_import():
    """The rules can fail: a fake upward edge and a fake cycle are caught."""
    GRAPH["bsatnp.batch"].add("bsatnp.cli")
    try:
        with pytest.raises(AssertionError, match="imports bsatnp.cli"):
            test_nothing_imports_upward()
        with pytest.raises(AssertionError, match="import cycle"):
            test_the_import_graph_has_no_cycle()
    finally:
        GRAPH["bsatnp.batch"].discard("bsatnp.cli")
