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

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.types import LRSchedulerConfigType, OptimizerLRSchedulerConfig
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lightning_decay.integration.construction import (
    OptimizerMaker,
    OptimizerSpec,
    check_optimizer_settings,
    optimizer_rule,
    resolve_optimizer,
    signature_default,
    warn_unread_normalized,
    with_tensor_lrs,
)
from lightning_decay.integration.group_settings import ParamGroupSettings
from lightning_decay.integration.muon_split import OthersSettings
from lightning_decay.integration.plan import DecayPlan, build, build_optimizer_of, resolve
from lightning_decay.integration.schedules import (
    build_lr_scheduler,
    check_schedule_settings,
    check_scheduler_interval,
    trainer_steps_per_epoch,
    trainer_total_steps,
)
from lightning_decay.integration.settings import DecaySettings
from lightning_decay.optim.conventions import decay_rule_of, epochs_to_steps, weight_decay_for_timescale
from lightning_decay.optim.registry import REGISTRY
from lightning_decay.validation import (
    check_bool,
    check_int,
    check_positive,
    check_real,
)

__all__ = [
    "resolve_optimizer",
    "optimizer_rule",
    "check_optimizer_settings",
    "build_optimizer",
    "build_optimizer_config",
]



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
    tensor_lr: bool = False,
    kernel: str | type[Optimizer] | None = None,
    others: OthersSettings | Mapping[str, Any] | None = None,
) -> Optimizer:
    """The optimizer on ``params``: a module (resolved into a :class:`~lightning_decay.integration.plan.DecayPlan`:
    named groups by ``groups``, Muon routes, transposed layers) or ready parameters / group dicts (used as given).

    ``None`` settings are the optimizer's defaults. ``decay_timescale_steps`` (instead of ``weight_decay``) sets,
    for every group without its own ``weight_decay``, the weight decay whose EMA timescale at that group's peak lr
    is that many steps (:func:`~lightning_decay.optim.conventions.weight_decay_for_timescale`, through the optimizer's
    decay rule). ``tensor_lr`` gives every group its own 0-dim tensor lr (capturable / compiled training loops).
    ``kernel`` runs the variant ``optimizer`` on another optimizer's step (e.g. ``"torchao.optim.AdamW8bit"``: 8-bit
    state; :func:`~lightning_decay.optim.kernels.on_kernel`).
    """
    if weight_decay is not None and decay_timescale_steps is not None:
        raise ValueError(
            f"give weight_decay or decay_timescale_steps, not both (got {weight_decay} and {decay_timescale_steps})"
        )
    if decay_timescale_steps is not None:
        check_real("decay_timescale_steps", decay_timescale_steps, low=1.0, low_open=True)
    if isinstance(params, nn.Module):
        plan = plan_for_module(params, optimizer, lr, weight_decay, decay_timescale_steps=decay_timescale_steps,
                               betas=betas, eps=eps, optimizer_kwargs=optimizer_kwargs, groups=groups,
                               tensor_lr=tensor_lr, kernel=kernel, others=others, schedule="constant")
        return build_optimizer_of(plan, params, optimizer_callable=_callable(optimizer))
    if groups is not None:
        raise ValueError("groups applies to a module; params are already given as tensors or group dicts")
    if others is not None or _is_muon(optimizer):
        name = optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", repr(optimizer))
        raise ValueError(f"optimizer {name!r}: a Muon variant splits a module's parameters; pass the model")
    make = OptimizerMaker(optimizer, lr, weight_decay, betas, eps, optimizer_kwargs, kernel)
    items = list(params)
    if all(isinstance(item, Mapping) for item in items):
        param_groups = [{**item, "params": list(item["params"])} for item in items]
    elif not any(isinstance(item, Mapping) for item in items):
        param_groups = [{"params": items}]
    else:
        raise TypeError("params must be all tensors or all group dicts, not a mix")
    check_bool("tensor_lr", tensor_lr)
    if decay_timescale_steps is None:
        return with_tensor_lrs(warn_unread_normalized(make(param_groups)), tensor_lr)
    probe = make([{**group, "params": list(group["params"])} for group in param_groups])
    base_lr = float(probe.defaults["lr"])
    base_weight_decay = weight_decay_for_timescale(decay_timescale_steps, base_lr, decay_rule_of(probe))
    for group, probe_group in zip(param_groups, probe.param_groups):
        if "weight_decay" not in group:
            rule = decay_rule_of(probe, probe_group)
            group["weight_decay"] = weight_decay_for_timescale(decay_timescale_steps, float(probe_group["lr"]), rule)
    return with_tensor_lrs(warn_unread_normalized(make(param_groups, weight_decay=base_weight_decay)), tensor_lr)


def _callable(optimizer: OptimizerSpec) -> Callable[[Iterable[Any]], Optimizer] | None:
    return None if isinstance(optimizer, (str, type)) else optimizer


def _is_muon(optimizer: OptimizerSpec) -> bool:
    return isinstance(optimizer, str) and optimizer in REGISTRY and REGISTRY[optimizer].family == "muon"


def plan_for_module(
    model: nn.Module,
    optimizer: OptimizerSpec = "adamw",
    lr: float | None = None,
    weight_decay: float | None = None,
    *,
    decay_timescale_steps: float | None = None,
    steps_per_epoch: int | None = None,
    fit_steps: int | None = None,
    lr_scheduler: Callable[[Optimizer], Any] | None = None,
    **settings: Any,
) -> DecayPlan:
    """The plan of the factory's arguments for ``model`` (``settings``: the other fields of
    :class:`~lightning_decay.integration.settings.DecaySettings`); ``lr=None`` is the optimizer's default lr,
    ``fit_steps`` the fit's optimizer steps (the trainer's estimate)."""
    injected = _callable(optimizer)
    if injected is not None:
        given = {"lr": lr, "weight_decay": weight_decay, "betas": settings.get("betas"), "eps": settings.get("eps")}
        given = {key: value for key, value in given.items() if value is not None}
        if given or settings.get("optimizer_kwargs"):
            raise ValueError(
                f"with an optimizer callable, set {sorted(given) or sorted(settings['optimizer_kwargs'])} in the "
                "callable (e.g. its init_args), not as separate settings"
            )
        if settings.get("kernel") is not None:
            raise ValueError("kernel: set the variant by name (optimizer), not with an optimizer callable")
        decay = DecaySettings(**{key: value for key, value in settings.items() if value is not None
                                 and key not in ("betas", "eps", "optimizer_kwargs", "kernel")})
    else:
        if lr is None:
            lr = signature_default(resolve_optimizer(optimizer, settings.get("kernel"))[0], "lr")  # type: ignore[arg-type]
        decay = DecaySettings(optimizer=optimizer, lr=lr, weight_decay=weight_decay,  # type: ignore[arg-type]
                              **{key: value for key, value in settings.items() if value is not None})
    return resolve(decay, model, steps_per_epoch=steps_per_epoch, total_steps=fit_steps,
                   optimizer_callable=injected, lr_scheduler_callable=lr_scheduler,
                   decay_timescale_steps=decay_timescale_steps)


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
    tensor_lr: bool = False,
    kernel: str | type[Optimizer] | None = None,
    others: OthersSettings | Mapping[str, Any] | None = None,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    warmup_ratio: float = 0.0,
    total_steps: int | None = None,
    min_lr_ratio: float = 0.0,
    lr_scheduler: Callable[[Optimizer], Any] | None = None,
    lr_scheduler_interval: str | None = None,
    lr_scheduler_monitor: str | None = None,
    trainer: pl.Trainer | None = None,
) -> OptimizerLRSchedulerConfig:
    """``{"optimizer": ..., "lr_scheduler": {"scheduler": ..., "interval": "step", ...}}`` for ``configure_optimizers``.

    The optimizer is :func:`build_optimizer`'s; the scheduler the warmup schedule
    (:class:`~lightning_decay.integration.schedules.WarmupSchedule`), stepped every optimizer step.
    ``decay_timescale_epochs`` (instead of ``weight_decay``) is converted with ``steps_per_epoch`` (default: the
    trainer's). ``lr_scheduler`` (LightningCLI's ``LRSchedulerCallable``) replaces the warmup schedule and is
    stepped per ``lr_scheduler_interval`` (default ``"epoch"``, as in Lightning; without ``lr_scheduler`` the
    interval and ``lr_scheduler_monitor`` are an error); a ``ReduceLROnPlateau`` needs ``lr_scheduler_monitor``.
    """
    check_schedule_settings(schedule, warmup_steps, warmup_ratio, total_steps, min_lr_ratio)
    check_scheduler_interval(lr_scheduler_interval, lr_scheduler_monitor, lr_scheduler is not None)
    if lr_scheduler_interval not in (None, "step", "epoch"):
        raise ValueError(f"lr_scheduler_interval must be 'step' or 'epoch', got {lr_scheduler_interval!r}")
    if decay_timescale_epochs is not None:
        check_positive("decay_timescale_epochs", decay_timescale_epochs)
        if weight_decay is not None:
            raise ValueError(
                f"give weight_decay or decay_timescale_epochs, not both (got {weight_decay} and "
                f"{decay_timescale_epochs})"
            )
        if steps_per_epoch is None:
            if trainer is None:
                raise ValueError("decay_timescale_epochs needs steps_per_epoch or a trainer to count them")
            steps_per_epoch = trainer_steps_per_epoch(trainer)
        check_int("steps_per_epoch", steps_per_epoch, low=1)
    if not isinstance(model, nn.Module):
        return _config_for_tensors(model, optimizer, lr, weight_decay, decay_timescale_epochs, steps_per_epoch,
                                   betas=betas, eps=eps, optimizer_kwargs=optimizer_kwargs, tensor_lr=tensor_lr,
                                   kernel=kernel, schedule=schedule, warmup_steps=warmup_steps,
                                   warmup_ratio=warmup_ratio, total_steps=total_steps, min_lr_ratio=min_lr_ratio,
                                   lr_scheduler=lr_scheduler, lr_scheduler_interval=lr_scheduler_interval,
                                   lr_scheduler_monitor=lr_scheduler_monitor, trainer=trainer)
    fit_steps = None
    if trainer is not None and total_steps is None and lr_scheduler is None and (schedule != "constant"
                                                                                  or warmup_ratio):
        fit_steps = trainer_total_steps(trainer)
    plan = plan_for_module(
        model, optimizer, lr, weight_decay, steps_per_epoch=steps_per_epoch, fit_steps=fit_steps,
        lr_scheduler=lr_scheduler, decay_timescale_epochs=decay_timescale_epochs, betas=betas, eps=eps,
        optimizer_kwargs=optimizer_kwargs, groups=groups, tensor_lr=tensor_lr, kernel=kernel, others=others,
        schedule=schedule, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio, total_steps=total_steps,
        min_lr_ratio=min_lr_ratio, lr_scheduler_interval=lr_scheduler_interval,
        lr_scheduler_monitor=lr_scheduler_monitor,
    )
    return build(plan, model, optimizer_callable=_callable(optimizer), lr_scheduler_callable=lr_scheduler)


def _config_for_tensors(
    params: Iterable[Any], optimizer: OptimizerSpec, lr: float | None, weight_decay: float | None,
    decay_timescale_epochs: float | None, steps_per_epoch: int | None, *, schedule: str, warmup_steps: int,
    warmup_ratio: float, total_steps: int | None, min_lr_ratio: float, lr_scheduler: Callable[[Optimizer], Any] | None,
    lr_scheduler_interval: str | None, lr_scheduler_monitor: str | None, trainer: pl.Trainer | None, **settings: Any,
) -> OptimizerLRSchedulerConfig:
    """:func:`build_optimizer_config` for ready parameters or group dicts (no module: no plan)."""
    tau = epochs_to_steps(decay_timescale_epochs, steps_per_epoch) if decay_timescale_epochs is not None else None
    if tau is not None and tau <= 1.0:
        raise ValueError(f"decay_timescale_epochs={decay_timescale_epochs:g} is {tau:g} steps at {steps_per_epoch} "
                         "steps per epoch; it must be more than 1 step")
    built = build_optimizer(params, optimizer, lr, weight_decay, decay_timescale_steps=tau, **settings)
    scheduler_config: LRSchedulerConfigType
    if lr_scheduler is not None:
        scheduler = lr_scheduler(built)
        scheduler_config = {"scheduler": scheduler, "interval": lr_scheduler_interval or "epoch", "frequency": 1}
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
