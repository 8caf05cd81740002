"""Scale-freeness, measured: how the loss responds to scaling one layer's weights (:func:`scale_check`), and how an
optimizer's trajectory responds to scaling the loss (:func:`check_scale_freeness`, the blog's test).

Nothing here imports Lightning; :class:`~lightning_decay.callbacks.ScaleInvarianceMonitor` runs :func:`scale_check`
periodically during training.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_decay.diagnostics.names import clean_parameter_name
from lightning_decay.validation import check_int, check_nonnegative, check_positive

__all__ = ["scale_check", "ScaleFreenessReport", "check_scale_freeness"]

_TINY = 1e-30


@torch.no_grad()
def scale_check(
    module: nn.Module,
    params: Sequence[Tensor],
    loss_fn: Callable[[Any, Any], Tensor],
    batch: Any,
    scale: float = 2.0,
    seed: int = 0,
) -> Tensor:
    """``|L(c w_l) - L(w)| / |L(w)|`` for each parameter ``w_l`` of ``params`` scaled alone by ``c = scale``.

    The loss is ``loss_fn(module, batch)`` in the module's current mode with the RNG seeded identically for every
    evaluation; parameters and buffers (e.g. BatchNorm running statistics) are restored exactly afterwards.
    Zero for a layer the loss is scale-invariant in (``L(c w) = L(w)``, e.g. a Linear followed by a normalization).
    """
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []

    def loss() -> Tensor:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            value = loss_fn(module, batch)
        return value.detach().float().reshape(())

    try:
        base = loss()
        losses = []
        for param in params:
            saved = param.detach().clone()
            param.mul_(scale)
            try:
                losses.append(loss())
            finally:
                param.copy_(saved)
    finally:
        for buffer, saved_buffer in buffers:
            buffer.copy_(saved_buffer)
    if not losses:
        return torch.zeros(0)
    return ((torch.stack(losses) - base).abs() / base.abs().clamp_min(_TINY)).cpu()


@dataclass
class ScaleFreenessReport:
    """How far the trajectories on ``loss`` and on ``scale * loss`` drifted apart.

    ``difference[t]`` = ``|theta_t - theta'_t| / |theta_t - theta_0|`` after step t+1 (all parameters together,
    relative to how far the unscaled run moved); ``relative_to_weights[t]`` = ``|theta_t - theta'_t| / |theta_t|``;
    ``per_layer`` the final ``difference`` per parameter. ``scale_free`` is ``max(difference) <= tolerance``.
    """

    scale: float
    steps: int
    tolerance: float
    difference: list[float] = field(default_factory=list)
    relative_to_weights: list[float] = field(default_factory=list)
    per_layer: dict[str, float] = field(default_factory=dict)

    @property
    def max_difference(self) -> float:
        """``max_t difference[t]`` (0 before any step)."""
        return max(self.difference, default=0.0)

    @property
    def scale_free(self) -> bool:
        """``max_difference <= tolerance``."""
        return self.max_difference <= self.tolerance

    def __str__(self) -> str:
        verdict = "scale-free" if self.scale_free else "NOT scale-free"
        return (
            f"{verdict}: loss x {self.scale:g}, {self.steps} steps, max trajectory difference "
            f"{self.max_difference:.3g} of the distance moved (tolerance {self.tolerance:g})"
        )


def check_scale_freeness(
    model: nn.Module,
    make_optimizer: Callable[[nn.Module], Optimizer],
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Sequence[Any],
    *,
    scale: float = 1024.0,
    steps: int = 5,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> ScaleFreenessReport:
    """The blog's scale-freeness test: train two copies of ``model`` for ``steps`` steps, one on
    ``loss_fn(model, batch)`` and one on ``scale * loss_fn(model, batch)``, and compare the weights.

    A scale-free method (Adam, AdamW, ProxAdam with ``eps -> 0``) gives the same trajectory; AdamL2 and AdamP do
    not (their decay does not scale with the loss). ``make_optimizer(model)`` builds a fresh optimizer (any param
    groups); ``batches`` are cycled. The default scale is a power of two so that scaling is exact in floating
    point and only the method (and ``eps``) can make the runs differ. ``model`` itself is not modified.
    """
    steps = check_int("steps", steps, low=1)
    scale = check_positive("scale", scale)
    tolerance = check_nonnegative("tolerance", tolerance)
    if not batches:
        raise ValueError("batches is empty")
    runs = []
    for factor in (1.0, scale):
        copy_ = copy.deepcopy(model)
        copy_.train(model.training)
        runs.append((copy_, make_optimizer(copy_), factor))
    names = [clean_parameter_name(n) for n, p in model.named_parameters() if p.requires_grad]
    start = [p.detach().clone() for p in runs[0][0].parameters() if p.requires_grad]
    report = ScaleFreenessReport(scale=scale, steps=steps, tolerance=tolerance)
    for step in range(steps):
        batch = batches[step % len(batches)]
        for run_model, optimizer, factor in runs:
            optimizer.zero_grad(set_to_none=True)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + step)
                loss = loss_fn(run_model, batch) * factor
            loss.backward()
            optimizer.step()
        first = [p.detach() for p in runs[0][0].parameters() if p.requires_grad]
        second = [p.detach() for p in runs[1][0].parameters() if p.requires_grad]
        gap = torch.stack(torch._foreach_norm(torch._foreach_sub(first, second), 2, dtype=torch.float64))
        moved = torch.stack(torch._foreach_norm(torch._foreach_sub(first, start), 2, dtype=torch.float64))
        size = torch.stack(torch._foreach_norm(first, 2, dtype=torch.float64))
        total_gap = gap.square().sum().sqrt()
        report.difference.append(float(total_gap / moved.square().sum().sqrt().clamp_min(_TINY)))
        report.relative_to_weights.append(float(total_gap / size.square().sum().sqrt().clamp_min(_TINY)))
        if step == steps - 1:
            report.per_layer = dict(zip(names, (gap / moved.clamp_min(_TINY)).tolist()))
    return report
