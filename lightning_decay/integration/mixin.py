"""``DecayMixin``: one base class that gives a LightningModule its weight-decay optimizer and lr schedule.

.. code-block:: python

    class MyModel(DecayMixin, LightningModule):          # DecayMixin first
        def __init__(self, hidden: int = 64, **kwargs):  # **kwargs reach DecayMixin (decay=..., optimizer_callable=...)
            super().__init__(**kwargs)
            self.save_hyperparameters()
            ...

    MyModel(decay=DecaySettings(optimizer="proxadam", lr=3e-4, weight_decay=0.1, warmup_steps=500))
    MyModel(decay=DecaySettings(optimizer="adamw", decay_timescale_epochs=10))  # wd from the EMA timescale
    MyModel().set_decay(optimizer="adamw-paper", weight_decay=1e-4)            # unchanged __init__

Without settings the model trains with AdamW (torch convention, torch's default weight decay 1e-2), lr 1e-3,
cosine decay over the fit, biases / norms / 1-D parameters without decay, and an error naming the parameter when
a gradient is NaN or inf (``nonfinite_grads``; see :mod:`lightning_decay.integration.guards` and
``docs/reliability.md``).

No setting is lost silently: a subclass whose ``__init__`` takes ``decay=`` (or ``**kwargs``) but does not pass it on
raises when built; an optimizer that the mixin did not build (the model's own ``configure_optimizers`` given decay
settings, LightningCLI's top-level ``optimizer:`` key) raises at fit start unless ``decay.allow_external_optimizer``.
At fit start one summary names the variant, its convention, the schedule, every group's weight decay and decay
timescale, and notes a timescale far longer than the fit or shorter than one epoch.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import FrameType
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.enums import GradClipAlgorithmType
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_decay.integration.construction import check_optimizer_settings
from lightning_decay.integration.factory import build_optimizer
from lightning_decay.integration.guards import GradientGuard, NonFiniteGradientGuard
from lightning_decay.integration.plan import DecayPlan, build, resolve
from lightning_decay.integration.schedules import check_scheduler_interval, trainer_steps_per_epoch, trainer_total_steps
from lightning_decay.integration.settings import (
    GENERAL_FIELDS,
    OPTIMIZER_FIELDS,
    SCHEDULE_FIELDS,
    DecaySettings,
    check_timescale_settings,
)

__all__ = ["DecaySettings", "DecayMixin"]

_GUARD_KEY = "decay_mixin_gradient_guard"
#: The mixin's default settings: the one object ``decay`` holds when no caller passed it on.
_DEFAULT_DECAY = DecaySettings()
#: The arguments of ``DecayMixin.__init__`` that a subclass must pass on.
_MIXIN_ARGUMENTS = ("decay", "optimizer_callable", "lr_scheduler_callable")
#: Attributes set on optimizers: built by ``configure_decay_optimizers``; checked by ``check_optimizer_source``.
_BUILT_MARK = "_built_by_decay_mixin"
_CHECKED_MARK = "_checked_by_decay_mixin"


def _init_accepts(cls: type, name: str) -> bool:
    parameters = inspect.signature(cls.__init__).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


class DecayMixin:
    """Gives a ``LightningModule`` a ``configure_optimizers`` with a weight-decay variant, named parameter groups
    and a warmup + cosine/linear/constant schedule: ``class MyModel(DecayMixin, LightningModule)``.

    Arguments (keyword-only; a subclass passes them on with ``super().__init__(**kwargs)`` or names them and passes
    them on: a subclass ``__init__`` that receives one of them and does not pass it on raises a ValueError naming
    the class, since the model would otherwise train with the defaults):

    * ``decay``: :class:`DecaySettings` (also a mapping of its fields or a variant name). Default: AdamW in the
      torch convention with its default weight decay, lr 1e-3, cosine schedule.
    * ``optimizer_callable``: LightningCLI dependency injection (``OptimizerCallable``, ``params -> Optimizer``);
      it is called with the named parameter groups, so they survive. Set lr / weight_decay in it, not in
      ``decay`` (ValueError otherwise). ``decay.decay_timescale_epochs`` still works when it builds one of this
      package's optimizers.
    * ``lr_scheduler_callable``: (``LRSchedulerCallable``) replaces the built-in schedule, stepped per
      ``decay.lr_scheduler_interval``.

    **LightningCLI.** Use the model's keys, never LightningCLI's top-level ``optimizer:``/``lr_scheduler:`` keys:
    those build the optimizer on ``model.parameters()`` (one group: biases and norms decay, group names are lost)
    and replace this ``configure_optimizers``, so the fit stops with a ValueError at its start (``lightning-decay``:
    at parse time) unless ``decay.allow_external_optimizer: true``. Either the settings (YAML ``model: {decay:
    {optimizer: proxadam, lr: 3.0e-4, weight_decay: 0.1}}``, or ``--model.decay.optimizer proxadam``), or dependency
    injection (``model: {optimizer_callable: {class_path: lightning_decay.AdamW, init_args: {lr: 0.01,
    weight_decay: 0.05}}}``, or ``--model.optimizer_callable lightning_decay.AdamW --model.optimizer_callable.lr
    0.01``).
    Prefer ``decay`` (one block, validated when the model is built, variants by name, timescales); use
    ``optimizer_callable`` for an optimizer class outside ``VARIANTS`` whose arguments the CLI should document.

    **Hyperparameters.** ``hparams["decay"]`` holds the settings as a plain dict (``save_hyperparameters()``
    stores the ``decay`` argument; the mixin stores it itself when the model does not), so
    ``load_from_checkpoint`` rebuilds the same optimizer configuration. When the model's ``__init__`` cannot take
    ``decay`` (no such argument, no ``**kwargs``), the settings are restored from the checkpoint in
    ``on_load_checkpoint``. Callables given in Python are not plain data: prefer
    ``DecaySettings(optimizer="pkg.module.OptimizerClass", optimizer_kwargs=...)`` there; LightningCLI stores
    callables as ``class_path``/``init_args`` and rebuilds them.

    **Reliability** (``docs/reliability.md``). Every optimizer step checks the gradients for NaN/inf
    (``decay.nonfinite_grads``, :class:`~lightning_decay.integration.guards.GradientGuard`; skipped when the
    trainer has a :class:`~lightning_decay.integration.guards.NonFiniteGradientGuard` callback, which then decides);
    a subclass that overrides ``on_before_optimizer_step`` calls ``super().on_before_optimizer_step(optimizer)`` to
    keep it.
    Gradient clipping works under ``bf16-mixed`` and ``16-mixed`` for every variant, also with torch's fused
    kernels, for which Lightning alone refuses to clip (:meth:`configure_gradient_clipping`). The guard's counters
    are saved in checkpoints.

    After ``configure_optimizers``, :attr:`resolved_decay` holds the resolved numbers (variant, weight decay and
    timescale per group, steps per epoch, planned steps, notes); they are logged as hyperparameters (``decay/...``)
    and :attr:`decay_summary` is printed once: the variant and its convention, the schedule, each group's weight
    decay and timescale (with ``decay.verbose``, its parameter names), and a note when a decayed group's timescale
    is more than 10 times the planned fit or shorter than one epoch (:mod:`~lightning_decay.integration.summary`;
    the note also goes to a ``WandbLogger``'s run summary).

    If the model defines its own ``configure_optimizers``, call :meth:`configure_decay_optimizers` (or
    ``DecayMixin.configure_optimizers(self)``) from it: when it returns an optimizer the mixin did not build while
    decay settings or callables were given, the fit stops at its start with a ValueError naming the class (the
    settings would be ignored), unless ``decay.allow_external_optimizer``.
    """

    def __init__(
        self,
        *args: Any,
        decay: DecaySettings = _DEFAULT_DECAY,
        optimizer_callable: OptimizerCallable | None = None,
        lr_scheduler_callable: LRSchedulerCallable | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.decay_settings: DecaySettings = DecaySettings.coerce(decay)
        self.optimizer_callable = optimizer_callable
        self.lr_scheduler_callable = lr_scheduler_callable
        self.resolved_decay: dict[str, Any] = {}
        self.decay_summary: str = ""
        self.decay_plan: DecayPlan | None = None
        _check_callables(self.decay_settings, optimizer_callable, lr_scheduler_callable)
        settings = self.decay_settings
        self.gradient_guard = GradientGuard(settings.nonfinite_grads, settings.nonfinite_skip_limit)
        frame = inspect.currentframe()
        _check_arguments_arrived(self, frame.f_back if frame is not None else None, decay is not _DEFAULT_DECAY)
        self.save_hyperparameters({"decay": self.decay_settings.to_dict()}, frame=frame)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if LightningModule in mro and mro.index(LightningModule) < mro.index(DecayMixin):
            raise TypeError(
                f"{cls.__name__}: list DecayMixin before LightningModule (class {cls.__name__}(DecayMixin, "
                "LightningModule)); otherwise LightningModule hides the mixin's __init__ and configure_optimizers"
            )

    def save_hyperparameters(self, *args: Any, frame: Any = None, **kwargs: Any) -> None:
        """LightningModule's ``save_hyperparameters``, with :class:`DecaySettings` values stored as plain dicts."""
        if frame is None:
            frame = inspect.currentframe().f_back  # type: ignore[union-attr]
        super().save_hyperparameters(*args, frame=frame, **kwargs)  # type: ignore[misc]
        for store in (self.hparams, getattr(self, "_hparams_initial", {})):  # type: ignore[attr-defined]
            for key, value in list(store.items()):
                if isinstance(value, DecaySettings):
                    store[key] = value.to_dict()

    def set_decay(self, decay: DecaySettings | Mapping[str, Any] | str | None = None, **changes: Any) -> DecayMixin:
        """Replace the settings (``decay``) and/or change some (``changes``, e.g. ``lr=3e-4``); updates
        ``hparams["decay"]``. Returns ``self``."""
        settings = DecaySettings.coerce(decay) if decay is not None else self.decay_settings
        if changes:
            settings = settings.replace(**changes)
        _check_callables(settings, self.optimizer_callable, self.lr_scheduler_callable)
        self.decay_settings = settings
        self.gradient_guard.policy = settings.nonfinite_grads
        self.gradient_guard.skip_limit = settings.nonfinite_skip_limit
        for store in (self.hparams, getattr(self, "_hparams_initial", None)):  # type: ignore[attr-defined]
            if store is not None:
                store["decay"] = settings.to_dict()
        return self

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore ``hparams["decay"]`` in ``load_from_checkpoint`` when ``__init__`` could not take it, and the
        non-finite guard's counters."""
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        saved = checkpoint.get("hyper_parameters", {}).get("decay")
        if saved is not None and self._trainer is None and not _init_accepts(type(self), "decay"):  # type: ignore[attr-defined]
            self.set_decay(saved)
        if _GUARD_KEY in checkpoint:
            self.gradient_guard.load_state_dict(checkpoint[_GUARD_KEY])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the non-finite guard's counters (skipped steps) with the checkpoint."""
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint[_GUARD_KEY] = self.gradient_guard.state_dict()

    def on_fit_start(self) -> None:
        """Stop the fit when the optimizer is not the mixin's and settings would be lost
        (:meth:`check_optimizer_source`)."""
        super().on_fit_start()  # type: ignore[misc]
        trainer = self._trainer  # type: ignore[attr-defined]
        optimizers = list(trainer.optimizers) if trainer is not None else []
        if not all(getattr(_unwrap_optimizer(optimizer), _CHECKED_MARK, False) for optimizer in optimizers):
            self.check_optimizer_source(optimizers)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """The non-finite gradient check (``decay.nonfinite_grads``), unless a ``NonFiniteGradientGuard`` callback
        is attached (it has decided already); and, when a subclass's ``on_fit_start`` skipped the mixin's, the
        optimizer-source check before the first step."""
        super().on_before_optimizer_step(optimizer)  # type: ignore[misc]
        if not getattr(_unwrap_optimizer(optimizer), _CHECKED_MARK, False):
            self.check_optimizer_source([optimizer])
        trainer = self._trainer  # type: ignore[attr-defined]
        if trainer is None or any(isinstance(c, NonFiniteGradientGuard) for c in trainer.callbacks):
            return
        self.gradient_guard.check(trainer, self, optimizer)  # type: ignore[arg-type]

    def check_optimizer_source(self, optimizers: list[Any]) -> None:
        """ValueError naming the class when ``optimizers`` (the fit's) were not built by the mixin and that loses
        something: LightningCLI's top-level ``optimizer:`` key replaced ``configure_optimizers`` (always: the groups
        are lost), or the class's own ``configure_optimizers`` ignores the decay settings or callables it was given.
        With ``decay.allow_external_optimizer`` an info line instead."""
        message = _optimizer_source_problem(self, optimizers)
        for optimizer in optimizers:
            _mark(_unwrap_optimizer(optimizer), _CHECKED_MARK)
        if message is None:
            return
        if self.decay_settings.allow_external_optimizer:
            problem = message.split(" Instead: ")[0].rstrip(".")
            rank_zero_info(f"{problem}; training with it anyway (decay.allow_external_optimizer is true)")
            return
        raise ValueError(message)

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping, made to work under mixed precision for optimizers that can unscale inside their step
        (torch's fused kernels, the default of AdamL2, AdamW, ProxAdam, AdamC): Lightning's ``MixedPrecision``
        refuses to clip for them (``bf16-mixed`` and ``16-mixed``). Here a ``GradScaler`` unscales the gradients
        first (it then steps the optimizer with them as they are and still skips overflow steps), and they are
        clipped by Lightning's plain precision code."""
        trainer = self._trainer  # type: ignore[attr-defined]
        plugin = trainer.precision_plugin if trainer is not None else None
        if (
            gradient_clip_val
            and isinstance(plugin, MixedPrecision)
            and getattr(optimizer, "_step_supports_amp_scaling", False)
        ):
            if plugin.scaler is not None:
                plugin.scaler.unscale_(optimizer)
            algorithm = gradient_clip_algorithm or "norm"
            if not isinstance(algorithm, GradClipAlgorithmType):
                algorithm = GradClipAlgorithmType(str(algorithm).lower())
            Precision.clip_gradients(plugin, optimizer, float(gradient_clip_val), algorithm)  # type: ignore[arg-type]
            return
        super().configure_gradient_clipping(  # type: ignore[misc]
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """The optimizer on named parameter groups and its per-step schedule (:meth:`configure_decay_optimizers`)."""
        return self.configure_decay_optimizers()

    def configure_decay_optimizers(self) -> OptimizerLRSchedulerConfig:
        """Resolve the settings into :attr:`decay_plan` (with the trainer's steps per epoch and planned steps) and
        build the optimizer and schedule from it; the plan's summary is printed once and its numbers logged."""
        settings = self.decay_settings
        trainer = self._trainer  # type: ignore[attr-defined]
        steps_per_epoch, total_steps = _fit_steps(trainer, settings, self.lr_scheduler_callable is not None)
        plan = resolve(
            settings, self, steps_per_epoch=steps_per_epoch, total_steps=total_steps,  # type: ignore[arg-type]
            optimizer_callable=self.optimizer_callable, lr_scheduler_callable=self.lr_scheduler_callable,
        )
        config = build(plan, self, optimizer_callable=self.optimizer_callable,  # type: ignore[arg-type]
                       lr_scheduler_callable=self.lr_scheduler_callable)
        _mark(config["optimizer"], _BUILT_MARK)
        self.decay_plan = plan
        self._report_decay(plan)
        return config

    def _report_decay(self, plan: DecayPlan) -> None:
        """Fill :attr:`resolved_decay` and :attr:`decay_summary` from the plan, log the numbers as hyperparameters
        (and the notes in a W&B run's summary) and print the summary once (rank zero)."""
        trainer = self._trainer  # type: ignore[attr-defined]
        self.resolved_decay, self.decay_summary = plan.hparams(), str(plan)
        rank_zero_info(self.decay_summary)
        for logger in trainer.loggers if trainer is not None else []:
            logger.log_hyperparams(self.resolved_decay)
            if plan.notes and isinstance(logger, WandbLogger) and trainer.is_global_zero:
                for group, note in plan.notes.items():
                    logger.experiment.summary[f"decay/note/{group}"] = note

    def on_train_start(self) -> None:
        """At a resume part-way through an epoch, continue the training loaders where the checkpoint left them, or
        warn once that the rest of the epoch sees other batches
        (:func:`~lightning_decay.integration.resumable_loader.continue_train_loaders`)."""
        super().on_train_start()  # type: ignore[misc]
        from lightning_decay.integration.resumable_loader import continue_train_loaders

        if self._trainer is not None:  # type: ignore[attr-defined]
            continue_train_loaders(self._trainer)  # type: ignore[attr-defined]


def _fit_steps(trainer: Any, settings: DecaySettings, injected_scheduler: bool) -> tuple[int | None, int | None]:
    """``(steps per epoch, planned steps)`` of the fit (None outside one or where unknown); errors where a setting
    needs them: ``decay_timescale_epochs`` the steps per epoch, a cosine / linear schedule without ``total_steps``
    (or a warmup ratio) the planned steps."""
    timescale = settings.decay_timescale_epochs is not None
    if trainer is None:
        if timescale:
            raise ValueError("decay_timescale_epochs needs the trainer (the steps per epoch): call it during fit")
        return None, None
    try:
        per_epoch: int | None = trainer_steps_per_epoch(trainer)
    except ValueError:
        if timescale:
            raise
        per_epoch = None
    try:
        total: int | None = trainer_total_steps(trainer)
    except ValueError:
        needs = not injected_scheduler and settings.total_steps is None and (
            settings.schedule != "constant" or bool(settings.warmup_ratio))
        if needs:
            raise
        total = None
    return per_epoch, total


def _mark(optimizer: Any, attribute: str) -> None:
    try:
        setattr(optimizer, attribute, True)
    except AttributeError:  # an optimizer wrapper without a __dict__: it is checked again, which is harmless
        pass


def _unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside Lightning's ``LightningOptimizer`` (or a strategy's wrapper), else itself."""
    for attribute in ("_optimizer", "optimizer"):
        inner = getattr(optimizer, attribute, None)
        if isinstance(inner, Optimizer):
            return inner
    return optimizer


def _compact(settings: DecaySettings) -> str:
    """``DecaySettings(optimizer='proxadam', lr=0.0003)``: only what differs from the defaults."""
    return f"DecaySettings({', '.join(f'{key}={value!r}' for key, value in settings.changed().items())})"


def _settings_text(model: DecayMixin) -> str:
    """``optimizer='adamw', lr=0.001, weight_decay=AdamW's default``: what the model trains with."""
    settings = model.decay_settings
    if model.optimizer_callable is not None:
        return "its optimizer_callable"
    weight_decay = f"{settings.weight_decay:g}" if settings.weight_decay is not None else "the optimizer's default"
    return f"optimizer={settings.optimizer!r}, lr={settings.lr:g}, weight_decay={weight_decay}"


def _describe_argument(name: str, value: Any) -> str:
    if name == "decay":
        try:
            return f"decay={_compact(DecaySettings.coerce(value))}"
        except (TypeError, ValueError):
            pass
    text = repr(value)
    return f"{name}={text if len(text) <= 120 else text[:117] + '...'}"


def _argument_lost(name: str, value: Any, model: DecayMixin, decay_received: bool) -> bool:
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


def _check_arguments_arrived(model: DecayMixin, frame: FrameType | None, decay_received: bool) -> None:
    """ValueError when a subclass's ``__init__`` received ``decay`` / ``optimizer_callable`` /
    ``lr_scheduler_callable`` (as a named argument or in ``**kwargs``) and did not pass it on to ``DecayMixin``.

    Reads the ``__init__`` frames of ``model`` that called the mixin's (as ``save_hyperparameters`` does), from the
    innermost: the first one holding a lost argument is the one that dropped it."""
    while frame is not None and frame.f_code.co_name == "__init__":
        arguments = inspect.getargvalues(frame)
        if not arguments.args or frame.f_locals.get(arguments.args[0]) is not model:
            return
        given = {name: frame.f_locals.get(name) for name in arguments.args[1:] if name in _MIXIN_ARGUMENTS}
        extra = frame.f_locals.get(arguments.keywords) if arguments.keywords else None
        if isinstance(extra, Mapping):
            given.update({name: extra[name] for name in _MIXIN_ARGUMENTS if name in extra})
        lost = [name for name, value in given.items() if _argument_lost(name, value, model, decay_received)]
        if lost:
            cls = frame.f_locals.get("__class__")
            where = getattr(frame.f_code, "co_qualname", None) or (
                f"{cls.__name__}.__init__" if isinstance(cls, type) else f"{type(model).__name__}.__init__"
            )
            passed = ", ".join(f"{name}={name}" for name in lost)
            raise ValueError(
                f"{type(model).__name__}: {where} received {', '.join(_describe_argument(n, given[n]) for n in lost)} "
                f"but did not pass it on to DecayMixin, so the model would train with "
                f"{_settings_text(model) if 'decay' in lost else 'the built-in optimizer and schedule'} instead. "
                f"Pass it on: super().__init__(**kwargs) (or super().__init__({passed}))"
            )
        frame = frame.f_back


def _external_settings(model: DecayMixin) -> list[str]:
    """What the mixin was given that only its own optimizer and schedule use."""
    lost = [f"decay.{name}={value!r}" for name, value in model.decay_settings.changed().items()
            if name not in GENERAL_FIELDS]
    lost += [name for name in ("optimizer_callable", "lr_scheduler_callable") if getattr(model, name) is not None]
    return lost


def _optimizer_source_problem(model: DecayMixin, optimizers: list[Any]) -> str | None:
    """The error for :meth:`DecayMixin.check_optimizer_source`, or None when nothing is lost."""
    inner = [_unwrap_optimizer(optimizer) for optimizer in optimizers]
    if any(getattr(optimizer, _BUILT_MARK, False) for optimizer in inner):
        return None
    cls = type(model).__name__
    used = ", ".join(type(optimizer).__name__ for optimizer in inner) or "no optimizer"
    lost = _external_settings(model)
    ignored = f"; ignored: {', '.join(lost)}" if lost else ""
    if "configure_optimizers" in vars(model):  # LightningCLI's top-level optimizer: / lr_scheduler: keys
        return (
            f"{cls}: LightningCLI's top-level `optimizer:` key replaced DecayMixin's optimizer with {used} on "
            f"model.parameters(): one parameter group, so biases and normalization weights decay and the named groups "
            f"are lost{ignored}. Instead: set the variant in the model's decay block (model.decay.optimizer, "
            f"model.init_args.decay.optimizer under a class_path) or inject a class with model.optimizer_callable; "
            f"both keep the groups. To train with the top-level key anyway, set decay.allow_external_optimizer: true"
        )
    if type(model).configure_optimizers is DecayMixin.configure_optimizers or not lost:
        return None
    return (
        f"{cls}: {cls}.configure_optimizers returned {used}, not DecayMixin's optimizer{ignored}. Instead: return "
        f"self.configure_decay_optimizers() from {cls}.configure_optimizers (or delete it), or do not pass these "
        f"settings; to train with {used} anyway, set decay.allow_external_optimizer=True"
    )


def _check_callables(
    settings: DecaySettings,
    optimizer_callable: OptimizerCallable | None,
    lr_scheduler_callable: LRSchedulerCallable | None,
) -> None:
    """Callables are callable, build what they should, and do not fight with ``decay`` settings."""
    defaults = DecaySettings()
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
