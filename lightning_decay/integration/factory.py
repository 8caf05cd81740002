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
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.types import LRSchedulerConfigType, OptimizerLRSchedulerConfig
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lightning_decay.integration.muon_split import OthersSettings, route_for_muon, split_groups
from lightning_decay.integration.param_groups import ParamGroupSettings, build_param_groups
from lightning_decay.integration.schedules import build_lr_scheduler, check_schedule_settings, trainer_steps_per_epoch
from lightning_decay.optim.combined import CombinedOptimizer
from lightning_decay.optim.conventions import decay_rule_of, epochs_to_steps, weight_decay_for_timescale
from lightning_decay.optim.kernels import on_kernel
from lightning_decay.optim.registry import REGISTRY, get_variant, record_of_class, resolve_variant, rule_of
from lightning_decay.optim.rules import DecayRule
from lightning_decay.validation import (
    check_betas,
    check_bool,
    check_int,
    check_lr,
    check_nonnegative,
    check_positive,
    check_real,
    is_real,
)

__all__ = [
    "resolve_optimizer",
    "optimizer_rule",
    "check_optimizer_settings",
    "build_optimizer",
    "build_optimizer_config",
]

OptimizerSpec = str | type[Optimizer] | Callable[[Iterable[Any]], Optimizer]


def resolve_optimizer(
    optimizer: str | type[Optimizer], kernel: str | type[Optimizer] | None = None
) -> tuple[type[Optimizer], dict[str, Any]]:
    """``(class, fixed kwargs)`` of a variant name, a dotted ``Optimizer`` class path or an ``Optimizer`` class.

    An unknown name raises ValueError listing the valid variant names (read from ``REGISTRY``). With ``kernel`` (an
    optimizer class or its dotted path, e.g. ``"torchao.optim.AdamW8bit"``), the variant's rule on that kernel
    (:func:`~lightning_decay.optim.kernels.on_kernel`); ``optimizer`` must then be a variant name.
    """
    if kernel is not None:
        if not isinstance(optimizer, str) or optimizer.strip().lower().replace("_", "-") not in REGISTRY:
            raise ValueError(
                f"kernel runs a variant's rule on another optimizer's step: optimizer must be a variant name "
                f"({', '.join(REGISTRY)}), got {optimizer!r}"
            )
        return on_kernel(kernel, optimizer), {}
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
    kernel: str | type[Optimizer] | None = None,
) -> tuple[type[Optimizer], dict[str, Any]]:
    """The class and the keyword arguments to build it with; ValueError naming a setting the class cannot take."""
    cls, fixed = resolve_optimizer(optimizer, kernel)
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


def _signature_default(cls: type, name: str) -> Any:
    parameter = inspect.signature(cls).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def optimizer_rule(
    optimizer: str | type[Optimizer], optimizer_kwargs: Mapping[str, Any] | None = None,
    kernel: str | type[Optimizer] | None = None,
) -> DecayRule | None:
    """The decay rule a variant name or an optimizer class applies (None when no rule describes it), from the
    registry and the class's fixed arguments; nothing is built. With ``kernel``: the variant's rule."""
    if kernel is not None:
        return rule_of(resolve_optimizer(optimizer, kernel)[0])
    if isinstance(optimizer, str):
        try:
            return get_variant(optimizer).rule
        except ValueError:
            pass
    cls, fixed = resolve_optimizer(optimizer)
    record = record_of_class(cls, {**fixed, **dict(optimizer_kwargs or {})})
    return record.rule if record is not None else rule_of(cls)


def check_optimizer_settings(
    optimizer: OptimizerSpec,
    lr: float | None = None,
    weight_decay: float | None = None,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    kernel: str | type[Optimizer] | None = None,
) -> tuple[DecayRule | None, float | None]:
    """Validate optimizer settings before training; return ``(rule, peak lr)`` of the optimizer they describe.

    A variant name or class is checked without building anything: types and ranges
    (:mod:`lightning_decay.validation`), constructor arguments against the class's signature, and the rule's own
    domain at the peak lr (e.g. ``lr * weight_decay < 1`` for torch-convention AdamW). A callable can only be
    checked by calling it: it is called once on a dummy parameter. ``kernel`` (with a variant name): the class is
    the variant on that kernel; an unknown path, a class that is no optimizer, or a variant the kernel cannot run
    (elementwise, L2 on a decoupled kernel) is an error naming ``kernel``.
    """
    if lr is not None:
        check_lr("lr", lr)
    if weight_decay is not None:
        check_nonnegative("weight_decay", weight_decay)
    if eps is not None:
        check_nonnegative("eps", eps)
    if betas is not None:
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Iterable):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        check_betas(tuple(betas))
    if optimizer_kwargs is not None and not isinstance(optimizer_kwargs, Mapping):
        raise TypeError(f"optimizer_kwargs must be a mapping, got {type(optimizer_kwargs).__name__}")
    if kernel is not None and not isinstance(kernel, (str, type)):
        raise TypeError(f"kernel must be an optimizer class path or class, got {type(kernel).__name__} {kernel!r}")
    if kernel is not None and not isinstance(optimizer, (str, type)):
        raise ValueError("kernel: set the variant by name (optimizer), not with an optimizer callable")
    if isinstance(optimizer, (str, type)):
        cls, kwargs = _constructor_kwargs(optimizer, lr, weight_decay, betas, eps, optimizer_kwargs, kernel)
        rule = optimizer_rule(optimizer, optimizer_kwargs, kernel)
        peak_lr = kwargs.get("lr", _signature_default(cls, "lr"))
        peak_lr = float(peak_lr) if is_real(peak_lr) else None
        if rule is not None and peak_lr is not None and weight_decay is not None:
            rule.check(peak_lr, peak_lr, weight_decay)
        return rule, peak_lr
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
        return rule_of(trial), float(trial.defaults["lr"]) if is_real(trial.defaults.get("lr")) else None
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
        kernel: str | type[Optimizer] | None = None,
    ) -> None:
        check_optimizer_settings(optimizer, lr, weight_decay, betas, eps, optimizer_kwargs, kernel)
        self.callable: Callable[[Iterable[Any]], Optimizer] | None = None
        if isinstance(optimizer, (str, type)):
            self.cls, self.kwargs = _constructor_kwargs(
                optimizer, lr, weight_decay, betas, eps, optimizer_kwargs, kernel
            )
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
    tensor_lr: bool = False,
    kernel: str | type[Optimizer] | None = None,
    others: OthersSettings | Mapping[str, Any] | None = None,
) -> Optimizer:
    """The optimizer on ``params``: a module (split into named groups by ``groups``, see
    :mod:`lightning_decay.integration.param_groups`) or ready parameters / group dicts (used as given).

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
    if others is not None or (isinstance(optimizer, str) and optimizer in REGISTRY and
                              REGISTRY[optimizer].family == "muon" and isinstance(params, nn.Module)):
        return _build_muon_with_others(
            params, optimizer, lr, weight_decay, decay_timescale_steps, optimizer_kwargs, groups, tensor_lr, kernel,
            betas, eps, OthersSettings.coerce(others),
        )
    make = _OptimizerMaker(optimizer, lr, weight_decay, betas, eps, optimizer_kwargs, kernel)
    if decay_timescale_steps is not None:
        check_real("decay_timescale_steps", decay_timescale_steps, low=1.0, low_open=True)
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
    check_bool("tensor_lr", tensor_lr)
    if decay_timescale_steps is None:
        return _with_tensor_lrs(_warn_unread_normalized(make(param_groups)), tensor_lr)
    probe = make(_copy_groups(param_groups))
    base_lr = float(probe.defaults["lr"])
    base_weight_decay = weight_decay_for_timescale(decay_timescale_steps, base_lr, decay_rule_of(probe))
    for group, probe_group in zip(param_groups, probe.param_groups):
        if "weight_decay" not in group:
            rule = decay_rule_of(probe, probe_group)
            group["weight_decay"] = weight_decay_for_timescale(decay_timescale_steps, float(probe_group["lr"]), rule)
    return _with_tensor_lrs(_warn_unread_normalized(make(param_groups, weight_decay=base_weight_decay)), tensor_lr)


def _with_tensor_lrs(optimizer: Optimizer, tensor_lr: bool) -> Optimizer:
    """With ``tensor_lr``, each group's lr becomes its own 0-dim tensor on the group's device (float32 on CUDA, as
    torch's fused kernels read it; float64 elsewhere): schedulers then fill it in place, and no two groups share
    one tensor (they would share their schedule)."""
    if tensor_lr:
        for group in optimizer.param_groups:
            device = group["params"][0].device
            dtype = torch.float32 if device.type == "cuda" else torch.float64
            group["lr"] = torch.tensor(float(group["lr"]), dtype=dtype, device=device)
    return optimizer


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
    lr_scheduler_interval: str = "step",
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
        decay_timescale_steps = epochs_to_steps(decay_timescale_epochs, steps_per_epoch)
        if decay_timescale_steps <= 1.0:
            raise ValueError(
                f"decay_timescale_epochs={decay_timescale_epochs:g} is {decay_timescale_steps:g} steps at "
                f"{steps_per_epoch} steps per epoch; it must be more than 1 step"
            )
    built = build_optimizer(
        model, optimizer, lr, weight_decay, decay_timescale_steps=decay_timescale_steps, betas=betas, eps=eps,
        optimizer_kwargs=optimizer_kwargs, groups=groups, tensor_lr=tensor_lr, kernel=kernel, others=others,
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


def _build_muon_with_others(
    model: nn.Module | Iterable[Any],
    optimizer: OptimizerSpec,
    lr: float | None,
    weight_decay: float | None,
    decay_timescale_steps: float | None,
    optimizer_kwargs: Mapping[str, Any] | None,
    groups: ParamGroupSettings | Mapping[str, Any] | None,
    tensor_lr: bool,
    kernel: str | type[Optimizer] | None,
    betas: tuple[float, float] | None,
    eps: float | None,
    others: OthersSettings | None,
) -> Optimizer:
    """A Muon variant on the model's hidden matrices and ``others`` on the rest, as one
    :class:`~lightning_decay.optim.combined.CombinedOptimizer` (:mod:`~lightning_decay.integration.muon_split`)."""
    name = optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", repr(optimizer))
    if not (isinstance(optimizer, str) and optimizer in REGISTRY and REGISTRY[optimizer].family == "muon"):
        raise ValueError(f"others: the optimizer of the parameters Muon does not step, but optimizer is {name!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"optimizer {name!r}: a Muon variant splits a module's parameters; pass the model")
    for setting, value in (("kernel", kernel), ("betas", betas), ("eps", eps)):
        if value is not None:
            raise ValueError(f"{setting}: {name!r} runs torch's Muon, which has no {setting}; set others.{setting} "
                             "for the optimizer of the other parameters")
    routes = route_for_muon(model, others)
    rest = [route.name for route in routes if not route.muon]
    if not any(route.muon for route in routes):
        filters = any(route.reason.endswith("convolution filter)") for route in routes)
        hint = " (its convolution filters go to others unless others.flatten_convolutions is true)" if filters else ""
        raise ValueError(f"optimizer {name!r}: {type(model).__name__} has no hidden weight matrix for Muon{hint}")
    if rest and others is None:
        shown = ", ".join(rest[:4]) + (", ..." if len(rest) > 4 else "")
        raise ValueError(
            f"others: {name!r} steps only hidden weight matrices; {len(rest)} parameters ({shown}) need another "
            "optimizer: set decay.others, e.g. {optimizer: adamw, lr: 0.001}"
        )
    if others is not None and not rest:
        raise ValueError(f"others: every trainable parameter of {type(model).__name__} is a hidden matrix that "
                         f"{name!r} steps; others would step nothing (drop it)")
    settings = ParamGroupSettings.coerce(groups)
    muon_lr = lr if lr is not None else _signature_default(REGISTRY[optimizer].optimizer, "lr")
    muon_groups, _ = split_groups(model, build_param_groups(model, settings, base_lr=muon_lr), [], routes)
    muon = build_optimizer(muon_groups, optimizer, lr, weight_decay, decay_timescale_steps=decay_timescale_steps,
                           optimizer_kwargs=optimizer_kwargs, tensor_lr=tensor_lr)
    if others is None:
        return muon
    other_cls, _ = resolve_optimizer(others.optimizer, others.kernel)
    other_lr = others.lr if others.lr is not None else _signature_default(other_cls, "lr")
    _, other_groups = split_groups(model, [], build_param_groups(model, settings, base_lr=other_lr, warn_unused=False),
                                   routes)
    rest_optimizer = build_optimizer(
        other_groups, others.optimizer, others.lr, others.weight_decay, decay_timescale_steps=decay_timescale_steps,
        betas=others.betas, eps=others.eps, optimizer_kwargs=others.optimizer_kwargs, tensor_lr=tensor_lr,
        kernel=others.kernel,
    )
    return CombinedOptimizer([muon, rest_optimizer])
