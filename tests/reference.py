"""An independent float64 reference of the update rules, written from the papers' equations (not from the package).

Each parameter is a float64 tensor; one call of :func:`reference_step` applies one step of an Adam variant given
``lr_t``, the group's initial lr ``alpha`` and ``wd``. Bias-corrected moments as in torch's Adam:
``m_hat = m / (1 - beta1^t)``, ``v_hat = v / (1 - beta2^t)``, ``D = sqrt(v_hat) + eps``.
:func:`reference_sgd_step` does the same for the SGD variants, with torch's SGD momentum (as its documentation
states the algorithm); :func:`reference_sgdw_loshchilov_hutter` is SGDW as Loshchilov & Hutter's Algorithm 1 writes it.
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
    *,
    normalized: bool = True,
    lr_max: float | None = None,
) -> torch.Tensor:
    """Return the new weights after one step of ``variant``; updates ``state`` in place.

    ``normalized`` and ``lr_max`` are AdamC's: whether the parameter belongs to a normalized layer, and the
    schedule's peak lr (None: ``alpha``).
    """
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
    u = m_hat / D
    if variant == "adamc":
        # Defazio et al. 2025, AdamC: AdamW's update theta <- theta - gamma_t (u_t + lambda_t theta) with
        # lambda_t = lambda * gamma_t / gamma_max on normalized layers, lambda_t = lambda elsewhere.
        peak = alpha if lr_max is None else lr_max
        decay = wd * lr / peak if normalized else wd
        return w - lr * (u + decay * w)
    if variant in ("adamw-cautious", "adamw-paper-cautious"):
        # Chen et al. 2025, cautious weight decay: x <- x - eta_t (u_t + lambda 1[u_t x >= 0] x); the paper
        # convention replaces the decay's lr_t by the schedule multiplier eta_t.
        mask = (u * w >= 0).to(w.dtype)
        coefficient = lr * wd if variant == "adamw-cautious" else eta * wd
        return w - lr * u - coefficient * mask * w
    raise ValueError(variant)


@dataclass
class SGDReferenceState:
    b: torch.Tensor | None = None


def reference_sgd_step(
    variant: str,
    w: torch.Tensor,
    g: torch.Tensor,
    state: SGDReferenceState,
    lr: float,
    alpha: float,
    wd: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> torch.Tensor:
    """The new weights after one SGD step of ``variant``; updates ``state`` (the momentum buffer) in place.

    torch's SGD: ``b_1 = g_1``, ``b_t = mu b_{t-1} + (1 - tau) g_t``, ``d = g + mu b`` (Nesterov) or ``b``; ``d = g``
    without momentum. L2 adds ``wd w`` to ``g`` first; the decoupled rules act on the weights at the step.
    """
    if maximize:
        g = -g
    if variant == "sgd-l2":
        g = g + wd * w
    if momentum != 0:
        state.b = g.clone() if state.b is None else momentum * state.b + (1 - dampening) * g
        d = g + momentum * state.b if nesterov else state.b
    else:
        d = g
    eta = lr / alpha
    if variant == "sgd-l2":
        return w - lr * d
    if variant == "sgdw":
        return (1 - lr * wd) * w - lr * d
    if variant == "sgdw-paper":
        return (1 - eta * wd) * w - lr * d
    if variant == "proxsgd":
        # argmin_v wd / (2 alpha) ||v||^2 + ||v - (w - lr d)||^2 / (2 lr)
        return (w - lr * d) / (1 + lr * wd / alpha)
    raise ValueError(variant)


def reference_sgdw_loshchilov_hutter(
    w: torch.Tensor, g: torch.Tensor, state: SGDReferenceState, eta: float, alpha: float, wd: float, momentum: float
) -> torch.Tensor:
    """Loshchilov & Hutter's Algorithm 1 (SGDW): ``m_t = beta1 m_{t-1} + eta_t alpha g_t``,
    ``theta_t = theta_{t-1} - m_t - eta_t lambda theta_{t-1}`` (``m_0 = 0``)."""
    m = torch.zeros_like(w) if state.b is None else state.b
    state.b = momentum * m + eta * alpha * g
    return w - state.b - eta * wd * w


def warmup_cosine(step: int, warmup: int = 10, total: int = 120, floor: float = 0.05) -> float:
    """A schedule multiplier eta_t: linear warmup then cosine down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class MuonReferenceState:
    buffer: torch.Tensor | None = None


def reference_muon_step(
    variant: str,
    w: torch.Tensor,
    g: torch.Tensor,
    state: MuonReferenceState,
    lr: float,
    alpha: float,
    wd: float,
    momentum: float = 0.95,
    nesterov: bool = True,
    *,
    orthogonalize,
    lr_max: float | None = None,
) -> torch.Tensor:
    """One Muon step of ``variant`` on the matrix ``w`` (m x n), from Jordan et al.'s algorithm as torch documents it:
    ``b <- mu b + (1 - mu) g``; ``d = (1 - mu) g + mu b`` (Nesterov) or ``b``; ``O = orthogonalize(d)``; the update
    ``lr_t * sqrt(max(1, m / n)) * O``. ``orthogonalize`` is given (torch's Newton-Schulz iteration runs in bfloat16;
    the tests pass it so that everything else here is float64). The decay, ``eta_t = lr_t / alpha``:

    * ``muon``: ``w <- (1 - lr_t wd) w - update``;  ``muon-paper``: ``w <- (1 - eta_t wd) w - update``
    * ``proxmuon``: ``w <- (w - update) / (1 + eta_t wd)``;  ``muonc``: ``w <- (1 - lr_t^2 / lr_max wd) w - update``
    * ``muon-cautious``: ``w <- w - update - lr_t wd 1[O w >= 0] w``
    """
    state.buffer = (torch.zeros_like(g) if state.buffer is None else state.buffer).lerp(g, 1 - momentum)
    direction = g.lerp(state.buffer, momentum) if nesterov else state.buffer
    orthogonal = orthogonalize(direction).to(w.dtype)
    rows, columns = w.shape
    update = lr * math.sqrt(max(1.0, rows / columns)) * orthogonal
    eta = lr / alpha
    if variant == "muon":
        return (1 - lr * wd) * w - update
    if variant == "muon-paper":
        return (1 - eta * wd) * w - update
    if variant == "proxmuon":
        return (w - update) / (1 + eta * wd)
    if variant == "muonc":
        return (1 - lr * lr / (alpha if lr_max is None else lr_max) * wd) * w - update
    if variant == "muon-cautious":
        return w - update - lr * wd * (orthogonal * w >= 0).to(w.dtype) * w
    raise ValueError(variant)
