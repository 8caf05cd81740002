"""How the monitors name parameters and param groups in their keys (``<layer>`` and ``<group>``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from torch.optim import Optimizer

from lightning_decay.integration.parameter_names import clean_parameter_name

__all__ = ["clean_parameter_name", "param_group_names"]

def param_group_names(optimizers: Sequence[Optimizer]) -> list[list[str]]:
    """Names of every param group, matching Lightning's ``LearningRateMonitor``.

    A group's ``"name"`` key, else ``pg<i>`` (1-based), as ``LearningRateMonitor`` names them after ``lr-<Opt>/``.
    With several optimizers the name is prefixed by the optimizer's class, numbered like ``LearningRateMonitor``
    does (``Adam/pg1``, ``Adam-1/pg1``, ...). Unlike ``LearningRateMonitor``, a single unnamed group is still
    ``pg1`` (every key needs a group part) and scheduler-config names are not used.
    """
    seen: defaultdict[type, int] = defaultdict(int)
    names = []
    for optimizer in optimizers:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # LightningOptimizer / DeepSpeed wrappers
        groups = [group.get("name") or f"pg{index + 1}" for index, group in enumerate(optimizer.param_groups)]
        if len(optimizers) > 1:
            seen[type(optimizer)] += 1
            count = seen[type(optimizer)]
            prefix = type(optimizer).__name__ + (f"-{count - 1}" if count > 1 else "")
            groups = [f"{prefix}/{group}" for group in groups]
        names.append(groups)
    return names
