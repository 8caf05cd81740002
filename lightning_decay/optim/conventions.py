"""Weight-decay conventions and timescales: every conversion formula of the package, each written once.

Notation: ``alpha`` is the peak (initial) learning rate, ``wd`` a weight decay.

* **torch vs paper convention.** torch's AdamW decays by ``1 - lr_t * wd_torch`` per step, Loshchilov & Hutter's
  by ``1 - eta_t * wd_paper`` (``eta_t = lr_t / alpha``). They agree when ``wd_paper = alpha * wd_torch``: the
  same number means a decay ``1 / alpha`` times stronger in the paper convention (``alpha = 1e-3``: 1000x).
* **EMA timescale** (Wang & Aitchison 2024): with per-step decay factor ``f``, the weights are an exponential
  moving average over ``tau_iter = 1 / (1 - f)`` steps; for torch's AdamW ``tau_iter = 1 / (alpha * wd)``
  (``1 - f = alpha * wd``), in epochs ``tau_epoch = tau_iter / steps_per_epoch``.

Timescales go through each variant's :class:`~lightning_decay.optim.rules.DecayRule`
(:meth:`~lightning_decay.optim.rules.DecayRule.timescale_steps` at the peak learning rate, ``eta = 1``), so they
hold for every variant with a scalar, decoupled decay (``adamw``, ``adamw-paper``, ``proxadam``, ...). L2 variants
(``adaml2``: decay through the gradient, preconditioned by Adam) and ``adamp`` (elementwise decay) have no such
timescale: ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch.optim import Optimizer

from lightning_decay.optim.registry import rule_of
from lightning_decay.optim.rules import DecayRule
from lightning_decay.validation import check_nonnegative, check_positive, check_real

__all__ = [
    "torch_to_paper",
    "paper_to_torch",
    "decay_rule_of",
    "timescale_steps",
    "weight_decay_for_timescale",
    "steps_to_epochs",
    "epochs_to_steps",
    "timescale_epochs",
    "weight_decay_for_timescale_epochs",
    "convert_weight_decay",
]

VariantLike = str | DecayRule | Optimizer | type


def torch_to_paper(weight_decay: float, lr: float) -> float:
    """``wd_paper = lr * wd_torch``: the paper-convention weight decay with the same decay at the peak ``lr``."""
    return check_nonnegative("weight_decay", weight_decay) * check_positive("lr", lr)


def paper_to_torch(weight_decay: float, lr: float) -> float:
    """``wd_torch = wd_paper / lr``: the torch-convention weight decay with the same decay at the peak ``lr``."""
    return check_nonnegative("weight_decay", weight_decay) / check_positive("lr", lr)


def decay_rule_of(variant: VariantLike, group: Mapping[str, Any] | None = None) -> DecayRule:
    """The decay rule of a variant name (``"adamw"``, ...), an optimizer (instance or class) or a rule itself;
    with an optimizer instance and one of its ``group``s, the rule that group follows (``rule_for(group)``).
    :func:`~lightning_decay.optim.registry.rule_of`, with an error where no rule describes the optimizer."""
    if not isinstance(variant, (str, DecayRule, Optimizer, type)):
        raise TypeError(f"variant must be a variant name, an optimizer or a DecayRule, got {type(variant).__name__}")
    rule = rule_of(variant, group)
    if rule is None:
        name = variant.__name__ if isinstance(variant, type) else type(variant).__name__
        raise ValueError(f"{name} has no decay rule: timescales need a registered variant or one of its optimizers")
    return rule


def _timescale(rule: DecayRule, lr: float, weight_decay: float) -> float:
    """``rule.timescale_steps`` at the peak lr, with a clear error for rules without a weight-independent decay."""
    try:
        tau = rule.timescale_steps(lr, lr, weight_decay)
    except ValueError as error:
        raise ValueError(
            f"variant {rule.name!r} has no decay timescale (decay_timescale_epochs needs a per-step decay factor): "
            f"{error}"
        ) from None
    if weight_decay > 0 and math.isinf(tau):
        raise ValueError(
            f"variant {rule.name!r} has no decay timescale (decay_timescale_epochs needs a per-step decay factor): "
            "its decay goes through the gradient (an L2 penalty, preconditioned by the optimizer)"
        )
    return tau


def timescale_steps(weight_decay: float, lr: float, variant: VariantLike = "adamw") -> float:
    """EMA timescale of the decay in steps at the peak ``lr``: ``1 / (1 - f)`` with ``f`` the variant's per-step
    decay factor (``1 / (lr * wd)`` for ``adamw``, ``1 / wd`` for ``adamw-paper``); inf without decay."""
    rule = decay_rule_of(variant)
    return _timescale(rule, check_positive("lr", lr), check_nonnegative("weight_decay", weight_decay))


def _shrink(rule: DecayRule, lr: float, weight_decay: float) -> float:
    """``1 - f``: the fraction of the weights one step of decay removes (from the rule's timescale)."""
    return 1.0 / _timescale(rule, lr, weight_decay)


def weight_decay_for_timescale(tau_steps: float, lr: float, variant: VariantLike = "adamw") -> float:
    """The weight decay whose EMA timescale at the peak ``lr`` is ``tau_steps`` (> 1 step; inf gives 0).

    Inverts :func:`timescale_steps` through the variant's rule: exactly (one division) when the decay is
    linear in ``wd`` (``adamw``: ``1 / (lr * tau)``, ``adamw-paper``: ``1 / tau``), by bisection otherwise
    (``proxadam``: ``1 / (tau - 1)``); rounded to 14 significant digits.
    """
    tau = check_positive("decay timescale", tau_steps, allow_inf=True)
    lr = check_positive("lr", lr)
    rule = decay_rule_of(variant)
    if tau == math.inf:
        return 0.0
    if tau <= 1.0:
        raise ValueError(f"decay timescale must be > 1 step (a shorter one flips or erases the weights), got {tau!r}")
    target = 1.0 / tau
    # A probe weight decay where one step removes 5-50% of the weights (far from rounding and from sign flips).
    probe = 1.0
    for _ in range(2100):
        shrink = _shrink(rule, lr, probe)
        if shrink < 0.05:
            probe *= 2.0
        elif shrink > 0.5:
            probe /= 2.0
        else:
            break
    else:
        raise ValueError(f"variant {rule.name!r}: no weight decay gives a decay timescale of {tau:g} steps")
    if math.isclose(_shrink(rule, lr, probe / 2.0), shrink / 2.0, rel_tol=1e-12, abs_tol=0.0):
        weight_decay = probe * (target / shrink)  # linear in wd
    else:
        low, high = 0.0, probe
        while _shrink(rule, lr, high) < target:
            low, high = high, high * 2.0
        for _ in range(2200):  # bisection to the last float
            middle = 0.5 * (low + high)
            if middle in (low, high):
                break
            if _shrink(rule, lr, middle) < target:
                low = middle
            else:
                high = middle
        weight_decay = min((low, high), key=lambda wd: abs(_shrink(rule, lr, wd) - target))
    weight_decay = float(f"{weight_decay:.14g}")  # drop the last digits' rounding noise (0.9999999999999991 -> 1)
    rule.check(lr, lr, weight_decay)
    return weight_decay


def steps_to_epochs(steps: float, steps_per_epoch: float) -> float:
    """``epochs = steps / steps_per_epoch`` (optimizer steps per epoch, after gradient accumulation)."""
    return check_real("steps", steps) / check_positive("steps_per_epoch", steps_per_epoch)


def epochs_to_steps(epochs: float, steps_per_epoch: float) -> float:
    """``steps = epochs * steps_per_epoch`` (optimizer steps per epoch, after gradient accumulation)."""
    return check_real("epochs", epochs) * check_positive("steps_per_epoch", steps_per_epoch)


def timescale_epochs(weight_decay: float, lr: float, steps_per_epoch: float, variant: VariantLike = "adamw") -> float:
    """EMA timescale in epochs: ``tau_epoch = tau_iter / steps_per_epoch`` (see :func:`timescale_steps`)."""
    return steps_to_epochs(timescale_steps(weight_decay, lr, variant), steps_per_epoch)


def weight_decay_for_timescale_epochs(
    tau_epochs: float, lr: float, steps_per_epoch: float, variant: VariantLike = "adamw"
) -> float:
    """The weight decay whose EMA timescale at the peak ``lr`` is ``tau_epochs`` epochs (Wang & Aitchison 2024);
    for ``adamw``: ``1 / (lr * tau_epochs * steps_per_epoch)``."""
    tau = check_positive("decay timescale (epochs)", tau_epochs, allow_inf=True)
    return weight_decay_for_timescale(epochs_to_steps(tau, steps_per_epoch), lr, variant)


def convert_weight_decay(weight_decay: float, lr: float, source: VariantLike, target: VariantLike) -> float:
    """The ``target`` variant's weight decay with the same decay timescale at the peak ``lr`` as ``weight_decay``
    in the ``source`` variant (``"adamw"`` -> ``"adamw-paper"`` is :func:`torch_to_paper`)."""
    return weight_decay_for_timescale(timescale_steps(weight_decay, lr, source), lr, target)
