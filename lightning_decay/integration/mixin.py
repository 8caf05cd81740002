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
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.enums import GradClipAlgorithmType
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_decay.integration.factory import build_optimizer, build_optimizer_config, check_optimizer_settings
from lightning_decay.integration.guards import GradientGuard, NonFiniteGradientGuard
from lightning_decay.integration.param_groups import DECAY
from lightning_decay.integration.schedules import trainer_steps_per_epoch
from lightning_decay.integration.settings import (
    OPTIMIZER_FIELDS,
    SCHEDULE_FIELDS,
    DecaySettings,
    check_timescale_settings,
)
from lightning_decay.optim.conventions import decay_rule_of, steps_to_epochs, timescale_steps

__all__ = ["DecaySettings", "DecayMixin"]

_GUARD_KEY = "decay_mixin_gradient_guard"

#: Settings that describe the optimizer itself; with ``optimizer_callable`` they belong in the callable.
def _init_accepts(cls: type, name: str) -> bool:
    parameters = inspect.signature(cls.__init__).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


class DecayMixin:
    """Gives a ``LightningModule`` a ``configure_optimizers`` with a weight-decay variant, named parameter groups
    and a warmup + cosine/linear/constant schedule: ``class MyModel(DecayMixin, LightningModule)``.

    Arguments (keyword-only; a subclass passes them on with ``super().__init__(**kwargs)`` or names them):

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
    and replace this ``configure_optimizers``. Either the settings (YAML ``model: {decay: {optimizer: proxadam,
    lr: 3.0e-4, weight_decay: 0.1}}``, or ``--model.decay.optimizer proxadam``), or dependency injection
    (``model: {optimizer_callable: {class_path: lightning_decay.AdamW, init_args: {lr: 0.01, weight_decay:
    0.05}}}``, or ``--model.optimizer_callable lightning_decay.AdamW --model.optimizer_callable.lr 0.01``).
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

    After ``configure_optimizers``, :attr:`resolved_decay` holds the resolved numbers (weight decay and
    timescale per group, steps per epoch); they are logged as hyperparameters (``decay/...``) and printed once.
    If the model defines its own ``configure_optimizers``, call :meth:`configure_decay_optimizers` (or
    ``DecayMixin.configure_optimizers(self)``) from it.
    """

    def __init__(
        self,
        *args: Any,
        decay: DecaySettings = DecaySettings(),  # noqa: B008 - frozen: one shared instance is safe
        optimizer_callable: OptimizerCallable | None = None,
        lr_scheduler_callable: LRSchedulerCallable | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.decay_settings: DecaySettings = DecaySettings.coerce(decay)
        self.optimizer_callable = optimizer_callable
        self.lr_scheduler_callable = lr_scheduler_callable
        self.resolved_decay: dict[str, Any] = {}
        _check_callables(self.decay_settings, optimizer_callable, lr_scheduler_callable)
        settings = self.decay_settings
        self.gradient_guard = GradientGuard(settings.nonfinite_grads, settings.nonfinite_skip_limit)
        self.save_hyperparameters({"decay": self.decay_settings.to_dict()}, frame=inspect.currentframe())

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

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """The non-finite gradient check (``decay.nonfinite_grads``), unless a ``NonFiniteGradientGuard`` callback
        is attached (it has decided already)."""
        super().on_before_optimizer_step(optimizer)  # type: ignore[misc]
        trainer = self._trainer  # type: ignore[attr-defined]
        if trainer is None or any(isinstance(c, NonFiniteGradientGuard) for c in trainer.callbacks):
            return
        self.gradient_guard.check(trainer, self, optimizer)  # type: ignore[arg-type]

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
        """Build the optimizer and schedule from the settings (resolving a timescale in epochs with the trainer's
        steps per epoch) and report the resolved weight decay."""
        settings = self.decay_settings
        trainer = self._trainer  # type: ignore[attr-defined]
        steps_per_epoch = None
        if settings.decay_timescale_epochs is not None:
            if trainer is None:
                raise ValueError("decay_timescale_epochs needs the trainer (the steps per epoch): call it during fit")
            steps_per_epoch = trainer_steps_per_epoch(trainer)
        injected = self.optimizer_callable is not None
        config = build_optimizer_config(
            self,  # type: ignore[arg-type]
            self.optimizer_callable if injected else settings.optimizer,
            None if injected else settings.lr,
            None if injected else settings.weight_decay,
            decay_timescale_epochs=settings.decay_timescale_epochs,
            steps_per_epoch=steps_per_epoch,
            betas=None if injected else settings.betas,
            eps=None if injected else settings.eps,
            optimizer_kwargs=None if injected else settings.optimizer_kwargs,
            groups=settings.groups,
            schedule=settings.schedule,
            warmup_steps=settings.warmup_steps,
            warmup_ratio=settings.warmup_ratio,
            total_steps=settings.total_steps,
            min_lr_ratio=settings.min_lr_ratio,
            lr_scheduler=self.lr_scheduler_callable,
            lr_scheduler_interval=settings.lr_scheduler_interval,
            lr_scheduler_monitor=settings.lr_scheduler_monitor,
            trainer=trainer,
        )
        self._report_decay(config["optimizer"], steps_per_epoch)
        return config

    def _report_decay(self, optimizer: Optimizer, steps_per_epoch: int | None) -> None:
        """Fill :attr:`resolved_decay`, log it as hyperparameters and print it once (rank zero)."""
        settings = self.decay_settings
        resolved: dict[str, Any] = {"decay/optimizer": type(optimizer).__name__}
        if steps_per_epoch is not None:
            resolved["decay/steps_per_epoch"] = steps_per_epoch
            resolved["decay/timescale_epochs"] = settings.decay_timescale_epochs
        lines = []
        for index, group in enumerate(optimizer.param_groups):
            name = group.get("name", f"pg{index + 1}")
            lr = float(group.get("initial_lr", group["lr"]))
            weight_decay = float(group["weight_decay"])
            resolved[f"decay/weight_decay/{name}"] = weight_decay
            count = sum(p.numel() for p in group["params"])
            line = f"  {name}: {len(group['params'])} tensors, {count:,} parameters, weight_decay={weight_decay:.6g}"
            line += f" at lr={lr:.6g}"
            if "normalized" in optimizer.defaults and weight_decay > 0:  # AdamC: which decay rule the group follows
                line += ", normalized" if group.get("normalized") else ", not normalized (AdamW decay)"
            try:
                tau = timescale_steps(weight_decay, lr, decay_rule_of(optimizer, group))
            except (ValueError, TypeError):
                tau = None  # no scalar timescale (L2, elementwise) or not one of this package's optimizers
            if tau is not None and math.isfinite(tau):
                resolved[f"decay/timescale_steps/{name}"] = tau
                line += f", timescale {tau:.6g} steps"
                if steps_per_epoch is not None:
                    tau_epochs = steps_to_epochs(tau, steps_per_epoch)
                    resolved[f"decay/timescale_epochs/{name}"] = tau_epochs
                    line += f" = {tau_epochs:.6g} epochs"
            lines.append(line)
        if f"decay/weight_decay/{DECAY}" in resolved:
            resolved["decay/weight_decay"] = resolved[f"decay/weight_decay/{DECAY}"]
        self.resolved_decay = resolved
        header = f"{type(self).__name__}: {type(optimizer).__name__}"
        if steps_per_epoch is not None:
            header += (
                f", decay timescale {settings.decay_timescale_epochs:g} epochs at {steps_per_epoch} steps/epoch; "
                "parameter groups:"
            )
        else:
            header += ", parameter groups:"
        rank_zero_info("\n".join([header, *lines]))
        trainer = self._trainer  # type: ignore[attr-defined]
        for logger in trainer.loggers if trainer is not None else []:
            logger.log_hyperparams(resolved)


def _check_callables(
    settings: DecaySettings,
    optimizer_callable: OptimizerCallable | None,
    lr_scheduler_callable: LRSchedulerCallable | None,
) -> None:
    """Callables are callable, build what they should, and do not fight with ``decay`` settings."""
    defaults = DecaySettings()
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
            }),
        )
        scheduler = lr_scheduler_callable(trial)
        if not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
            raise TypeError(f"lr_scheduler_callable returned {type(scheduler).__name__}, not an LR scheduler")
        if isinstance(scheduler, ReduceLROnPlateau) and not settings.lr_scheduler_monitor:
            raise ValueError("decay.lr_scheduler_monitor: ReduceLROnPlateau needs the metric to monitor")
