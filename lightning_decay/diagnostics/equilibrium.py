"""The rotation of a weight per step and its rotational equilibrium (Kosson et al. 2024), as plain math.

A decoupled rule steps ``w <- f w - lr' u`` (``f`` the decay factor and ``lr'`` the lr of the rule's kernel
settings, ``u`` the Adam direction). For a scale-invariant weight of ``C`` elements in the random-walk regime the
norm and the angle per step settle at

    |w|* = lr' sqrt(C / (1 - f^2)),    theta* = atan(sqrt(k (1 - f^2)) / f),    k = (1 - beta1) / (1 + beta1),

which for torch-convention AdamW are ``sqrt(lr C / (2 wd))`` and ``sqrt(2 lr wd k)`` to first order in ``lr wd``.
Muon steps ``w <- f w - adjust(lr', shape) O`` with ``O`` the orthogonalized momentum, whose norm the matrix shape
fixes (``|O|^2 = q r``, ``r = min(m, n)``): there ``|w|*`` and ``theta*`` follow from the variance of one step and of
the decayed sum of all steps of Muon's momentum (:func:`muon_equilibrium`). Derivations: ``docs/monitoring.md``.
Nothing here imports Lightning; :class:`~lightning_decay.callbacks.ScaleInvarianceMonitor` logs these numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_decay.diagnostics.decay import initial_lr
from lightning_decay.optim.registry import rule_of
from lightning_decay.optim.rules import CautiousRule, KernelDecayRule

__all__ = [
    "momentum_factor",
    "muon_step_variance",
    "orthogonalized_squared_norm",
    "muon_equilibrium",
    "is_muon_group",
    "equilibrium_of_step",
    "EquilibriumPrediction",
    "rotational_equilibrium",
    "equilibrium_not_derived",
    "angular_update",
    "effective_lr",
]

_TINY = 1e-30


def momentum_factor(beta1: float) -> float:
    """``k = (1 - beta1) / (1 + beta1)``: the variance of an EMA (coefficient ``beta1``) of i.i.d. unit-variance
    inputs, so one Adam step has ``E|u|^2 = k C``."""
    return (1.0 - beta1) / (1.0 + beta1)


def equilibrium_of_step(factor: float, lr: float, beta1: float, numel: int) -> tuple[float, float]:
    """``(theta*, |w|*)`` for the step ``w <- f w - lr' u`` with ``f = factor``, ``lr' = lr``: ``theta* =
    atan(sqrt(k (1 - f^2)) / f)`` rad per step and ``|w|* = lr' sqrt(C / (1 - f^2))``, ``C = numel``. NaN without
    decay (``f >= 1``) or for ``f <= 0``."""
    shrink = 1.0 - factor * factor
    if shrink <= 0.0 or factor <= 0.0:
        return math.nan, math.nan
    angle = math.atan(math.sqrt(momentum_factor(beta1) * shrink) / factor)
    return angle, lr * math.sqrt(numel / shrink)


def muon_step_variance(factor: float, momentum: float, nesterov: bool) -> tuple[float, float]:
    """``(V, W)`` for the direction Muon orthogonalizes, per unit gradient variance (uncorrelated gradients).

    torch's buffer is ``b_t = mu b_{t-1} + (1 - mu) g_t``; the direction ``d_t`` is ``b_t`` or, with Nesterov,
    ``(1 - mu) g_t + mu b_t``: ``d_t = sum_m h_m g_{t-m}`` with ``h_0 = a``, ``h_m = c mu^m`` (``a = c = 1 - mu``;
    Nesterov: ``a = 1 - mu^2``, ``c = 1 - mu``). ``V = sum_m h_m^2`` is one step's variance; ``W = sum_n y_n^2`` with
    ``y_n = sum_{l<=n} f^l h_{n-l} = A f^n - B mu^n`` (``B = c mu / (f - mu)``, ``A = a + B``) is the variance of
    the decayed sum of all steps, ``sum_l f^l d_{t-l}``: ``W = A^2/(1-f^2) - 2AB/(1-f mu) + B^2/(1-mu^2)``.
    """
    a, c = (1.0 - momentum**2, 1.0 - momentum) if nesterov else (1.0 - momentum, 1.0 - momentum)
    if abs(factor - momentum) < 1e-9:  # the closed form's removable singularity
        factor = momentum + 1e-9
    variance = a * a + c * c * momentum**2 / (1.0 - momentum**2) if momentum < 1 else math.inf
    b = c * momentum / (factor - momentum)
    big_a = a + b
    walk = big_a**2 / (1 - factor**2) - 2 * big_a * b / (1 - factor * momentum) + b * b / (1 - momentum**2)
    return variance, walk


@functools.lru_cache(maxsize=256)
def orthogonalized_squared_norm(
    shape: tuple[int, int], ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315), ns_steps: int = 5
) -> float:
    """``q = |NS(G)|^2 / min(m, n)``: the mean squared singular value that torch's Newton-Schulz iteration gives a
    Gaussian ``m x n`` matrix (1 for an exact orthogonalization; about 0.7-0.9 for torch's default 5 quintic steps).
    Computed once per shape with torch's own iteration (a fixed seed; shapes over 1024 scaled down, keeping the
    aspect ratio)."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    rows, columns = shape
    scale = min(1.0, 1024 / max(rows, columns))
    rows, columns = max(1, round(rows * scale)), max(1, round(columns * scale))
    gaussian = torch.randn(rows, columns, generator=torch.Generator().manual_seed(0))
    orthogonalized = _zeropower_via_newtonschulz(gaussian, tuple(ns_coefficients), int(ns_steps), 1e-7).float()
    return float(orthogonalized.square().sum()) / min(rows, columns)


def muon_equilibrium(
    factor: float, adjusted_lr: float, shape: tuple[int, int], momentum: float, nesterov: bool, squared_norm: float
) -> tuple[float, float]:
    """``(theta*, |w|*)`` for Muon's step ``w <- f w - adjusted_lr O_t`` with ``|O_t|^2 = q r``, ``r = min(m, n)``:
    ``O_t`` is the direction ``d_t`` rescaled to that norm, so ``|w|*^2 = adjusted_lr^2 q r W / V`` and
    ``tan theta* = adjusted_lr sqrt(q r) / (f |w|*) = sqrt(V / W) / f`` (:func:`muon_step_variance`); NaN without
    decay."""
    if not 0.0 < factor < 1.0 or not 0.0 <= momentum < 1.0:
        return math.nan, math.nan
    variance, walk = muon_step_variance(factor, momentum, nesterov)
    angle = math.atan(math.sqrt(variance / walk) / factor)
    return angle, adjusted_lr * math.sqrt(squared_norm * min(shape) * walk / variance)


def is_muon_group(group: Mapping[str, Any]) -> bool:
    """A param group of torch's Muon (or a Muon variant): it has Muon's Newton-Schulz settings."""
    return "ns_steps" in group and "momentum" in group


@dataclass(frozen=True)
class EquilibriumPrediction:
    """The equilibrium of one layer: ``angular_update`` (``theta*``, rad per step) and ``weight_norm`` (``|w|*``),
    NaN where not derived; ``lr``, the lr multiplying the update (``lr'``, or the group's lr where the rule has no
    kernel settings); ``adam_like``, the group has Adam's ``betas`` (effective lr ``lr' / |w|``, else
    ``lr / |w|^2``)."""

    angular_update: float
    weight_norm: float
    lr: float
    adam_like: bool


def rotational_equilibrium(
    optimizer: Optimizer, group: Mapping[str, Any], numel: int, shape: tuple[int, ...] | None = None
) -> EquilibriumPrediction:
    """The rotational equilibrium of a layer of ``numel`` elements (Muon: of matrix ``shape``) in ``group``, with
    ``f`` and ``lr'`` from the optimizer's rule (:func:`~lightning_decay.optim.registry.rule_of`) for this step.

    Derived for Adam-family and Muon rules with one decay factor per step (AdamW both conventions, ProxAdam, AdamC,
    ``torch.optim.AdamW``, the Muon variants, ``torch.optim.Muon``); NaN for AdamL2, AdamP, cautious decay, no decay,
    and other optimizers.
    """
    rule = rule_of(optimizer, group)
    lr = float(group["lr"])
    if rule is not None and is_muon_group(group) and shape is not None and len(shape) == 2:
        rows, columns = (int(shape[1]), int(shape[0])) if group.get("transposed") else (int(shape[0]), int(shape[1]))
        return _muon_prediction(optimizer, group, rule, (rows, columns))  # the out x in map (Conv1D: W^T)
    if rule is None or "betas" not in group:  # not an Adam-family step: the derivation does not apply
        return EquilibriumPrediction(math.nan, math.nan, lr, adam_like=False)
    alpha, weight_decay = initial_lr(optimizer, group), float(group.get("weight_decay", 0.0))
    if not isinstance(rule, KernelDecayRule) or not rule.decoupled:
        return EquilibriumPrediction(math.nan, math.nan, lr, adam_like=True)
    kernel_lr = rule.kernel_settings(lr, alpha, weight_decay).lr
    if callable(getattr(optimizer, "decay_factor", None)):
        factor = float(optimizer.decay_factor(group))  # type: ignore[attr-defined]
    else:
        factor = float(rule.decay_factor(lr, alpha, weight_decay))
    angle, norm = equilibrium_of_step(factor, kernel_lr, float(group["betas"][0]), numel)
    return EquilibriumPrediction(angle, norm, kernel_lr, adam_like=True)


def _muon_prediction(
    optimizer: Optimizer, group: Mapping[str, Any], rule: Any, shape: tuple[int, int]
) -> EquilibriumPrediction:
    from torch.optim._muon import _adjust_lr

    lr = float(group["lr"])
    alpha, weight_decay = initial_lr(optimizer, group), float(group.get("weight_decay", 0.0))
    if not isinstance(rule, KernelDecayRule) or not rule.decoupled:
        return EquilibriumPrediction(math.nan, math.nan, lr, adam_like=True)
    settings = rule.kernel_settings(lr, alpha, weight_decay)
    adjusted = _adjust_lr(float(settings.lr), group.get("adjust_lr_fn"), torch.Size(shape))
    squared = orthogonalized_squared_norm(
        shape, tuple(group.get("ns_coefficients", (3.4445, -4.7750, 2.0315))), int(group.get("ns_steps", 5))
    )
    momentum, nesterov = float(group["momentum"]), bool(group.get("nesterov", True))
    angle, norm = muon_equilibrium(float(settings.decay_factor), adjusted, shape, momentum, nesterov, squared)
    return EquilibriumPrediction(angle, norm, adjusted, adam_like=True)


def equilibrium_not_derived(optimizer: Optimizer, group: Mapping[str, Any]) -> str | None:
    """Why :func:`rotational_equilibrium` has no prediction (NaN) for ``group`` this step, in words; None where it
    has one."""
    rule = rule_of(optimizer, group)
    name = type(optimizer).__name__
    if rule is None:
        return f"{name} has no decay rule (lightning_decay.optim.registry.rule_of)"
    if "betas" not in group and not is_muon_group(group):
        return (
            f"{name} ({rule.name}) is not an Adam-family step: its update is not normalized, so the equilibrium is a"
            " different one (not implemented)"
        )
    weight_decay = float(group.get("weight_decay", 0.0))
    if isinstance(rule, KernelDecayRule) and not rule.decoupled:
        return f"{name} ({rule.name}) decays through the gradient (L2, preconditioned by Adam): no single factor"
    if isinstance(rule, CautiousRule):
        return f"{name} ({rule.name}) decays only where u * w >= 0, a data-dependent share of the coordinates"
    if not isinstance(rule, KernelDecayRule):
        return f"{name} ({rule.name}) has no single decay factor per step (its decay is elementwise)"
    if weight_decay <= 0:
        return f"the param group of {name} has weight_decay=0 (without decay the norm grows: no equilibrium)"
    if math.isnan(rotational_equilibrium(optimizer, group, 1).angular_update):
        factor = optimizer.decay_factor(group) if callable(getattr(optimizer, "decay_factor", None)) else None
        shown = f" {float(factor):.6g}" if factor is not None else ""
        return f"the decay factor{shown} of {name} is not in (0, 1) this step"
    return None


def angular_update(weight_norm: Tensor, update_norm: Tensor, weight_dot_update: Tensor) -> Tensor:
    """The angle between ``w`` and ``w + d`` (rad) from ``|w|``, ``|d|`` and ``<w, d>``:
    ``atan2(sqrt(|w|^2 |d|^2 - <w, d>^2), |w|^2 + <w, d>)`` (Lagrange's identity; accurate for tiny angles, where
    ``acos`` of a float32 cosine is not)."""
    squared = weight_norm.square()
    sine_part = (squared * update_norm.square() - weight_dot_update.square()).clamp_min(0.0).sqrt()
    return torch.atan2(sine_part, squared + weight_dot_update)


def effective_lr(lr: Tensor, weight_norm: Tensor, adam_like: Tensor) -> Tensor:
    """The angular lr of a scale-invariant weight: ``lr' / |w|`` where ``adam_like`` (normalized updates), else
    ``lr / |w|^2`` (SGD: the gradient itself scales as ``1 / |w|``)."""
    return torch.where(adam_like, lr / weight_norm.clamp_min(_TINY), lr / weight_norm.square().clamp_min(_TINY))
