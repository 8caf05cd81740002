"""The startup summary of :class:`~lightning_decay.integration.mixin.DecayMixin`: what the optimizer it built will do.

.. code-block:: text

    MLP: AdamW (adamw-paper), paper convention, one step: w <- (1 - eta_t*wd) w - lr_t u_t
      schedule: warmup 10 steps, then cosine to 0 at step 30, stepped every optimizer step; the fit plans 30 steps
      parameter groups:
        decay: 2 tensors, 176 parameters, weight_decay=0.01 at lr=0.001, timescale 100 steps = 10 epochs
        no_decay: 4 tensors, 51 parameters, weight_decay=0 at lr=0.001

Everything comes from the :class:`~lightning_decay.integration.plan.DecayPlan` (``str(plan)``): the variant, its
convention and one-step formula from the registry record of the plan's optimizer, the schedule the plan resolved
(its warmup shortened to a short fit), each group's timescale from its decay rule, the layers treated as transposed,
the tensors where the default no-decay rule departs from timm's, the plan's notes (one ``note:`` line per group
whose decay timescale is far from the fit's length: :mod:`lightning_decay.integration.timescale_notes`). With
``verbose`` a table of every parameter follows: its group and the reason it is there.
"""

from __future__ import annotations

import math
from typing import Any

from lightning_decay.integration.construction import OptimizerRecipe
from lightning_decay.integration.muon_split import routing_summary

#: A :class:`~lightning_decay.integration.plan.DecayPlan` (the plan module imports this one, not the reverse).
DecayPlan = Any

__all__ = ["plan_summary"]


def plan_summary(plan: DecayPlan) -> str:
    """The startup summary of ``plan`` (see the module)."""
    settings, first = plan.settings, plan.optimizers[0]
    lines = [f"{plan.model}: {_describe_variant(plan.optimizer_name, first)}"]
    if len(plan.optimizers) > 1:  # Muon + others: each part's variant, and who went where
        lines.extend(f"  part: {_describe_variant(recipe.class_name, recipe)}" for recipe in plan.optimizers)
    if plan.muon_routes:
        others = settings.others.optimizer if settings.others is not None else "others"
        routes = routing_summary(list(plan.muon_routes), settings.optimizer, others, settings.verbose)
        lines.extend(f"  {line}" for line in routes.splitlines())
    if first.kernel is not None:
        lines.append(f"  kernel: {first.kernel} (its step and state, run with the rule's per-step lr and weight decay)")
    lines.append(f"  schedule: {_describe_schedule(plan)}")
    if settings.decay_timescale_epochs is not None:
        lines.append(f"  weight decay from decay timescale {settings.decay_timescale_epochs:g} epochs at "
                     f"{plan.steps_per_epoch} steps/epoch")
    if plan.transposed:
        lines.append(f"  transposed (stored in x out; Muon, its equilibrium and the neuron norms use out x in): "
                     f"{len(plan.transposed)} weights - " + _by_reason(plan.transposed))
    if plan.timm_departures:
        departures = {a.name: f"{a.reason} -> {a.group}" for a in plan.timm_departures}
        lines.append(f"  no-decay rule: {len(departures)} tensors where timm's rule (ndim <= 1, a .bias, the root's "
                     "no_weight_decay()) decides the other way; groups.rule: timm gives timm's - "
                     + _by_reason(departures))
    lines.append("  parameter groups:")
    for group in plan.groups:
        lines.append(_group_line(plan, group))
    lines.extend(f"  note: {note}" for note in plan.notes.values())
    if settings.verbose:
        lines.extend(_parameter_table(plan))
    return "\n".join(lines)


def _by_reason(reasons: dict[str, str]) -> str:
    grouped: dict[str, list[str]] = {}
    for name, reason in reasons.items():
        grouped.setdefault(reason, []).append(name)
    return "; ".join(f"{reason}: {', '.join(names)}" for reason, names in grouped.items())


def _group_line(plan: DecayPlan, group: Any) -> str:
    recipe = plan.optimizers[group.part]
    weight_decay = group.weight_decay if group.weight_decay is not None else 0.0
    lr = group.lr if group.lr is not None else 0.0
    line = (f"    {group.name}: {len(group.parameters)} tensors, {group.numel:,} parameters, "
            f"weight_decay={weight_decay:.6g} at lr={lr:.6g}")
    defaults = recipe.defaults
    if "normalized" in defaults and weight_decay > 0:  # AdamC: which decay rule the group follows
        normalized = group.given.get("normalized", defaults["normalized"])
        line += ", normalized" if normalized else ", not normalized (AdamW decay)"
    tau = group.timescale_steps
    if tau is not None and math.isfinite(tau):
        line += f", timescale {tau:.6g} steps"
        if plan.steps_per_epoch is not None:
            line += f" = {tau / plan.steps_per_epoch:.6g} epochs"
    elif weight_decay > 0 and lr > 0 and recipe.record is not None and _decay_needs_denominator(recipe):
        line += (
            f", timescale D x {1.0 / (lr * weight_decay):.6g} steps per coordinate (D/(lr*wd) with Adam's "
            "D = sqrt(v_hat) + eps: no single timescale)"
        )
    return line


def _parameter_table(plan: DecayPlan) -> list[str]:
    """``decay.verbose``: one row per parameter, its group and the reason (and its Muon route)."""
    routes = {route.name: route.reason for route in plan.muon_routes}
    rows = [(name, group.name, reason + (f"; {routes[name]}" if name in routes else ""))
            for group in plan.groups for name, reason in zip(group.parameters, group.reasons)]
    widths = [max(len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(("parameter", "group"))]
    lines = ["  parameters:", f"    {'parameter':<{widths[0]}}  {'group':<{widths[1]}}  reason"]
    lines.extend(f"    {name:<{widths[0]}}  {group:<{widths[1]}}  {reason}" for name, group, reason in rows)
    return lines


def _describe_schedule(plan: DecayPlan) -> str:
    """``warmup 10 steps, then cosine to 0 at step 30, stepped every optimizer step``, from the plan."""
    schedule = plan.schedule
    if schedule.source == "built-in":
        warmup, total, shape, floor = (schedule.warmup_steps, schedule.total_steps, schedule.schedule,
                                       schedule.min_lr_ratio)
        if total is None:
            total = max(1, warmup or 0)
        end = "0" if floor == 0 else f"{floor:g} x lr"
        after = "constant lr" if shape == "constant" else f"{shape} to {end} at step {total}"
        text = f"warmup {warmup} steps, then {after}" if warmup else f"no warmup, {after}"
        text += ", stepped every optimizer step"
    else:
        every = "optimizer step" if schedule.interval == "step" else schedule.interval
        text = f"{schedule.scheduler} (lr_scheduler_callable), stepped every {every}"
        if schedule.monitor:
            text += f" on {schedule.monitor}"
    if plan.planned_steps is not None:
        text += f"; the fit plans {plan.planned_steps} steps"
    return text


def _describe_variant(name: str, recipe: OptimizerRecipe) -> str:
    """``AdamW (adamw-paper), paper convention, one step: w <- (1 - eta_t*wd) w - lr_t u_t``, from the registry."""
    info = recipe.record
    if info is None:
        return f"{name} (not a registered variant: no decay rule describes its weight decay)"
    if not info.decoupled:
        convention = "L2 penalty in the gradient"
    else:
        convention = "paper convention" if info.rule.per_unit_lr else "torch convention"
        convention += ", elementwise" if info.elementwise and "elementwise" not in info.step else ""
    return f"{name} ({info.name}), {convention}, one step: {info.step}"


def _decay_needs_denominator(recipe: OptimizerRecipe) -> bool:
    """The registry says the variant's decay is scaled by Adam's denominator D (AdamP, Adam + L2)."""
    return recipe.record is not None and bool(
        {"elementwise_factor", "preconditioned_decay"} & set(recipe.record.decay_metrics))
