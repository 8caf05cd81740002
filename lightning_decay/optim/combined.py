"""Several optimizers over disjoint parameters, stepped as one optimizer (Muon for the matrices, Adam for the rest).

Lightning, torch's LR schedulers, ``LearningRateMonitor``, gradient clipping, ``GradScaler`` and checkpoints see one
:class:`~torch.optim.Optimizer` whose ``param_groups`` are its parts' groups (the same dicts, in order) and whose
``state`` is one dict the parts share. A step runs every part's checks first, then every part's step: a refused
setting stops the step before any weight moves. ``rule_for(group)`` and the other per-group questions of
:class:`~lightning_decay.optim.base.DecayOptimizer` are answered by the part that owns the group, so the monitors
see each group's own rule.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_decay.optim.base import DecayOptimizer, as_number
from lightning_decay.optim.rules import DecayRule

__all__ = ["CombinedOptimizer"]


class CombinedOptimizer(Optimizer):
    """``parts`` (optimizers over disjoint parameters) as one optimizer: ``step`` steps each part once.

    ``param_groups`` is the concatenation of the parts' groups and ``state`` one dict shared by all parts;
    ``state_dict`` holds both, and ``load_state_dict`` hands each part its own share (so a part with its own loading
    logic, e.g. a quantized state, keeps it).
    """

    def __init__(self, parts: Sequence[Optimizer]) -> None:
        parts = list(parts)
        if not parts:
            raise ValueError("parts is empty: CombinedOptimizer needs at least one optimizer")
        for index, part in enumerate(parts):
            if not isinstance(part, Optimizer) or isinstance(part, CombinedOptimizer):
                raise TypeError(f"parts[{index}] must be a torch Optimizer (not combined), got {type(part).__name__}")
        self.parts = parts
        seen: dict[int, int] = {}
        for index, part in enumerate(parts):
            for group in part.param_groups:
                for param in group["params"]:
                    if id(param) in seen:
                        raise ValueError(
                            f"a parameter of shape {tuple(param.shape)} is in parts[{seen[id(param)]}] and "
                            f"parts[{index}]: each parameter must belong to one part"
                        )
                    seen[id(param)] = index
        groups = [group for part in parts for group in part.param_groups]
        super().__init__(groups, defaults={})
        self._link()

    def _link(self) -> None:
        """Make the parts' groups this optimizer's groups and every part's state this optimizer's state."""
        for part in self.parts:
            for param, value in part.state.items():
                self.state[param] = value
        for part in self.parts:
            part.state = self.state
        self.param_groups = [group for part in self.parts for group in part.param_groups]

    def __repr__(self) -> str:
        inner = ",\n".join(f"  {type(part).__name__}: {len(part.param_groups)} groups" for part in self.parts)
        return f"{type(self).__name__}(\n{inner}\n)"

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["parts"] = self.parts
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "parts" in state:
            self._link()

    # -- per group: the owning part answers --------------------------------------------------------------------
    def part_of(self, group: dict[str, Any]) -> Optimizer:
        """The part that owns ``group`` (ValueError for a group of no part)."""
        for part in self.parts:
            if any(own is group for own in part.param_groups):
                return part
        raise ValueError("this param group belongs to no part of the CombinedOptimizer")

    @property
    def decay_rule(self) -> DecayRule | None:
        """The first part's rule (each group's own rule: :meth:`rule_for`)."""
        from lightning_decay.optim.registry import rule_of

        return rule_of(self.parts[0])

    def rule_for(self, group: dict[str, Any]) -> DecayRule | None:
        """The rule the part owning ``group`` applies to it."""
        from lightning_decay.optim.registry import rule_of

        return rule_of(self.part_of(group), group)

    def initial_lr(self, group: dict[str, Any]) -> float:
        """The blog's alpha of ``group``, from its part (a scheduler's ``initial_lr`` for a part without one)."""
        part = self.part_of(group)
        if isinstance(part, DecayOptimizer):
            return part.initial_lr(group)
        return float(as_number(group.get("initial_lr", group["lr"])))

    def schedule_multiplier(self, group: dict[str, Any]) -> float:
        """``eta_t = lr_t / alpha`` of ``group``."""
        alpha = self.initial_lr(group)
        return float(as_number(group["lr"])) / alpha if alpha > 0 else 1.0

    def decay_factor(self, group: dict[str, Any], denominator: Tensor | None = None) -> float | Tensor:
        """This step's decay factor of ``group``, from its part (its rule otherwise)."""
        part = self.part_of(group)
        if isinstance(part, DecayOptimizer):
            return part.decay_factor(group, denominator)
        rule = self.rule_for(group)
        if rule is None:
            raise ValueError(f"{type(part).__name__} has no decay rule: no decay factor")
        return rule.decay_factor(as_number(group["lr"]), self.initial_lr(group), group["weight_decay"], denominator)

    # -- the step and checkpoints --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run the closure once, check every part's groups, then step each part."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts:
            if isinstance(part, DecayOptimizer):
                part._check_changed_groups()  # the part's own step then finds nothing changed
        for part in self.parts:
            part.step()
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        own = hasattr(self, "parts") and any(param_group is g for part in self.parts for g in part.param_groups)
        if not hasattr(self, "parts") or own:
            super().add_param_group(param_group)  # construction: the parts' own groups
            return
        raise TypeError(
            "CombinedOptimizer.add_param_group: add the group to the part that should step it "
            "(optimizer.parts[i].add_param_group(group)), then call optimizer.relink()"
        )

    def relink(self) -> None:
        """Take up groups added to a part after construction."""
        self._link()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Split ``state_dict`` by part (groups in order, parameters re-indexed) and load each part's share."""
        groups = state_dict["param_groups"]
        expected = [len(part.param_groups) for part in self.parts]
        if len(groups) != sum(expected):
            raise ValueError(
                f"loaded state dict has {len(groups)} parameter groups; this CombinedOptimizer has {sum(expected)} "
                f"({' + '.join(map(str, expected))} in its parts)"
            )
        start = 0
        for part, count in zip(self.parts, expected):
            share = groups[start : start + count]
            start += count
            indices = [index for group in share for index in group["params"]]
            renumber = {old: new for new, old in enumerate(indices)}
            part_groups = [dict(group, params=[renumber[index] for index in group["params"]]) for group in share]
            part_state = {renumber[index]: value for index, value in state_dict["state"].items() if index in renumber}
            part.load_state_dict({"state": part_state, "param_groups": part_groups})
        self.state = defaultdict(dict)
        self._link()
