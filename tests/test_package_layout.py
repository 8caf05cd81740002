"""The package's shape: no import cycles, dependencies that run one way between subpackages, every module importable
on its own in any order, and no module much over 500 lines.

The import graph is read from the source (every ``import`` statement, at module level or inside a function), so a
cycle hidden behind a function-level import is a cycle too.
"""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "lightning_decay"

#: Each part's layer: a module may import its own part and parts of a lower layer only
#: (optimizers <- Lightning integration <- diagnostics <- callbacks / experiments <- sweep / CLI).
LAYERS = {
    "validation": 0,
    "optim": 1,
    "integration": 2,
    "diagnostics": 3,
    "callbacks": 4,
    "experiments": 4,
    "cli": 5,
    "sweep": 6,
    "dashboard": 7,  # W&B workspace and sweep report: reads callbacks/diagnostics/sweep, the command dispatches to it
    "command": 8,
    "__main__": 9,
    "__init__": 10,  # the top-level re-exports
}
MAX_LINES = 550


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package's modules ``path`` imports (``from a.b import c`` counts ``a.b.c`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported_modules(path, known) - {name} for name, path in found.items()}


def part_of(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_dependencies_run_one_way_between_parts() -> None:
    wrong = []
    for module, targets in import_graph().items():
        for target in targets:
            source_part, target_part = part_of(module), part_of(target)
            assert source_part in LAYERS and target_part in LAYERS, f"{module} or {target}: add its part to LAYERS"
            if source_part != target_part and LAYERS[target_part] >= LAYERS[source_part]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_module_is_much_over_500_lines() -> None:
    long = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert not {name: lines for name, lines in long.items() if lines > MAX_LINES}


@pytest.mark.parametrize("seed", [0, 1])
def test_every_module_imports_on_its_own_in_any_order(seed: int) -> None:
    """In one fresh interpreter, each module is imported after every module of the package was dropped from
    ``sys.modules`` (torch and Lightning stay loaded), in a shuffled order."""
    names = [name for name in modules() if not name.endswith("__main__")]
    random.Random(seed).shuffle(names)
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'lightning_decay' or m.startswith('lightning_decay.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        f"print('imported', {len(names)})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported {len(names)}" in result.stdout
