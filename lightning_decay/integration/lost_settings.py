"""No setting is lost silently: the checks behind ``DecayMixin``'s guarantees, apart from the mixin itself.

* :func:`check_arguments_arrived`: a subclass ``__init__`` that received ``decay`` / ``optimizer_callable`` /
  ``lr_scheduler_callable`` and did not pass them on (read from the calling frames, as Lightning's
  ``save_hyperparameters`` reads the ``__init__`` arguments: the one place the package inspects frames);
* :func:`optimizer_source_problem`: the fit's optimizer is not the one the mixin built, and settings would be lost;
* :func:`check_callables`: injected callables are callable, build what they should and do not fight ``decay``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import FrameType
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_decay.integration.construction import check_optimizer_settings
from lightning_decay.integration.factory import build_optimizer
from lightning_decay.integration.schedules import check_scheduler_interval
from lightning_decay.integration.settings import (
    GENERAL_FIELDS,
    OPTIMIZER_FIELDS,
    SCHEDULE_FIELDS,
    DecaySettings,
    check_timescale_settings,
)

__all__ = ["MIXIN_ARGUMENTS", "unwrap_optimizer", "check_arguments_arrived", "optimizer_source_problem",
           "check_callables"]

#: The arguments of ``DecayMixin.__init__`` that a subclass must pass on.
MIXIN_ARGUMENTS = ("decay", "optimizer_callable", "lr_scheduler_callable")


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside Lightning's ``LightningOptimizer`` (or a strategy's wrapper), else itself."""
    for attribute in ("_optimizer", "optimizer"):
        inner = getattr(optimizer, attribute, None)
        if isinstance(inner, Optimizer):
            return inner
    return optimizer


def compact(settings: DecaySettings) -> str:
    """``DecaySettings(optimizer='proxadam', lr=0.0003)``: only what differs from the defaults."""
    return f"DecaySettings({', '.join(f'{key}={value!r}' for key, value in settings.changed().items())})"


def settings_text(model: Any) -> str:
    """``optimizer='adamw', lr=0.001, weight_decay=AdamW's default``: what the model trains with."""
    settings = model.decay_settings
    if model.optimizer_callable is not None:
        return "its optimizer_callable"
    weight_decay = f"{settings.weight_decay:g}" if settings.weight_decay is not None else "the optimizer's default"
    return f"optimizer={settings.optimizer!r}, lr={settings.lr:g}, weight_decay={weight_decay}"


def describe_argument(name: str, value: Any) -> str:
    if name == "decay":
        try:
            return f"decay={compact(DecaySettings.coerce(value))}"
        except (TypeError, ValueError):
            pass
    text = repr(value)
    return f"{name}={text if len(text) <= 120 else text[:117] + '...'}"


def argument_lost(name: str, value: Any, model: Any, decay_received: bool) -> bool:
    """True when ``value``, given to a subclass's ``__init__`` as ``name``, never reached ``DecayMixin.__init__``."""
    if value is None:
        return False
    if name != "decay":
        return getattr(model, name) is None
    if decay_received:
        return False
    try:
        return DecaySettings.coerce(value) != model.decay_settings
    except (TypeError, ValueError):
        return True  # invalid and dropped: say that it was dropped


def check_arguments_arrived(model: Any, frame: FrameType | None, decay_received: bool) -> None:
    """ValueError when a subclass's ``__init__`` received ``decay`` / ``optimizer_callable`` /
    ``lr_scheduler_callable`` (as a named argument or in ``**kwargs``) and did not pass it on to ``DecayMixin``.

    Reads the ``__init__`` frames of ``model`` that called the mixin's (as ``save_hyperparameters`` does), from the
    innermost: the first one holding a lost argument is the one that dropped it."""
    while frame is not None and frame.f_code.co_name == "__init__":
        arguments = inspect.getargvalues(frame)
        if not arguments.args or frame.f_locals.get(arguments.args[0]) is not model:
            return
        given = {name: frame.f_locals.get(name) for name in arguments.args[1:] if name in MIXIN_ARGUMENTS}
        extra = frame.f_locals.get(arguments.keywords) if arguments.keywords else None
        if isinstance(extra, Mapping):
            given.update({name: extra[name] for name in MIXIN_ARGUMENTS if name in extra})
        lost = [name for name, value in given.items() if argument_lost(name, value, model, decay_received)]
        if lost:
            cls = frame.f_locals.get("__class__")
            where = getattr(frame.f_code, "co_qualname", None) or (
                f"{cls.__name__}.__init__" if isinstance(cls, type) else f"{type(model).__name__}.__init__"
            )
            passed = ", ".join(f"{name}={name}" for name in lost)
            raise ValueError(
                f"{type(model).__name__}: {where} received {', '.join(describe_argument(n, given[n]) for n in lost)} "
                f"but did not pass it on to DecayMixin, so the model would train with "
                f"{settings_text(model) if 'decay' in lost else 'the built-in optimizer and schedule'} instead. "
                f"Pass it on: super().__init__(**kwargs) (or super().__init__({passed}))"
            )
        frame = frame.f_back


def external_settings(model: Any) -> list[str]:
    """What the mixin was given that only its own optimizer and schedule use."""
    lost = [f"decay.{name}={value!r}" for name, value in model.decay_settings.changed().items()
            if name not in GENERAL_FIELDS]
    lost += [name for name in ("optimizer_callable", "lr_scheduler_callable") if getattr(model, name) is not None]
    return lost


def optimizer_source_problem(
    model: Any, optimizers: list[Any], built: list[Any], own_configure: bool
) -> str | None:
    """The error for :meth:`DecayMixin.check_optimizer_source`, or None when nothing is lost."""
    inner = [unwrap_optimizer(optimizer) for optimizer in optimizers]
    if any(optimizer is mine for optimizer in inner for mine in built):
        return None
    cls = type(model).__name__
    used = ", ".join(type(optimizer).__name__ for optimizer in inner) or "no optimizer"
    lost = external_settings(model)
    ignored = f"; ignored: {', '.join(lost)}" if lost else ""
    if "configure_optimizers" in vars(model):  # LightningCLI's top-level optimizer: / lr_scheduler: keys
        return (
            f"{cls}: LightningCLI's top-level `optimizer:` key replaced DecayMixin's optimizer with {used} on "
            f"model.parameters(): one parameter group, so biases and normalization weights decay and the named groups "
            f"are lost{ignored}. Instead: set the variant in the model's decay block (model.decay.optimizer, "
            f"model.init_args.decay.optimizer under a class_path) or inject a class with model.optimizer_callable; "
            f"both keep the groups. To train with the top-level key anyway, set decay.allow_external_optimizer: true"
        )
    if not own_configure or not lost:
        return None
    return (
        f"{cls}: {cls}.configure_optimizers returned {used}, not DecayMixin's optimizer{ignored}. Instead: return "
        f"self.configure_decay_optimizers() from {cls}.configure_optimizers (or delete it), or do not pass these "
        f"settings; to train with {used} anyway, set decay.allow_external_optimizer=True"
    )


def check_callables(
    settings: DecaySettings,
    optimizer_callable: OptimizerCallable | None,
    lr_scheduler_callable: LRSchedulerCallable | None,
) -> None:
    """Callables are callable, build what they should, and do not fight with ``decay`` settings."""
    defaults = DecaySettings.defaults()
    check_scheduler_interval(settings.lr_scheduler_interval, settings.lr_scheduler_monitor,
                             lr_scheduler_callable is not None)
    if optimizer_callable is not None:
        if not callable(optimizer_callable):
            raise TypeError(f"optimizer_callable must be callable (params -> Optimizer), got {optimizer_callable!r}")
        changed = [name for name in OPTIMIZER_FIELDS if getattr(settings, name) != getattr(defaults, name)]
        if changed:
            raise ValueError(
                f"decay.{', decay.'.join(changed)} would be ignored: with optimizer_callable, set the optimizer's "
                "arguments in the callable (its init_args)"
            )
        rule, peak_lr = check_optimizer_settings(optimizer_callable)
        if settings.decay_timescale_epochs is not None:
            check_timescale_settings(settings.decay_timescale_epochs, None, rule, peak_lr)
    if lr_scheduler_callable is not None:
        if not callable(lr_scheduler_callable):
            raise TypeError(
                f"lr_scheduler_callable must be callable (optimizer -> scheduler), got {lr_scheduler_callable!r}"
            )
        changed = [name for name in SCHEDULE_FIELDS if getattr(settings, name) != getattr(defaults, name)]
        if changed:
            raise ValueError(
                f"decay.{', decay.'.join(changed)} would be ignored: they set the built-in schedule, which "
                "lr_scheduler_callable replaces"
            )
        # A scheduler callable can only be checked by calling it, on the optimizer it will get (one dummy tensor).
        trial = build_optimizer(
            [torch.zeros(1, requires_grad=True)],
            optimizer_callable if optimizer_callable is not None else settings.optimizer,
            *(() if optimizer_callable is not None else (settings.lr, settings.weight_decay)),
            **({} if optimizer_callable is not None else {
                "betas": settings.betas, "eps": settings.eps, "optimizer_kwargs": settings.optimizer_kwargs,
                "kernel": settings.kernel,
            }),
        )
        scheduler = lr_scheduler_callable(trial)
        if not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
            raise TypeError(f"lr_scheduler_callable returned {type(scheduler).__name__}, not an LR scheduler")
        if isinstance(scheduler, ReduceLROnPlateau) and not settings.lr_scheduler_monitor:
            raise ValueError("decay.lr_scheduler_monitor: ReduceLROnPlateau needs the metric to monitor")
