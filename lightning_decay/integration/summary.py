"""The startup summary of :class:`~lightning_decay.integration.mixin.DecayMixin`: what the optimizer it built will do.

.. code-block:: text

    MLP: AdamW (adamw-paper), paper convention, one step: w <- (1 - eta_t*wd) w - lr_t u_t
      schedule: warmup 10 steps, then cosine to 0 at step 30, stepped every optimizer step; the fit plans 30 steps
      parameter groups:
        decay: 2 tensors, 176 parameters, weight_decay=0.01 at lr=0.001, timescale 100 steps = 10 epochs
        no_decay: 4 tensors, 51 parameters, weight_decay=0 at lr=0.001

The variant, its convention and its one-step formula come from the registry record whose rule the optimizer applies;
the schedule is read from the multiplier the scheduler really got (``scheduler.lr_lambdas[0]``); each group's
timescale from its decay rule. With ``verbose`` every group's parameter names follow it. A decayed group whose
timescale is more than :data:`LONG_TIMESCALE_FACTOR` times the planned fit, or shorter than one epoch, gets one
``note:`` line: the timescale view of Wang & Aitchison 2024 (the weights are an EMA of their updates over ~timescale
steps, so a timescale far beyond the fit leaves the decay without effect, one shorter than an epoch forgets within
it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lightning_decay.integration.muon_split import route_for_muon, routing_summary
from lightning_decay.integration.param_groups import DECAY
from lightning_decay.integration.parameter_names import clean_parameter_name
from lightning_decay.integration.schedules import trainer_steps_per_epoch
from lightning_decay.integration.settings import DecaySettings
from lightning_decay.optim.combined import CombinedOptimizer
from lightning_decay.optim.conventions import decay_rule_of, steps_to_epochs, timescale_steps
from lightning_decay.optim.kernels import KernelRuleOptimizer
from lightning_decay.optim.registry import REGISTRY, VariantInfo, rule_of
from lightning_decay.optim.rules import DecayRule

__all__ = ["LONG_TIMESCALE_FACTOR", "DecaySummary", "summarize_decay"]

#: A decayed group whose timescale is more than this many times the planned fit gets a note in the summary.
LONG_TIMESCALE_FACTOR = 10.0


@dataclass
class DecaySummary:
    """The printed summary (``text``), the numbers logged as hyperparameters (``resolved``: ``decay/...``) and the
    notes by group name (also in ``resolved`` as ``decay/note/<group>``)."""

    text: str
    resolved: dict[str, Any]
    notes: dict[str, str] = field(default_factory=dict)


def summarize_decay(
    model: torch.nn.Module,
    config: OptimizerLRSchedulerConfig,
    settings: DecaySettings,
    steps_per_epoch: int | None,
    trainer: Any,
) -> DecaySummary:
    """The summary of the optimizer and scheduler in ``config`` that ``model``'s mixin built from ``settings``
    (``steps_per_epoch``: given when a timescale in epochs was resolved with it; ``trainer``: None outside a fit)."""
    optimizer = config["optimizer"]
    scheduler_config = config.get("lr_scheduler") or {}
    scheduler = scheduler_config.get("scheduler")  # type: ignore[union-attr]
    planned = _planned_steps(trainer)
    per_epoch = steps_per_epoch if steps_per_epoch is not None else _steps_per_epoch(trainer)
    multiplier = _multiplier(scheduler)
    info = _variant_of(optimizer)
    resolved: dict[str, Any] = {"decay/optimizer": type(optimizer).__name__}
    if info is not None:
        resolved["decay/variant"] = info.name
    if per_epoch is not None:
        resolved["decay/steps_per_epoch"] = per_epoch
    if planned is not None:
        resolved["decay/planned_steps"] = planned
    if steps_per_epoch is not None:
        resolved["decay/timescale_epochs"] = settings.decay_timescale_epochs
    names = _parameter_names(model) if settings.verbose else {}
    lines = [f"{type(model).__name__}: {_describe_variant(optimizer, info)}"]
    if isinstance(optimizer, CombinedOptimizer):  # Muon + others: each part's variant, and who went where
        for part in optimizer.parts:
            lines.append(f"  part: {_describe_variant(part, _variant_of(part))}")
        others = settings.others.optimizer if settings.others is not None else "others"
        routes = routing_summary(route_for_muon(model, settings.others), settings.optimizer, others, settings.verbose)
        lines.extend(f"  {line}" for line in routes.splitlines())
    if isinstance(optimizer, KernelRuleOptimizer):  # on_kernel: the rule on another optimizer's step and state
        kernel = type(optimizer).kernel
        resolved["decay/kernel"] = f"{kernel.__module__}.{kernel.__qualname__}"
        lines.append(f"  kernel: {resolved['decay/kernel']} (its step and state, run with the rule's per-step lr and "
                     "weight decay)")
    if scheduler is not None:
        interval = scheduler_config.get("interval", "epoch")  # type: ignore[union-attr]
        monitor = scheduler_config.get("monitor")  # type: ignore[union-attr]
        lines.append(f"  schedule: {_describe_schedule(scheduler, multiplier, interval, monitor, planned)}")
    if steps_per_epoch is not None:
        lines.append(
            f"  weight decay from decay timescale {settings.decay_timescale_epochs:g} epochs at {steps_per_epoch} "
            "steps/epoch"
        )
    lines.append("  parameter groups:")
    notes: dict[str, str] = {}
    for index, group in enumerate(optimizer.param_groups):
        name = group.get("name", f"pg{index + 1}")
        lr = float(group.get("initial_lr", group["lr"]))
        weight_decay = float(group["weight_decay"])
        resolved[f"decay/weight_decay/{name}"] = weight_decay
        count = sum(p.numel() for p in group["params"])
        line = f"    {name}: {len(group['params'])} tensors, {count:,} parameters, weight_decay={weight_decay:.6g}"
        line += f" at lr={lr:.6g}"
        if "normalized" in optimizer.defaults and weight_decay > 0:  # AdamC: which decay rule the group follows
            line += ", normalized" if group.get("normalized") else ", not normalized (AdamW decay)"
        try:
            rule: DecayRule | None = decay_rule_of(optimizer, group)
            tau = timescale_steps(weight_decay, lr, rule)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            rule = None
            tau = None  # no scalar timescale (L2, elementwise) or not one of this package's optimizers
        if tau is not None and math.isfinite(tau):
            resolved[f"decay/timescale_steps/{name}"] = tau
            line += f", timescale {tau:.6g} steps"
            if per_epoch is not None:
                tau_epochs = steps_to_epochs(tau, per_epoch)
                resolved[f"decay/timescale_epochs/{name}"] = tau_epochs
                line += f" = {tau_epochs:.6g} epochs"
            note = _timescale_note(name, tau, rule, lr, weight_decay, multiplier, planned, per_epoch)
            if note is not None:
                notes[name] = resolved[f"decay/note/{name}"] = note
        elif weight_decay > 0 and lr > 0 and info is not None and _decay_needs_denominator(info):
            line += (
                f", timescale D x {1.0 / (lr * weight_decay):.6g} steps per coordinate (D/(lr*wd) with Adam's "
                "D = sqrt(v_hat) + eps: no single timescale)"
            )
        lines.append(line)
        if names:
            lines.append("      " + ", ".join(" = ".join(names.get(id(p), ["?"])) for p in group["params"]))
    lines.extend(f"  note: {note}" for note in notes.values())
    if f"decay/weight_decay/{DECAY}" in resolved:
        resolved["decay/weight_decay"] = resolved[f"decay/weight_decay/{DECAY}"]
    return DecaySummary("\n".join(lines), resolved, notes)


def _steps_text(steps: float) -> str:
    return f"{steps:,.0f}" if steps >= 100 else f"{steps:.3g}"


def _planned_steps(trainer: Any) -> int | None:
    """The fit's optimizer steps (the trainer's estimate), or None when unknown."""
    if trainer is None:
        return None
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - no train dataloader yet, an unsized one, ...: the summary just omits it
        return None
    return int(total) if isinstance(total, (int, float)) and math.isfinite(total) and total >= 1 else None


def _steps_per_epoch(trainer: Any) -> int | None:
    if trainer is None:
        return None
    try:
        return trainer_steps_per_epoch(trainer)
    except Exception:  # noqa: BLE001 - an unsized dataloader: no epochs in the summary
        return None


def _multiplier(scheduler: Any) -> Callable[[int], float] | None:
    """The lr multiplier ``eta(step)`` the scheduler really got (a ``LambdaLR``'s first lambda), or None."""
    if isinstance(scheduler, LambdaLR) and scheduler.lr_lambdas and callable(scheduler.lr_lambdas[0]):
        return scheduler.lr_lambdas[0]
    return None


def _describe_schedule(
    scheduler: Any, multiplier: Callable[[int], float] | None, interval: str, monitor: str | None,
    planned: int | None,
) -> str:
    """``warmup 10 steps, then cosine to 0 at step 30``, read from the schedule the scheduler got."""
    fields = ("warmup_steps", "total_steps", "schedule", "min_lr_ratio")
    if multiplier is not None and all(hasattr(multiplier, name) for name in fields):
        warmup, total = multiplier.warmup_steps, multiplier.total_steps  # type: ignore[attr-defined]
        shape, floor = multiplier.schedule, multiplier.min_lr_ratio  # type: ignore[attr-defined]
        end = "0" if floor == 0 else f"{floor:g} x lr"
        after = "constant lr" if shape == "constant" else f"{shape} to {end} at step {total}"
        text = f"warmup {warmup} steps, then {after}" if warmup else f"no warmup, {after}"
        text += ", stepped every optimizer step"
    else:
        every = "optimizer step" if interval == "step" else interval
        text = f"{type(scheduler).__name__} (lr_scheduler_callable), stepped every {every}"
        if monitor:
            text += f" on {monitor}"
    if planned is not None:
        text += f"; the fit plans {planned} steps"
    return text


def _variant_of(optimizer: Optimizer) -> VariantInfo | None:
    """The registry record whose rule the optimizer applies (also torch's AdamW, Adam and SGD), or None."""
    rule = rule_of(optimizer)
    if rule is None:
        return None
    records = list(REGISTRY.values())
    for same in (
        lambda info: info.rule is rule,
        lambda info: type(info.rule) is type(rule) and repr(info.rule) == repr(rule),
        lambda info: type(info.rule) is type(rule),
    ):
        found = [info for info in records if same(info)]
        if found:
            return found[0]
    return None


def _describe_variant(optimizer: Optimizer, info: VariantInfo | None) -> str:
    """``AdamW (adamw-paper), paper convention, one step: w <- (1 - eta_t*wd) w - lr_t u_t``, from the registry."""
    name = type(optimizer).__name__
    if info is None:
        return f"{name} (not a registered variant: no decay rule describes its weight decay)"
    if not info.decoupled:
        convention = "L2 penalty in the gradient"
    else:
        convention = "paper convention" if info.rule.per_unit_lr else "torch convention"
        convention += ", elementwise" if info.elementwise and "elementwise" not in info.step else ""
    return f"{name} ({info.name}), {convention}, one step: {info.step}"


def _decay_needs_denominator(info: VariantInfo) -> bool:
    """The registry says the variant's decay is scaled by Adam's denominator D (AdamP, Adam + L2)."""
    return bool({"elementwise_factor", "preconditioned_decay"} & set(info.decay_metrics))


def _parameter_names(model: torch.nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(clean_parameter_name(name))
    return names


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


def _timescale_note(
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
