"""What a param group's decay rule did in one optimizer step, from the optimizer's and the rule's own code.

Notation of :mod:`lightning_decay.optim.rules`: ``lr_t`` the step's lr, ``alpha`` the group's initial lr,
``eta_t = lr_t / alpha``, ``wd`` the group's weight decay, ``D = sqrt(v_hat) + eps`` Adam's denominator.

* :func:`decay_metrics`: which decay metrics a rule has (the names of
  :data:`~lightning_decay.optim.registry.DECAY_METRICS`): its registry record's ``decay_metrics``, else
  :func:`infer_decay_metrics` from the rule's properties.
* :func:`scalar_decay_factor`: the factor ``f_t`` that multiplies the weights in one step, and
  :func:`decay_timescale` ``= 1 / (1 - f_t)`` steps.
* From Adam's state after the step (the ``D`` the step used): AdamP's elementwise factor ``1 / (1 + lr_t wd / D)``
  (:func:`elementwise_decay_factor`), Adam-L2's ``lr_t wd / D`` (:func:`preconditioned_decay`), cautious decay's
  mask ``1[m_t w >= 0]`` (:func:`decay_mask`).
* :func:`l2_gradient_ratio`: ``wd |w| / |g|``, the L2 term next to the loss gradient.

Nothing here imports Lightning; :class:`~lightning_decay.callbacks.EffectiveDecayMonitor` logs these numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_decay.optim.registry import DECAY_METRICS, REGISTRY
from lightning_decay.optim.rules import DecayRule, KernelDecayRule, SGDL2Rule, adam_denominator

__all__ = [
    "initial_lr",
    "decays_through_gradient",
    "infer_decay_metrics",
    "decay_metrics",
    "scalar_decay_factor",
    "decay_timescale",
    "step_denominator",
    "elementwise_decay_factor",
    "preconditioned_decay",
    "decay_mask",
    "l2_gradient_ratio",
]

_TINY = 1e-30


def initial_lr(optimizer: Optimizer, group: Mapping[str, Any]) -> float:
    """The blog's ``alpha``: the optimizer's own bookkeeping when it has it, else the scheduler's ``initial_lr``,
    else the group's current lr."""
    if callable(getattr(optimizer, "initial_lr", None)):
        return float(optimizer.initial_lr(group))  # type: ignore[attr-defined]
    return float(group.get("initial_lr", group["lr"]))


def decays_through_gradient(rule: DecayRule | None) -> bool:
    """True for L2 rules (``g <- g + wd w``: Adam-L2, SGD-L2), whose decay enters through the gradient."""
    return isinstance(rule, KernelDecayRule) and not rule.decoupled


def infer_decay_metrics(rule: DecayRule) -> tuple[str, ...]:
    """The decay metrics a rule's properties allow, in :data:`DECAY_METRICS` order.

    L2 rules: ``l2_grad_ratio``, and ``preconditioned_decay`` when the rule has ``preconditioned_decay`` (Adam),
    else ``decay_factor`` (SGD's effective factor). Rules with a mask (``decay_mask``, cautious decay):
    ``decay_factor`` (the factor on the decayed coordinates) and ``decayed_fraction``. Other elementwise rules
    (AdamP): ``elementwise_factor``. Every other rule: ``decay_factor``.
    """
    masked = callable(getattr(rule, "decay_mask", None))
    if decays_through_gradient(rule):
        preconditioned = callable(getattr(rule, "preconditioned_decay", None))
        metrics = {"l2_grad_ratio", "preconditioned_decay" if preconditioned else "decay_factor"}
    elif rule.elementwise and not masked:
        metrics = {"elementwise_factor"}
    else:
        metrics = {"decay_factor"}
    if masked:
        metrics.add("decayed_fraction")
    return tuple(metric for metric in DECAY_METRICS if metric in metrics)


def decay_metrics(rule: DecayRule) -> tuple[str, ...]:
    """What can be logged for a group that follows ``rule``: ``REGISTRY[rule.name].decay_metrics``, or
    :func:`infer_decay_metrics` for a rule outside the registry."""
    record = REGISTRY.get(getattr(rule, "name", ""))
    return tuple(record.decay_metrics) if record is not None else infer_decay_metrics(rule)


def scalar_decay_factor(optimizer: Optimizer, group: Mapping[str, Any], rule: DecayRule) -> float | None:
    """This step's decay factor ``f_t`` of ``group`` from the optimizer's ``decay_factor(group)``, else the rule's.

    SGD-L2 (torch's SGD with ``weight_decay``): the effective factor ``1 - lr_t wd (1 - tau) / (1 - mu)`` with the
    group's momentum ``mu`` and dampening ``tau``. Cautious decay: the factor on the coordinates the mask decays.
    None when the factor is elementwise (AdamP's needs ``D``).
    """
    lr, alpha, weight_decay = float(group["lr"]), initial_lr(optimizer, group), float(group.get("weight_decay", 0.0))
    try:
        if callable(getattr(optimizer, "decay_factor", None)):
            factor = optimizer.decay_factor(group)  # type: ignore[attr-defined]
        elif isinstance(rule, SGDL2Rule):
            momentum, dampening = group.get("momentum", 0.0), group.get("dampening", 0.0)
            factor = rule.decay_factor(lr, alpha, weight_decay, momentum=momentum, dampening=dampening)
        else:
            factor = rule.decay_factor(lr, alpha, weight_decay)
    except ValueError:  # needs Adam's denominator
        return None
    return None if isinstance(factor, Tensor) else float(factor)


def decay_timescale(factor: float) -> float | None:
    """``1 / (1 - f)`` steps, the EMA timescale of a per-step decay factor ``f`` (``DecayRule.timescale_steps``'s
    definition, applied to the factor that is logged so the two agree); None without decay (``f >= 1``)."""
    shrink = 1.0 - factor
    return 1.0 / shrink if shrink > 0.0 else None


def step_denominator(second_moment: Tensor, step: Tensor | float, beta2: float, eps: float) -> Tensor:
    """``D = sqrt(v / (1 - beta2^t)) + eps`` of the step just taken, from the state after it (``v``: the second
    moment, or its running max with amsgrad; ``t``: the state's step count), as torch computes it."""
    step_count = torch.as_tensor(step, dtype=torch.float64, device=second_moment.device)
    return adam_denominator(second_moment, (1 - beta2**step_count).sqrt(), eps)


def elementwise_decay_factor(
    rule: DecayRule, lr: float, initial_lr: float, weight_decay: float, denominator: Tensor
) -> Tensor | None:
    """The rule's elementwise factor given ``D`` (AdamP: ``1 / (1 + lr_t wd / D)``); None for a scalar rule."""
    factor = rule.decay_factor(lr, initial_lr, weight_decay, denominator)
    return factor if isinstance(factor, Tensor) else None


def preconditioned_decay(rule: DecayRule, lr: float, weight_decay: float, denominator: Tensor) -> Tensor | None:
    """Adam-L2's ``lr_t wd / D``: how strongly the L2 term pulls each coordinate in one momentum-free step; None for
    a rule without one."""
    method = getattr(rule, "preconditioned_decay", None)
    return method(lr, weight_decay, denominator) if callable(method) else None


def decay_mask(rule: DecayRule, first_moment: Tensor, weight: Tensor) -> Tensor | None:
    """Cautious decay's mask ``1[m_t w >= 0]`` as float32 (``m_t``, Adam's first moment, has the update's sign: the
    denominator and bias correction are positive); None for a rule without a mask."""
    method = getattr(rule, "decay_mask", None)
    return method(first_moment, weight).to(torch.float32) if callable(method) else None


def l2_gradient_ratio(weight_decay: float, weight_norms: Tensor, grad_norms: Tensor) -> Tensor:
    """``wd |w| / |g|`` per tensor: the size of the L2 term ``wd w`` next to the loss gradient."""
    return weight_decay * weight_norms / grad_norms.clamp_min(_TINY)
