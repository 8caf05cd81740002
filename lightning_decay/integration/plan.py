"""The ``DecayPlan``: a user's settings resolved once against a model, and the one function that builds from it.

.. code-block:: python

    plan = resolve(settings, model, steps_per_epoch=50, total_steps=500)   # every decision, checked once
    print(plan)                                                             # the startup summary
    config = build(plan, model)                                             # optimizer + scheduler, no checks

:func:`resolve` decides everything a run depends on: the variant record of each optimizer (one for Adam / SGD
variants, two for Muon + others), each parameter group with its members and the reason for each, its resolved lr,
weight decay and decay timescale, the Muon routes, the transposed layers, the schedule (its kind, warmup, total
steps and stepping interval), the kernel. It warns where a setting likely means something other than what it does
(a decoupled decay with a timescale of a few steps). :func:`build` turns the plan into what ``configure_optimizers``
returns and checks nothing. The plan is frozen, printable (``str(plan)`` is the startup summary) and serialisable
(:meth:`DecayPlan.to_dict`); ``DecayMixin`` keeps it as ``model.decay_plan`` and its summary, ``hparams``, the W&B
config and the monitors read it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lightning.pytorch.utilities.types import LRSchedulerConfigType, OptimizerLRSchedulerConfig
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from lightning_decay.integration.construction import (
    OptimizerRecipe,
    callable_recipe,
    variant_recipe,
    with_tensor_lrs,
)
from lightning_decay.integration.group_settings import DECAY, NO_DECAY, ParamGroupSettings
from lightning_decay.integration.muon_split import MuonRoute, check_muon_routes, route_for_muon
from lightning_decay.integration.param_groups import ParamAssignment, assign_param_groups, timm_departures
from lightning_decay.integration.schedules import WarmupSchedule, resolve_warmup
from lightning_decay.integration.settings import DecaySettings
from lightning_decay.integration.summary import plan_summary
from lightning_decay.integration.timescale_notes import SHORT_TIMESCALE_STEPS, short_timescale_warning, timescale_note
from lightning_decay.integration.transposed import transposed_weights
from lightning_decay.optim.combined import CombinedOptimizer
from lightning_decay.optim.conventions import epochs_to_steps, weight_decay_for_timescale
from lightning_decay.optim.rules import DecayRule

__all__ = ["SHORT_TIMESCALE_STEPS", "GroupPlan", "SchedulePlan", "DecayPlan", "resolve", "build", "build_optimizer_of"]

@dataclass(frozen=True)
class GroupPlan:
    """One parameter group: its ``name`` (``muon/...`` / ``others/...`` for Muon + others), which optimizer of the
    plan steps it (``part``, an index into :attr:`DecayPlan.optimizers`), its members and the reason for each, the
    resolved peak ``lr`` and ``weight_decay`` (None where an injected optimizer's defaults are unknown), the decay
    timescale at the peak lr (None where the rule has none), ``transposed`` (Muon steps its weights as ``W^T``)
    and ``given``: the keys the group dict sets itself (the rest are the optimizer's constructor arguments)."""

    name: str
    part: int
    parameters: tuple[str, ...]
    reasons: tuple[str, ...]
    numel: int
    lr: float | None
    weight_decay: float | None
    timescale_steps: float | None
    given: Mapping[str, Any] = field(default_factory=dict)
    transposed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "part": self.part, "parameters": list(self.parameters), "reasons": list(self.reasons),
            "numel": self.numel, "lr": self.lr, "weight_decay": self.weight_decay,
            "timescale_steps": _finite_or_none(self.timescale_steps), "given": dict(self.given),
            "transposed": self.transposed,
        }


@dataclass(frozen=True)
class SchedulePlan:
    """The lr schedule: ``source`` is ``"built-in"`` (:class:`WarmupSchedule`: ``schedule``, ``warmup_steps``,
    ``total_steps``, ``min_lr_ratio``, stepped every optimizer step) or ``"lr_scheduler_callable"`` (the injected
    scheduler, stepped every ``interval``: ``"step"`` or ``"epoch"``, on ``monitor`` for ReduceLROnPlateau)."""

    source: str
    interval: str
    scheduler: str = "LambdaLR"
    schedule: str | None = None
    warmup_steps: int | None = None
    total_steps: int | None = None
    min_lr_ratio: float | None = None
    monitor: str | None = None

    @functools.cached_property
    def multiplier(self) -> WarmupSchedule | None:
        """The built-in schedule's ``eta(step)``; None for an injected scheduler."""
        if self.source != "built-in":
            return None
        total = self.total_steps if self.total_steps is not None else max(1, self.warmup_steps or 0)
        return WarmupSchedule(total_steps=total, warmup_steps=self.warmup_steps or 0,
                              schedule=self.schedule or "cosine", min_lr_ratio=self.min_lr_ratio or 0.0)

    def to_dict(self) -> dict[str, Any]:
        keys = ("source", "interval", "scheduler", "schedule", "warmup_steps", "total_steps", "min_lr_ratio",
                "monitor")
        return {key: getattr(self, key) for key in keys}


@dataclass(frozen=True)
class DecayPlan:
    """Everything one run's optimizer and schedule will do, decided once (see the module). ``str(plan)`` is the
    startup summary (:func:`~lightning_decay.integration.summary.plan_summary`)."""

    model: str
    settings: DecaySettings
    optimizers: tuple[OptimizerRecipe, ...]
    groups: tuple[GroupPlan, ...]
    schedule: SchedulePlan
    transposed: Mapping[str, str] = field(default_factory=dict)
    muon_routes: tuple[MuonRoute, ...] = ()
    timm_departures: tuple[ParamAssignment, ...] = ()
    steps_per_epoch: int | None = None
    planned_steps: int | None = None
    notes: Mapping[str, str] = field(default_factory=dict)

    @property
    def optimizer_name(self) -> str:
        """The class Lightning gets: the one optimizer's, or ``CombinedOptimizer`` for Muon + others."""
        return "CombinedOptimizer" if len(self.optimizers) > 1 else self.optimizers[0].class_name

    @property
    def variant(self) -> str | None:
        """The registry name of the (first) optimizer's variant, None for one outside the registry."""
        return self.optimizers[0].variant

    def rule_of(self, group: GroupPlan) -> DecayRule | None:
        """The decay rule ``group`` follows (its optimizer's; AdamC's unnormalized groups follow AdamW's)."""
        return self.optimizers[group.part].rule_for(group.given)

    def hparams(self) -> dict[str, Any]:
        """The numbers logged as hyperparameters (``decay/...``): the optimizer, variant, kernel, steps, each
        group's weight decay and timescale, and the notes."""
        out: dict[str, Any] = {"decay/optimizer": self.optimizer_name}
        if self.variant is not None:
            out["decay/variant"] = self.variant
        if self.steps_per_epoch is not None:
            out["decay/steps_per_epoch"] = self.steps_per_epoch
        if self.planned_steps is not None:
            out["decay/planned_steps"] = self.planned_steps
        if self.settings.decay_timescale_epochs is not None:
            out["decay/timescale_epochs"] = self.settings.decay_timescale_epochs
        kernel = self.optimizers[0].kernel
        if kernel is not None:
            out["decay/kernel"] = kernel
        for group in self.groups:
            if group.weight_decay is not None:
                out[f"decay/weight_decay/{group.name}"] = group.weight_decay
            if group.timescale_steps is not None and math.isfinite(group.timescale_steps):
                out[f"decay/timescale_steps/{group.name}"] = group.timescale_steps
                if self.steps_per_epoch is not None:
                    out[f"decay/timescale_epochs/{group.name}"] = group.timescale_steps / self.steps_per_epoch
            if group.name in self.notes:
                out[f"decay/note/{group.name}"] = self.notes[group.name]
        if f"decay/weight_decay/{DECAY}" in out:
            out["decay/weight_decay"] = out[f"decay/weight_decay/{DECAY}"]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain (YAML- / JSON-safe) form of the whole plan."""
        return {
            "model": self.model,
            "settings": self.settings.to_dict(),
            "optimizers": [recipe.to_dict() for recipe in self.optimizers],
            "groups": [group.to_dict() for group in self.groups],
            "schedule": self.schedule.to_dict(),
            "transposed": dict(self.transposed),
            "muon_routes": [{"name": r.name, "muon": r.muon, "reason": r.reason} for r in self.muon_routes],
            "timm_departures": [{"name": a.name, "group": a.group, "reason": a.reason} for a in self.timm_departures],
            "steps_per_epoch": self.steps_per_epoch,
            "planned_steps": self.planned_steps,
            "notes": dict(self.notes),
        }

    def __str__(self) -> str:
        return plan_summary(self)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# ----------------------------------------------------------------------------------------------------------- resolve


def resolve(
    settings: DecaySettings | Mapping[str, Any] | str | None,
    model: nn.Module,
    *,
    steps_per_epoch: int | None = None,
    total_steps: int | None = None,
    optimizer_callable: Callable[[Iterable[Any]], Optimizer] | None = None,
    lr_scheduler_callable: Callable[[Optimizer], Any] | None = None,
    decay_timescale_steps: float | None = None,
) -> DecayPlan:
    """The plan of ``settings`` (validated when they were made) for ``model``.

    ``steps_per_epoch``: the fit's optimizer steps per epoch (needed for ``decay_timescale_epochs``; otherwise only
    shown); ``total_steps``: the fit's optimizer steps (the trainer's estimate: the schedule's length unless
    ``settings.total_steps`` is given, and the span the notes compare timescales with). ``optimizer_callable``
    replaces the variant (its groups keep the plan's names and no-decay split); ``lr_scheduler_callable`` replaces
    the built-in schedule. ``decay_timescale_steps``: the plain factory's timescale in steps (the settings'
    ``decay_timescale_epochs`` is in epochs). Errors name the setting; nothing is built.
    """
    settings = DecaySettings.coerce(settings)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tau_steps = decay_timescale_steps if decay_timescale_steps is not None else _timescale_steps(settings,
                                                                                                  steps_per_epoch)
    if optimizer_callable is not None:
        main = callable_recipe(optimizer_callable)
    else:
        main = variant_recipe(settings.constructor, tau_steps)
    transposed = transposed_weights(model, settings.groups.transposed)
    assignments = assign_param_groups(model, settings.groups)
    if not assignments:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (all frozen or none)")
    recipes: tuple[OptimizerRecipe, ...] = (main,)
    routes: tuple[MuonRoute, ...] = ()
    if main.family == "muon":
        routes = tuple(route_for_muon(model, settings.others))
        check_muon_routes(model, settings, routes)
        if settings.others is not None:
            others = settings.others
            recipes = (main, variant_recipe(others.constructor, tau_steps))
    groups = _group_plans(model, settings.groups, assignments, recipes, routes, transposed, tau_steps)
    schedule = _schedule_plan(settings, total_steps, lr_scheduler_callable, main)
    plan = DecayPlan(
        model=type(model).__name__, settings=settings, optimizers=recipes, groups=groups, schedule=schedule,
        transposed=transposed, muon_routes=routes, timm_departures=tuple(timm_departures(model, settings.groups)),
        steps_per_epoch=steps_per_epoch, planned_steps=total_steps,
    )
    return dataclasses.replace(plan, notes=_notes_and_warnings(plan))


def _timescale_steps(settings: DecaySettings, steps_per_epoch: int | None) -> float | None:
    """``decay_timescale_epochs`` in optimizer steps (None when not given)."""
    if settings.decay_timescale_epochs is None:
        return None
    if steps_per_epoch is None:
        raise ValueError("decay_timescale_epochs needs the steps per epoch (the trainer's): resolve it during fit")
    steps = epochs_to_steps(settings.decay_timescale_epochs, steps_per_epoch)
    if steps <= 1.0:
        raise ValueError(
            f"decay_timescale_epochs={settings.decay_timescale_epochs:g} is {steps:g} steps at {steps_per_epoch} "
            "steps per epoch; it must be more than 1 step"
        )
    return steps


def _group_options(settings: ParamGroupSettings) -> dict[str, dict[str, Any]]:
    """What each named group sets itself: ``weight_decay=0`` for ``no_decay``, an override's settings."""
    options: dict[str, dict[str, Any]] = {DECAY: {}, NO_DECAY: {"weight_decay": 0.0}}
    for override in settings.overrides:
        options.setdefault(override.name, override.settings())
        if override.splits:
            options.setdefault(override.no_decay_name, {**override.settings(), "weight_decay": 0.0})
    return options


def _group_plans(
    model: nn.Module, settings: ParamGroupSettings, assignments: list[ParamAssignment],
    recipes: tuple[OptimizerRecipe, ...], routes: tuple[MuonRoute, ...], transposed: Mapping[str, str],
    tau_steps: float | None,
) -> tuple[GroupPlan, ...]:
    """The groups, in the order ``build_param_groups`` gives (``decay``, ``no_decay``, overrides), per optimizer of
    the plan (Muon's groups first), empty ones left out; Muon's transposed weights in groups of their own."""
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    options = _group_options(settings)
    members: dict[str, list[ParamAssignment]] = {name: [] for name in settings.group_names}
    for assignment in assignments:
        members[assignment.group].append(assignment)
    muon_names = {route.name for route in routes if route.muon}
    if len(recipes) == 1 and not routes:
        parts = [(0, "", lambda name: True)]
    else:
        parts = [(0, "muon/", lambda name: name in muon_names)]
        if len(recipes) > 1:
            parts.append((1, "others/", lambda name: name not in muon_names))
    plans = []
    for part, prefix, takes in parts:
        recipe = recipes[part]
        for name, group_members in members.items():
            chosen = [a for a in group_members if takes(a.name)]
            if recipe.family == "muon":
                split = [[a for a in chosen if a.name not in transposed], [a for a in chosen if a.name in transposed]]
            else:
                split = [chosen, []]
            for flipped, subset in zip((False, True), split):
                if subset:
                    label = f"{prefix}{name}{'_transposed' if flipped else ''}"
                    plans.append(_group_plan(label, part, recipe, subset, options[name], sizes, flipped, tau_steps))
    return tuple(plans)


def _group_plan(
    name: str, part: int, recipe: OptimizerRecipe, members: list[ParamAssignment], options: Mapping[str, Any],
    sizes: Mapping[str, int], transposed: bool, tau_steps: float | None,
) -> GroupPlan:
    given = dict(options)
    scale = given.pop("lr_scale", None)
    if scale is not None:
        given["lr"] = scale * recipe.lr if recipe.lr is not None else None
        if given["lr"] is None:
            raise ValueError(f"group {name!r} has lr_scale={scale}, but the optimizer's lr is unknown")
    lr = given.get("lr", recipe.lr)
    rule = recipe.rule_for(given)
    if tau_steps is not None and "weight_decay" not in given:
        given["weight_decay"] = weight_decay_for_timescale(tau_steps, float(lr), rule)  # type: ignore[arg-type]
    weight_decay = given.get("weight_decay", recipe.weight_decay)
    if transposed:
        given["transposed"] = True
    timescale = None
    if rule is not None and lr is not None and weight_decay is not None and lr > 0 and rule.decoupled \
            and not rule.elementwise:
        timescale = rule.timescale_steps(lr, lr, weight_decay)
    return GroupPlan(
        name=name, part=part, parameters=tuple(a.name for a in members), reasons=tuple(a.reason for a in members),
        numel=sum(sizes[a.name] for a in members), lr=None if lr is None else float(lr),
        weight_decay=None if weight_decay is None else float(weight_decay), timescale_steps=timescale,
        given=given, transposed=transposed,
    )


def _schedule_plan(
    settings: DecaySettings, total_steps: int | None, lr_scheduler_callable: Callable[[Optimizer], Any] | None,
    recipe: OptimizerRecipe,
) -> SchedulePlan:
    if lr_scheduler_callable is not None:  # Lightning's default interval: epoch
        scheduler = lr_scheduler_callable(recipe.probe())
        if isinstance(scheduler, ReduceLROnPlateau) and not settings.lr_scheduler_monitor:
            raise ValueError("lr_scheduler_monitor: ReduceLROnPlateau needs the metric to monitor")
        return SchedulePlan("lr_scheduler_callable", settings.lr_scheduler_interval or "epoch",
                            type(scheduler).__name__, monitor=settings.lr_scheduler_monitor)
    needs_total = settings.schedule != "constant" or bool(settings.warmup_ratio)
    warmup, total = resolve_warmup(settings.schedule, settings.warmup_steps, settings.warmup_ratio,
                                   settings.total_steps, total_steps if needs_total else None)
    return SchedulePlan("built-in", "step", schedule=settings.schedule, warmup_steps=warmup, total_steps=total,
                        min_lr_ratio=settings.min_lr_ratio)


def _notes_and_warnings(plan: DecayPlan) -> dict[str, str]:
    """The timescale note of each decayed group (:func:`timescale_note`); a UserWarning per group whose decay
    erases the weights within :data:`SHORT_TIMESCALE_STEPS` steps at the peak lr."""
    notes = {}
    multiplier = plan.schedule.multiplier
    for group in plan.groups:
        tau, rule, lr, weight_decay = group.timescale_steps, plan.rule_of(group), group.lr, group.weight_decay
        if tau is None or not math.isfinite(tau) or lr is None or weight_decay is None:
            continue
        note = timescale_note(group.name, tau, rule, lr, weight_decay, multiplier, plan.planned_steps,
                              plan.steps_per_epoch)
        if note is not None:
            notes[group.name] = note
        recipe = plan.optimizers[group.part]
        warning = None if rule is None else short_timescale_warning(
            group.name, tau, rule, lr, weight_decay, recipe.variant or recipe.class_name)
        if warning is not None:
            warnings.warn(warning, UserWarning, stacklevel=3)
    return notes


# ------------------------------------------------------------------------------------------------------------- build


def build(
    plan: DecayPlan,
    model: nn.Module,
    *,
    optimizer_callable: Callable[[Iterable[Any]], Optimizer] | None = None,
    lr_scheduler_callable: Callable[[Optimizer], Any] | None = None,
) -> OptimizerLRSchedulerConfig:
    """``{"optimizer": ..., "lr_scheduler": {...}}`` for ``configure_optimizers``, exactly as ``plan`` says (the
    callables are the ones ``plan`` was resolved with). Checks nothing."""
    optimizer = build_optimizer_of(plan, model, optimizer_callable=optimizer_callable)
    schedule = plan.schedule
    scheduler_config: LRSchedulerConfigType
    if lr_scheduler_callable is not None:
        scheduler = lr_scheduler_callable(optimizer)
        scheduler_config = {"scheduler": scheduler, "interval": schedule.interval, "frequency": 1}
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler_config["monitor"] = schedule.monitor  # type: ignore[typeddict-item]
    else:
        scheduler_config = {"scheduler": LambdaLR(optimizer, schedule.multiplier), "interval": "step",
                            "frequency": 1}
    return {"optimizer": optimizer, "lr_scheduler": scheduler_config}



def build_optimizer_of(
    plan: DecayPlan, model: nn.Module, *, optimizer_callable: Callable[[Iterable[Any]], Optimizer] | None = None
) -> Optimizer:
    """The optimizer of ``plan`` alone (one, or a ``CombinedOptimizer`` of Muon and the others)."""
    parameters = dict(model.named_parameters())
    built = []
    for part, recipe in enumerate(plan.optimizers):
        groups = [{"params": [parameters[name] for name in group.parameters], "name": group.name, **group.given}
                  for group in plan.groups if group.part == part]
        optimizer = optimizer_callable(groups) if optimizer_callable is not None else recipe.build(groups)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"the optimizer callable returned {type(optimizer).__name__}, not an Optimizer")
        built.append(with_tensor_lrs(optimizer, plan.settings.tensor_lr and optimizer_callable is None))
    return built[0] if len(built) == 1 else CombinedOptimizer(built)
