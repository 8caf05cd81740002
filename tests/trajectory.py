"""The float64 trajectory problem the optimizer tests share: several parameter groups (``groups``: dicts with
``shapes``, ``lr``, ``weight_decay``), deterministic gradients that depend on the weights and the step, and an
optional warmup+cosine ``LambdaLR``. The optimizer under test and the reference step (``tests/reference.py``) run
the same problem; the tests compare the weights they reach.

With ``complex_params``, every tensor whose last dimension is 2 becomes a complex parameter (``torch.view_as_complex``),
its gradient the complex view of the real pair's: the optimizer must follow the real problem's trajectory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from tests.reference import warmup_cosine

Groups = Sequence[dict[str, Any]]
Weights = list[list[Tensor]]


def gradient(w: Tensor, step: int, index: int, scale: float = 1.0) -> Tensor:
    """A deterministic gradient that depends on the weights (curvature) and on the step (noise)."""
    generator = torch.Generator().manual_seed(1000 * step + index)
    noise = torch.randn(w.shape, generator=generator, dtype=torch.float64)
    return scale * (0.7 * (w - 0.3) + 0.2 * torch.sin(3 * w) + noise)


def initial_weights(groups: Groups) -> Weights:
    generator = torch.Generator().manual_seed(0)
    return [[torch.randn(s, generator=generator, dtype=torch.float64) for s in g["shapes"]] for g in groups]


def max_relative_error(actual: Weights, expected: Weights) -> float:
    worst = 0.0
    for group_a, group_e in zip(actual, expected):
        for a, e in zip(group_a, group_e):
            worst = max(worst, ((a - e).abs() / e.abs().clamp_min(1e-3)).max().item())
    return worst


def as_complex_pair(w: Tensor) -> bool:
    """True for a tensor that :func:`run_optimizer` turns into a complex parameter (last dimension 2)."""
    return w.dim() > 0 and w.shape[-1] == 2


def real_view(p: Tensor) -> Tensor:
    """A parameter as the real tensor the reference steps: the real pair of a complex one."""
    return torch.view_as_real(p.detach()) if p.is_complex() else p.detach()


def run_optimizer(
    make: Callable[[Weights], torch.optim.Optimizer],
    groups: Groups,
    scheduled: bool,
    steps: int,
    scale: float = 1.0,
    complex_params: bool = False,
) -> tuple[Weights, torch.optim.Optimizer]:
    """``steps`` steps of ``make(params)`` (params: one list of tensors per group) on the problem; the weights
    come back real (a complex parameter as its real pair)."""
    params = [
        [torch.view_as_complex(w.clone()) if complex_params and as_complex_pair(w) else w.clone() for w in group]
        for group in initial_weights(groups)
    ]
    for group in params:
        for p in group:
            p.requires_grad_(True)
    optimizer = make(params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine) if scheduled else None
    for step in range(steps):
        for group_index, group in enumerate(params):
            for param_index, p in enumerate(group):
                grad = gradient(real_view(p), step, 10 * group_index + param_index, scale)
                p.grad = torch.view_as_complex(grad) if p.is_complex() else grad
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return [[real_view(p) for p in group] for group in params], optimizer


def run_reference(
    new_state: Callable[[Tensor], Any],
    reference_step: Callable[[Tensor, Tensor, Any, float, float, int], Tensor],
    groups: Groups,
    scheduled: bool,
    steps: int,
    scale: float = 1.0,
) -> Weights:
    """The same problem stepped by ``reference_step(w, g, state, lr_t, alpha, group_index) -> new w``, with one
    ``new_state(w)`` per tensor, ``alpha`` the group's lr and ``lr_t = alpha * eta_t``."""
    weights = initial_weights(groups)
    states = [[new_state(w) for w in group] for group in weights]
    for step in range(steps):
        eta = warmup_cosine(step) if scheduled else 1.0
        for group_index, (group, config) in enumerate(zip(weights, groups)):
            alpha = config["lr"]
            for param_index, w in enumerate(group):
                g = gradient(w, step, 10 * group_index + param_index, scale)
                group[param_index] = reference_step(
                    w, g, states[group_index][param_index], alpha * eta, alpha, group_index
                )
    return weights
