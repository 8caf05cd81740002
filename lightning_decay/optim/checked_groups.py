"""What a param group held when an optimizer last checked it: the record that lets a step check only what changed.

A step (:meth:`~lightning_decay.optim.base.DecayOptimizer._check_changed_groups`) compares each group with its
record: nothing changed (every value the same object, no tensor updated in place) costs one tuple and one
identity comparison; a new lr or weight decay (a scheduler's) has only those and the rule's limits checked; any other
change has the whole group checked again. The record also holds the kernel settings computed since, so that an
unchanged group's ``(lr', wd')`` are not recomputed.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Set
from typing import Any

from torch import Tensor

from lightning_decay.optim.rules import DecayRule, KernelSettings

__all__ = ["CheckedGroup", "DECAY_KEYS", "LR_AT_CONSTRUCTION"]

#: Group key holding the lr a group was built with: the blog's alpha when no scheduler set ``initial_lr``.
LR_AT_CONSTRUCTION = "lr_at_construction"


class CheckedGroup:
    """What a group held when it was last checked (its keys, the objects they held, the version counters of its
    tensors, also inside tuples and lists), and the kernel settings computed from it since."""

    __slots__ = ("group", "keys", "values", "lr_index", "tensors", "kernel_settings", "kernel_values", "rule",
                 "check_domain", "initial_lr")

    def __init__(self, group: dict[str, Any], rule: DecayRule, check_domain: Callable[[Any, float, float], None],
                 initial_lr: float) -> None:
        self.group = group  # held, so that its id is not reused while the entry lives
        self.keys = tuple(group)
        self.values = tuple(group.values())
        self.lr_index = self.keys.index("lr")
        self.tensors = _tensors_of(group)
        self.kernel_settings: KernelSettings | None = None
        self.kernel_values: tuple[Any, Any] | None = None
        #: The rule the group follows and its limits, ``(lr, alpha, weight_decay) -> None`` (the rule is decided by
        #: keys whose change has the group checked whole), and alpha (a decay key: see :meth:`refresh`).
        self.rule = rule
        self.check_domain = check_domain
        self.initial_lr = initial_lr

    def refresh(self, group: dict[str, Any], values: tuple[Any, ...], changed: Set[str], initial_lr: float) -> None:
        """Take up a checked change of the decay keys ``changed`` (same keys; the kernel settings are recomputed)."""
        self.values = values
        self.initial_lr = initial_lr
        if self.tensors or any(isinstance(group[key], Tensor) for key in changed):
            self.tensors = _tensors_of(group)
        self.kernel_settings = self.kernel_values = None

    def changed_keys(self, group: dict[str, Any], values: tuple[Any, ...], moved: set[str]) -> Set[str] | None:
        """The keys set to another object (``values`` now), with ``moved`` (tensors updated in place) when they are
        all decay keys (empty: nothing changed); None for any other change (keys added or removed, another setting,
        an lr that became a tensor or stopped being one: then the whole group is checked again)."""
        keys = tuple(group)
        if keys != self.keys:
            return None
        changed = set(itertools.compress(keys, map(operator.is_not, values, self.values)))
        changed |= moved
        if not changed <= DECAY_KEYS:
            return None
        if "lr" in changed and isinstance(group["lr"], Tensor) != isinstance(self.values[keys.index("lr")], Tensor):
            return None
        return changed


#: The group keys of the decay: the lr and weight decay a scheduler or a user sets, and alpha.
DECAY_KEYS = frozenset({"lr", "weight_decay", "initial_lr", LR_AT_CONSTRUCTION})


def _tensors_of(group: dict[str, Any]) -> tuple[tuple[str, Tensor, int], ...]:
    """``(key, tensor, version counter)`` of every tensor a group setting holds (also inside a tuple or list)."""
    return tuple(
        (key, tensor, tensor._version) for key, value in group.items() if key != "params"
        for tensor in (value if isinstance(value, (tuple, list)) else (value,)) if isinstance(tensor, Tensor)
    )
