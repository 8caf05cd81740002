"""An independent float64 reference of the blog's update rules, written from the equations (not from the package).

Each parameter is a float64 tensor; one call of :func:`reference_step` applies one step of a variant given
``lr_t``, the group's initial lr ``alpha`` and ``wd``. Bias-corrected moments as in torch's Adam:
``m_hat = m / (1 - beta1^t)``, ``v_hat = v / (1 - beta2^t)``, ``D = sqrt(v_hat) + eps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class ReferenceState:
    m: torch.Tensor
    v: torch.Tensor
    t: int = 0
    history: list[float] = field(default_factory=list)


def reference_step(
    variant: str,
    w: torch.Tensor,
    g: torch.Tensor,
    state: ReferenceState,
    lr: float,
    alpha: float,
    wd: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Return the new weights after one step of ``variant``; updates ``state`` in place."""
    if variant == "adaml2":
        g = g + wd * w
    state.t += 1
    state.m = beta1 * state.m + (1 - beta1) * g
    state.v = beta2 * state.v + (1 - beta2) * g * g
    m_hat = state.m / (1 - beta1**state.t)
    v_hat = state.v / (1 - beta2**state.t)
    D = torch.sqrt(v_hat) + eps
    eta = lr / alpha
    if variant == "adaml2":
        return w - lr * m_hat / D
    if variant == "adamw":
        return (1 - lr * wd) * w - lr * m_hat / D
    if variant == "adamw-paper":
        return (1 - eta * wd) * w - lr * m_hat / D
    if variant == "proxadam":
        # The blog's (ProxAdam) form: (1 - wd*eta/(1+wd*eta)) w - eta*alpha/(1+wd*eta) m_hat/D
        return (1 - wd * eta / (1 + wd * eta)) * w - eta * alpha / (1 + wd * eta) * m_hat / D
    if variant == "adamp":
        # (Id + eta*wd*alpha*D^-1)^-1 [w - eta*alpha*D^-1 m_hat]
        return (w - eta * alpha * m_hat / D) / (1 + eta * wd * alpha / D)
    raise ValueError(variant)


def warmup_cosine(step: int, warmup: int = 10, total: int = 120, floor: float = 0.05) -> float:
    """A schedule multiplier eta_t: linear warmup then cosine down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
