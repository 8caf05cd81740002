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
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.enums import GradClipAlgorithmType
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch.optim import Optimizer

from lightning_decay.integration.guards import GradientGuard, NonFiniteGradientGuard
from lightning_decay.integration.lost_settings import (
    check_arguments_arrived,
    check_callables,
    optimizer_source_problem,
    unwrap_optimizer,
)
from lightning_decay.integration.plan import DecayPlan, build, resolve
from lightning_decay.integration.schedules import trainer_steps_per_epoch, trainer_total_steps
from lightning_decay.integration.settings import (
    DecaySettings,
)

__all__ = ["DecaySettings", "DecayMixin"]

_GUARD_KEY = "decay_mixin_gradient_guard"
#: The mixin's default settings: the one object ``decay`` holds when no caller passed it on.
_DEFAULT_DECAY = DecaySettings()


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
        self._decay_optimizers: list[Optimizer] = []  # built by configure_decay_optimizers
        self._decay_checked_optimizers: list[Optimizer] = []  # seen by check_optimizer_source
        check_callables(self.decay_settings, optimizer_callable, lr_scheduler_callable)
        settings = self.decay_settings
        self.gradient_guard = GradientGuard(settings.nonfinite_grads, settings.nonfinite_skip_limit)
        frame = inspect.currentframe()
        check_arguments_arrived(self, frame.f_back if frame is not None else None, decay is not _DEFAULT_DECAY)
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
        check_callables(settings, self.optimizer_callable, self.lr_scheduler_callable)
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
        if not all(self._decay_checked(optimizer) for optimizer in optimizers):
            self.check_optimizer_source(optimizers)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """The non-finite gradient check (``decay.nonfinite_grads``), unless a ``NonFiniteGradientGuard`` callback
        is attached (it has decided already); and, when a subclass's ``on_fit_start`` skipped the mixin's, the
        optimizer-source check before the first step."""
        super().on_before_optimizer_step(optimizer)  # type: ignore[misc]
        if not self._decay_checked(optimizer):
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
        own_configure = type(self).configure_optimizers is not DecayMixin.configure_optimizers
        message = optimizer_source_problem(self, optimizers, self._decay_optimizers, own_configure)
        self._decay_checked_optimizers.extend(unwrap_optimizer(optimizer) for optimizer in optimizers)
        if message is None:
            return
        if self.decay_settings.allow_external_optimizer:
            problem = message.split(" Instead: ")[0].rstrip(".")
            rank_zero_info(f"{problem}; training with it anyway (decay.allow_external_optimizer is true)")
            return
        raise ValueError(message)

    def _decay_checked(self, optimizer: Any) -> bool:
        inner = unwrap_optimizer(optimizer)
        return any(inner is checked for checked in getattr(self, "_decay_checked_optimizers", ()))

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
        self._decay_optimizers.append(config["optimizer"])
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


