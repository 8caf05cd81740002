"""Build what ``configure_optimizers`` returns: a weight-decay optimizer on named parameter groups plus a per-step
learning-rate schedule (linear warmup, then cosine / linear / constant).

.. code-block:: python

    def configure_optimizers(self):
        return build_optimizer_config(self, "proxadam", lr=3e-4, weight_decay=0.1, warmup_steps=500)

The optimizer is a variant name of :data:`lightning_decay.optim.REGISTRY` (``adaml2``, ``adamw``,
``adamw-paper``, ``proxadam``, ``adamp``, ...), a dotted class path or an ``Optimizer`` class, or a callable
``params -> Optimizer`` (LightningCLI's ``OptimizerCallable``). ``None`` settings mean the optimizer's own
defaults. The schedule multiplies each group's initial lr by ``eta(step)`` (:class:`WarmupSchedule`), stepped
after every optimizer step; ``total_steps`` defaults to ``trainer.estimated_stepping_batches``.
"""

from __future__ import annotations

import importlib
import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.types import LRSchedulerConfigType, OptimizerLRSchedulerConfig
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from lightning_decay.integration.param_groups import ParamGroupSettings, build_param_groups
from lightning_decay.optim.conventions import decay_rule_of, epochs_to_steps, weight_decay_for_timescale
from lightning_decay.optim.registry import REGISTRY, resolve_variant
from lightning_decay.validation import MAX_SETTING, check_int, check_real

__all__ = [
    "SCHEDULES",
    "WarmupSchedule",
    "resolve_optimizer",
    "check_optimizer_settings",
    "check_schedule_settings",
    "trainer_total_steps",
    "trainer_steps_per_epoch",
    "build_optimizer",
    "build_lr_scheduler",
    "build_optimizer_config",
]

#: Learning-rate shapes after the warmup.
SCHEDULES = ("cosine", "linear", "constant")

OptimizerSpec = str | type[Optimizer] | Callable[[Iterable[Any]], Optimizer]


def _check_real(name: str, value: Any, *, low: float, low_open: bool, high: float = MAX_SETTING) -> float:
    return check_real(name, value, low=low, low_open=low_open, high=high)


def _check_int(name: str, value: Any, *, low: int) -> int:
    return check_int(name, value, low=low)


@dataclass
class WarmupSchedule:
    """The lr multiplier ``eta(step)`` for ``LambdaLR`` (a picklable callable, saved in the scheduler's state).

    Warmup ``eta = (step + 1) / warmup_steps`` for ``step < warmup_steps`` (no step at lr 0; the last warmup step
    is at the peak), then with ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1]
    and ``m = min_lr_ratio``: cosine ``m + (1 - m) (1 + cos(pi p)) / 2``, linear ``m + (1 - m)(1 - p)``,
    constant ``1``. After ``total_steps`` the multiplier stays at ``m``.
    """

    total_steps: int
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        check_schedule_settings(self.schedule, self.warmup_steps, 0.0, self.total_steps, self.min_lr_ratio)
        if self.schedule != "constant" and self.warmup_steps >= self.total_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be < total_steps ({self.total_steps}) for a "
                f"{self.schedule} schedule"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape


def check_schedule_settings(
    schedule: str, warmup_steps: int, warmup_ratio: float, total_steps: int | None, min_lr_ratio: float
) -> None:
    """Validate schedule settings; errors name the offending setting."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    _check_int("warmup_steps", warmup_steps, low=0)
    _check_real("warmup_ratio", warmup_ratio, low=0.0, low_open=False, high=1.0)
    if warmup_ratio >= 1.0:
        raise ValueError(f"warmup_ratio must be < 1 (a fraction of total_steps), got {warmup_ratio!r}")
    if warmup_steps and warmup_ratio:
        raise ValueError(f"give warmup_steps or warmup_ratio, not both (got {warmup_steps} and {warmup_ratio})")
    if total_steps is not None:
        _check_int("total_steps", total_steps, low=1)
    _check_real("min_lr_ratio", min_lr_ratio, low=0.0, low_open=False, high=1.0)


def resolve_optimizer(optimizer: str | type[Optimizer]) -> tuple[type[Optimizer], dict[str, Any]]:
    """``(class, fixed kwargs)`` of a variant name, a dotted ``Optimizer`` class path or an ``Optimizer`` class.

    An unknown name raises ValueError listing the valid variant names (read from ``REGISTRY``).
    """
    if isinstance(optimizer, type):
        if not issubclass(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer subclass, got {optimizer!r}")
        return optimizer, {}
    if not isinstance(optimizer, str):
        raise TypeError(f"optimizer must be a variant name or an Optimizer class, got {type(optimizer).__name__}")
    try:
        return resolve_variant(optimizer)
    except ValueError:
        if "." not in optimizer:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; valid variants: {', '.join(REGISTRY)} "
                "(or a dotted torch.optim.Optimizer class path)"
            ) from None
    module_path, _, name = optimizer.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_path), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"optimizer {optimizer!r} is neither a variant ({', '.join(REGISTRY)}) nor an importable class: {error}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise ValueError(f"optimizer {optimizer!r} is not a torch.optim.Optimizer subclass")
    return cls, {}


def _accepts(cls: type, name: str) -> bool:
    parameters = inspect.signature(cls).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _constructor_kwargs(
    optimizer: str | type[Optimizer],
    lr: float | None,
    weight_decay: float | None,
    betas: tuple[float, float] | None,
    eps: float | None,
    optimizer_kwargs: Mapping[str, Any] | None,
) -> tuple[type[Optimizer], dict[str, Any]]:
    """The class and the keyword arguments to build it with; ValueError naming a setting the class cannot take."""
    cls, fixed = resolve_optimizer(optimizer)
    extra = dict(optimizer_kwargs or {})
    kwargs: dict[str, Any] = dict(fixed)
    for key, value in extra.items():
        if key in ("params", "lr", "weight_decay", "betas", "eps"):
            raise ValueError(f"optimizer_kwargs: give {key!r} as its own setting, not in optimizer_kwargs")
        if key in fixed and fixed[key] != value:
            raise ValueError(
                f"optimizer_kwargs: variant {optimizer!r} fixes {key}={fixed[key]!r}, got {key}={value!r}"
            )
        if not _accepts(cls, key):
            raise ValueError(f"optimizer_kwargs: {cls.__name__} takes no argument {key!r}")
        kwargs[key] = value
    for key, value in (("lr", lr), ("weight_decay", weight_decay), ("betas", betas), ("eps", eps)):
        if value is None:
            continue
        if not _accepts(cls, key):
            raise ValueError(f"{key}: {cls.__name__} takes no argument {key!r} (leave it unset)")
        kwargs[key] = tuple(value) if key == "betas" else value
    return cls, kwargs


def check_optimizer_settings(
    optimizer: OptimizerSpec,
    lr: float | None = None,
    weight_decay: float | None = None,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    optimizer_kwargs: Mapping[str, Any] | None = None,
) -> Optimizer:
    """Validate optimizer settings before training: types and ranges, then a trial construction on one dummy
    parameter (which runs the optimizer's own checks, e.g. ``lr * weight_decay < 1`` for torch-convention AdamW).
    Returns the trial optimizer."""
    if lr is not None:
        _check_real("lr", lr, low=0.0, low_open=True)
    if weight_decay is not None:
        _check_real("weight_decay", weight_decay, low=0.0, low_open=False)
    if eps is not None:
        _check_real("eps", eps, low=0.0, low_open=False)
    if betas is not None:
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Iterable) or len(tuple(betas)) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for index, beta in enumerate(betas):
            _check_real(f"betas[{index}]", beta, low=0.0, low_open=False, high=1.0)
            if beta >= 1.0:
                raise ValueError(f"betas[{index}] must be < 1, got {beta!r}")
    if optimizer_kwargs is not None and not isinstance(optimizer_kwargs, Mapping):
        raise TypeError(f"optimizer_kwargs must be a mapping, got {type(optimizer_kwargs).__name__}")
    if isinstance(optimizer, (str, type)):
        cls, kwargs = _constructor_kwargs(optimizer, lr, weight_decay, betas, eps, optimizer_kwargs)
        return cls([torch.zeros(1, requires_grad=True)], **kwargs)
    if callable(optimizer):
        given = {"lr": lr, "weight_decay": weight_decay, "betas": betas, "eps": eps}
        given = {key: value for key, value in given.items() if value is not None}
        if given or optimizer_kwargs:
            raise ValueError(
                f"with an optimizer callable, set {sorted(given) or sorted(optimizer_kwargs or {})} in the callable "
                "(e.g. its init_args), not as separate settings"
            )
        trial = optimizer([torch.zeros(1, requires_grad=True)])
        if not isinstance(trial, Optimizer):
            raise TypeError(f"the optimizer callable returned {type(trial).__name__}, not an Optimizer")
        return trial
    raise TypeError(
        f"optimizer must be a variant name, an Optimizer class or a callable, got {type(optimizer).__name__}"
    )


class _OptimizerMaker:
    """Builds the optimizer from parameter groups, for every form of the optimizer setting."""

    def __init__(
        self,
        optimizer: OptimizerSpec,
        lr: float | None,
        weight_decay: float | None,
        betas: tuple[float, float] | None,
        eps: float | None,
        optimizer_kwargs: Mapping[str, Any] | None,
    ) -> None:
        check_optimizer_settings(optimizer, lr, weight_decay, betas, eps, optimizer_kwargs)
        self.callable: Callable[[Iterable[Any]], Optimizer] | None = None
        if isinstance(optimizer, (str, type)):
            self.cls, self.kwargs = _constructor_kwargs(optimizer, lr, weight_decay, betas, eps, optimizer_kwargs)
        else:
            self.callable = optimizer

    def __call__(self, groups: list[dict[str, Any]], weight_decay: float | None = None) -> Optimizer:
        if self.callable is not None:
            optimizer = self.callable(groups)
            if not isinstance(optimizer, Optimizer):
                raise TypeError(f"the optimizer callable returned {type(optimizer).__name__}, not an Optimizer")
            return optimizer
        kwargs = dict(self.kwargs)
        if weight_decay is not None:
            kwargs["weight_decay"] = weight_decay
        return self.cls(groups, **kwargs)


def _copy_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**group, "params": list(group["params"])} for group in groups]


def build_optimizer(
    params: nn.Module | Iterable[Any],
    optimizer: OptimizerSpec = "adamw",
    lr: float | None = None,
    weight_decay: float | None = None,
    *,
    decay_timescale_steps: float | None = None,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    groups: ParamGroupSettings | Mapping[str, Any] | None = None,
) -> Optimizer:
    """The optimizer on ``params``: a module (split into named groups by ``groups``, see
    :mod:`lightning_decay.integration.param_groups`) or ready parameters / group dicts (used as given).

    ``None`` settings are the optimizer's defaults. ``decay_timescale_steps`` (instead of ``weight_decay``) sets,
    for every group without its own ``weight_decay``, the weight decay whose EMA timescale at that group's peak lr
    is that many steps (:func:`~lightning_decay.optim.conventions.weight_decay_for_timescale`, through the optimizer's
    decay rule).
    """
    if weight_decay is not None and decay_timescale_steps is not None:
        raise ValueError(
            f"give weight_decay or decay_timescale_steps, not both (got {weight_decay} and {decay_timescale_steps})"
        )
    make = _OptimizerMaker(optimizer, lr, weight_decay, betas, eps, optimizer_kwargs)
    if decay_timescale_steps is not None:
        _check_real("decay_timescale_steps", decay_timescale_steps, low=1.0, low_open=True)
    if isinstance(params, nn.Module):
        settings = ParamGroupSettings.coerce(groups)
        needs_lr = any(override.lr_scale is not None for override in settings.overrides)
        base_lr = lr
        if needs_lr and base_lr is None:
            base_lr = make(build_param_groups(params, settings, base_lr=1.0, warn_unused=False)).defaults["lr"]
        param_groups = build_param_groups(params, settings, base_lr=base_lr)
    else:
        if groups is not None:
            raise ValueError("groups applies to a module; params are already given as tensors or group dicts")
        items = list(params)
        if all(isinstance(item, Mapping) for item in items):
            param_groups = [{**item, "params": list(item["params"])} for item in items]
        elif not any(isinstance(item, Mapping) for item in items):
            param_groups = [{"params": items}]
        else:
            raise TypeError("params must be all tensors or all group dicts, not a mix")
    if decay_timescale_steps is None:
        return _warn_unread_normalized(make(param_groups))
    probe = make(_copy_groups(param_groups))
    base_lr = float(probe.defaults["lr"])
    base_weight_decay = weight_decay_for_timescale(decay_timescale_steps, base_lr, decay_rule_of(probe))
    for group, probe_group in zip(param_groups, probe.param_groups):
        if "weight_decay" not in group:
            rule = decay_rule_of(probe, probe_group)
            group["weight_decay"] = weight_decay_for_timescale(decay_timescale_steps, float(probe_group["lr"]), rule)
    return _warn_unread_normalized(make(param_groups, weight_decay=base_weight_decay))


def _warn_unread_normalized(optimizer: Optimizer) -> Optimizer:
    """Warns when groups are marked ``normalized`` (a group override's setting) for an optimizer that does not
    read the key (only AdamC does: it has ``normalized`` among its defaults)."""
    groups = optimizer.param_groups
    marked = [group.get("name", str(index)) for index, group in enumerate(groups) if "normalized" in group]
    if marked and "normalized" not in optimizer.defaults:
        warnings.warn(
            f"groups.overrides set normalized on group(s) {marked}, but {type(optimizer).__name__} ignores it "
            "(only adamc reads it)",
            stacklevel=3,
        )
    return optimizer


def trainer_total_steps(trainer: pl.Trainer) -> int:
    """Optimizer steps of the whole fit: ``trainer.estimated_stepping_batches`` (ValueError when unbounded)."""
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total) or total < 1:
        raise ValueError(
            f"total_steps: the trainer's number of steps is not known ({total}); set max_steps or max_epochs "
            "with a sized train dataloader, or give total_steps"
        )
    return int(total)


def trainer_steps_per_epoch(trainer: pl.Trainer) -> int:
    """Optimizer steps per epoch: ``ceil(num_training_batches / accumulate_grad_batches)`` (as Lightning counts)."""
    if trainer.max_epochs != -1:
        trainer.estimated_stepping_batches  # noqa: B018 - loads the train dataloader when it is not there yet
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches < 1:
        raise ValueError(
            f"the trainer's number of training batches per epoch is not known ({batches}): a timescale in epochs "
            "needs a sized train dataloader (or give steps_per_epoch)"
        )
    return math.ceil(batches / trainer.accumulate_grad_batches)


def build_lr_scheduler(
    optimizer: Optimizer,
    schedule: str = "cosine",
    *,
    warmup_steps: int = 0,
    warmup_ratio: float = 0.0,
    total_steps: int | None = None,
    min_lr_ratio: float = 0.0,
    trainer: pl.Trainer | None = None,
) -> LambdaLR:
    """A ``LambdaLR`` with :class:`WarmupSchedule` (to step once per optimizer step).

    ``warmup_ratio`` is a fraction of ``total_steps``; ``total_steps`` defaults to the trainer's estimate and is
    only needed for cosine/linear or a warmup ratio.
    """
    check_schedule_settings(schedule, warmup_steps, warmup_ratio, total_steps, min_lr_ratio)
    if total_steps is None and (schedule != "constant" or warmup_ratio):
        if trainer is None:
            raise ValueError(f"total_steps: a {schedule} schedule needs total_steps, or a trainer to estimate it")
        total_steps = trainer_total_steps(trainer)
    if warmup_ratio:
        warmup_steps = max(1, round(warmup_ratio * total_steps))
    multiplier = WarmupSchedule(
        total_steps=total_steps if total_steps is not None else max(1, warmup_steps),
        warmup_steps=warmup_steps,
        schedule=schedule,
        min_lr_ratio=min_lr_ratio,
    )
    return LambdaLR(optimizer, multiplier)


def build_optimizer_config(
    model: nn.Module | Iterable[Any],
    optimizer: OptimizerSpec = "adamw",
    lr: float | None = None,
    weight_decay: float | None = None,
    *,
    decay_timescale_epochs: float | None = None,
    steps_per_epoch: int | None = None,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    groups: ParamGroupSettings | Mapping[str, Any] | None = None,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    warmup_ratio: float = 0.0,
    total_steps: int | None = None,
    min_lr_ratio: float = 0.0,
    lr_scheduler: Callable[[Optimizer], Any] | None = None,
    lr_scheduler_interval: str = "epoch",
    lr_scheduler_monitor: str | None = None,
    trainer: pl.Trainer | None = None,
) -> OptimizerLRSchedulerConfig:
    """``{"optimizer": ..., "lr_scheduler": {"scheduler": ..., "interval": "step", ...}}`` for ``configure_optimizers``.

    The optimizer is :func:`build_optimizer`'s; the scheduler :func:`build_lr_scheduler`'s, stepped every optimizer
    step. ``decay_timescale_epochs`` (instead of ``weight_decay``) is converted with ``steps_per_epoch`` (default:
    the trainer's). ``lr_scheduler`` (LightningCLI's ``LRSchedulerCallable``) replaces the warmup schedule and is
    stepped per ``lr_scheduler_interval``; a ``ReduceLROnPlateau`` needs ``lr_scheduler_monitor``.
    """
    check_schedule_settings(schedule, warmup_steps, warmup_ratio, total_steps, min_lr_ratio)
    if lr_scheduler_interval not in ("step", "epoch"):
        raise ValueError(f"lr_scheduler_interval must be 'step' or 'epoch', got {lr_scheduler_interval!r}")
    decay_timescale_steps = None
    if decay_timescale_epochs is not None:
        _check_real("decay_timescale_epochs", decay_timescale_epochs, low=0.0, low_open=True)
        if weight_decay is not None:
            raise ValueError(
                f"give weight_decay or decay_timescale_epochs, not both (got {weight_decay} and "
                f"{decay_timescale_epochs})"
            )
        if steps_per_epoch is None:
            if trainer is None:
                raise ValueError("decay_timescale_epochs needs steps_per_epoch or a trainer to count them")
            steps_per_epoch = trainer_steps_per_epoch(trainer)
        _check_int("steps_per_epoch", steps_per_epoch, low=1)
        decay_timescale_steps = epochs_to_steps(decay_timescale_epochs, steps_per_epoch)
        if decay_timescale_steps <= 1.0:
            raise ValueError(
                f"decay_timescale_epochs={decay_timescale_epochs:g} is {decay_timescale_steps:g} steps at "
                f"{steps_per_epoch} steps per epoch; it must be more than 1 step"
            )
    built = build_optimizer(
        model, optimizer, lr, weight_decay, decay_timescale_steps=decay_timescale_steps, betas=betas, eps=eps,
        optimizer_kwargs=optimizer_kwargs, groups=groups,
    )
    scheduler_config: LRSchedulerConfigType
    if lr_scheduler is not None:
        scheduler = lr_scheduler(built)
        scheduler_config = {"scheduler": scheduler, "interval": lr_scheduler_interval, "frequency": 1}
        if isinstance(scheduler, ReduceLROnPlateau):
            if not lr_scheduler_monitor:
                raise ValueError("lr_scheduler_monitor: ReduceLROnPlateau needs the metric to monitor")
            scheduler_config["monitor"] = lr_scheduler_monitor
    else:
        scheduler = build_lr_scheduler(
            built, schedule, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio, total_steps=total_steps,
            min_lr_ratio=min_lr_ratio, trainer=trainer,
        )
        scheduler_config = {"scheduler": scheduler, "interval": "step", "frequency": 1}
    return {"optimizer": built, "lr_scheduler": scheduler_config}
