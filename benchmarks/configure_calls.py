"""What configuring one model costs in checks, registry lookups and moves between modules (issue 26).

    python benchmarks/configure_calls.py

Builds a small AdamW model with ``DecaySettings`` and runs ``configure_optimizers`` (the mixin's resolve -> plan
-> build), counting with ``sys.setprofile``:

* validator calls: every call into ``lightning_decay/validation.py`` from outside it, settings included;
* registry lookups: ``get_variant``, ``resolve_variant``, ``rule_of``, ``record_of_class``, ``decay_rule_of``;
* module crossings on the settings' path from ``configure_decay_optimizers``: the pairs of package modules one
  calls into the other, and how many of them climb up (into a module that imports the caller's, directly or not:
  a callback from a lower layer into a higher one).

Goals (issue 26): at most 3 lookups and 50 validator calls; at most 12 crossings, 3 of them up (the settings'
path through ``lightning_decay.integration``; the count with the optimizer's own construction is printed too).
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.pytorch import LightningModule
from torch import nn
from validation_calls import count_calls

import lightning_decay
from lightning_decay import DecayMixin, DecaySettings

PACKAGE = Path(lightning_decay.__file__).parent


class MLP(DecayMixin, LightningModule):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def configure() -> None:
    model = MLP(decay=DecaySettings(optimizer="adamw", weight_decay=0.05, total_steps=100))
    model.configure_optimizers()


def module_of(path: str) -> str | None:
    file = Path(path)
    if PACKAGE not in file.parents:
        return None
    return ".".join(("lightning_decay", *file.relative_to(PACKAGE).with_suffix("").parts))


def imports() -> dict[str, set[str]]:
    """Each package module's imports of other package modules (also inside functions), transitively closed."""
    direct: dict[str, set[str]] = {}
    for file in PACKAGE.rglob("*.py"):
        name = module_of(str(file))
        assert name is not None
        found = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_decay"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("lightning_decay"))
        direct[name.removesuffix(".__init__")] = found
    closed: dict[str, set[str]] = {}

    def close(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        if name in closed:
            return closed[name]
        result = set()
        for other in direct.get(name, ()):
            if other not in seen:
                result |= {other} | close(other, seen | {name})
        closed[name] = result
        return result

    for name in direct:
        close(name)
    return closed


def crossings() -> tuple[int, int, Counter[str], list[str]]:
    """(distinct crossings, distinct climbs up, the calls by caller -> callee, the climbs) from
    ``configure_decay_optimizers``: a crossing is a pair of package modules one calls into the other."""
    closure = imports()
    moves: Counter[str] = Counter()
    active = [False]

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        if frame.f_code.co_name == "configure_decay_optimizers":
            active[0] = True
        if not active[0] or frame.f_back is None:
            return
        callee, caller = module_of(frame.f_code.co_filename), module_of(frame.f_back.f_code.co_filename)
        if callee and caller and callee != caller:
            moves[f"{caller} -> {callee}"] += 1

    model = MLP(decay=DecaySettings(optimizer="adamw", weight_decay=0.05, total_steps=100))
    sys.setprofile(profile)
    try:
        model.configure_optimizers()
    finally:
        sys.setprofile(None)
    up = [move for move in moves if move.split(" -> ")[0] in closure.get(move.split(" -> ")[1], set())]
    return len(moves), len(up), moves, up


def main() -> None:
    configure()  # imports and first-call caches out of the count
    validators, lookups = count_calls(configure)
    total, up, moves, climbs = crossings()
    print(f"configure one AdamW model: {sum(validators.values())} validator calls (goal <= 50), "
          f"{sum(lookups.values())} registry lookups (goal <= 3)")
    print(f"  validators: {dict(validators.most_common())}")
    print(f"  lookups: {dict(lookups.most_common())}")
    inside = [move for move in moves if all(m.startswith("lightning_decay.integration") for m in move.split(" -> "))]
    print(f"settings' path from configure_decay_optimizers through lightning_decay.integration: {len(inside)} module "
          f"crossings (goal <= 12), {len([move for move in inside if move in climbs])} up (goal <= 3)")
    print(f"  with the optimizer's own construction and checks (optim/, validation): {total} crossings, {up} up; "
          f"{sum(moves.values())} calls across modules")
    for move, count in sorted(moves.items()):
        print(f"  {count:3d}  {move}{'  (up)' if move in climbs else ''}")


if __name__ == "__main__":
    main()
