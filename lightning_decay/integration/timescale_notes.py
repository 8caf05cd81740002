"""What a group's decay timescale means for the fit it is planned for (the timescale view of Wang & Aitchison
2024: the weights are an exponential moving average of their updates over ~timescale steps).

* :func:`timescale_note`: a note when the timescale is far longer than the fit (more than
  :data:`LONG_TIMESCALE_FACTOR` times the planned steps: the decay barely acts; the note says by how much the decay
  alone shrinks the weights over the fit) or shorter than one epoch (the weights forget within an epoch);
* :func:`short_timescale_warning`: the warning text when a decoupled decay erases the weights within
  :data:`SHORT_TIMESCALE_STEPS` steps at the peak lr (often a weight decay given in the other convention), with the
  value in the other convention.

The plan (:func:`~lightning_decay.integration.plan.resolve`) decides them once per group; the startup summary prints
the notes, the mixin logs the plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from lightning_decay.optim.rules import DecayRule

__all__ = ["LONG_TIMESCALE_FACTOR", "SHORT_TIMESCALE_STEPS", "timescale_note", "short_timescale_warning"]

#: A decayed group whose timescale is more than this many times the planned fit gets a note in the summary.
LONG_TIMESCALE_FACTOR = 10.0
#: A decoupled decay whose timescale at the peak lr is shorter than this many optimizer steps gets a UserWarning:
#: such a decay erases the weights within a few dozen steps, which is almost always a weight decay given in the
#: other convention (torch's ``lr_t*wd`` vs the paper's ``eta_t*wd``).
SHORT_TIMESCALE_STEPS = 50.0


def _steps_text(steps: float) -> str:
    return f"{steps:,.0f}" if steps >= 100 else f"{steps:.3g}"


def _run_shrink(
    rule: DecayRule, lr: float, weight_decay: float, multiplier: Callable[[int], float] | None, steps: int
) -> float:
    """The fraction of the weights that the decay alone removes over ``steps`` optimizer steps of the schedule
    (the product of the per-step decay factors; at most 10,000 evaluations)."""
    stride = max(1, math.ceil(steps / 10_000))
    log_kept = 0.0
    for step in range(0, steps, stride):
        eta = float(multiplier(step)) if multiplier is not None else 1.0
        factor = float(rule.decay_factor(lr * eta, lr, weight_decay))
        if factor <= 0.0:
            return 1.0
        log_kept += min(stride, steps - step) * math.log(min(1.0, factor))
    return 1.0 - math.exp(log_kept)


def timescale_note(
    name: str, tau: float, rule: DecayRule | None, lr: float, weight_decay: float,
    multiplier: Callable[[int], float] | None, planned: int | None, per_epoch: int | None,
) -> str | None:
    """One line when a decayed group's timescale is far longer than the planned fit or shorter than one epoch (the
    timescale view of Wang & Aitchison 2024: the weights are an EMA of the updates over ~tau steps)."""
    if planned is not None and tau > LONG_TIMESCALE_FACTOR * planned and rule is not None:
        shrink = _run_shrink(rule, lr, weight_decay, multiplier, planned)
        bound = "at most " if rule.elementwise else ""
        return (
            f"group {name!r}: decay timescale {_steps_text(tau)} steps is {tau / planned:.0f}x the {planned:,} "
            f"planned steps, so over the whole fit the decay shrinks these weights by {bound}{100 * shrink:.2g}% and "
            "barely acts (Wang & Aitchison 2024: the weights average their updates over ~timescale steps)"
        )
    if per_epoch is not None and tau < per_epoch:
        return (
            f"group {name!r}: decay timescale {_steps_text(tau)} steps is shorter than one epoch ({per_epoch:,} "
            "steps): these weights forget their updates within an epoch (Wang & Aitchison 2024: they average their "
            "updates over ~timescale steps)"
        )
    return None


def short_timescale_warning(name: str, tau: float, rule: DecayRule, lr: float, weight_decay: float,
                            optimizer: str) -> str | None:
    """The warning text when group ``name``'s decoupled decay has a timescale under :data:`SHORT_TIMESCALE_STEPS`
    steps at the peak lr, with ``weight_decay`` in the other convention (None otherwise)."""
    if not tau < SHORT_TIMESCALE_STEPS or not weight_decay or not lr:
        return None
    if rule.per_unit_lr:
        meant = (f"if {weight_decay:g} was meant in torch's convention (decay lr_t*wd per step, as torch.optim.AdamW), "
                 f"the value in this variant's paper convention is lr * wd = {lr * weight_decay:.6g}")
    else:
        meant = (f"if {weight_decay:g} was meant in the paper convention (decay eta_t*wd per step), the value in this "
                 f"variant's torch convention is wd / lr = {weight_decay / lr:.6g}")
    return (
        f"weight_decay={weight_decay:g} with {optimizer} at lr={lr:g} gives group {name!r} a decay timescale of "
        f"{tau:.3g} steps: the weights forget everything older than ~{tau:.3g} optimizer steps ({100 / tau:.3g}% per "
        f"step). {meant[0].upper()}{meant[1:]}"
    )
