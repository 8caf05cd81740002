"""``DecaySettings``: every setting of the decay optimizer and its schedule, validated when built.

Validation needs no trial optimizer: numbers go through :mod:`lightning_decay.validation`, a variant's domain
through its registry rule (e.g. ``lr * weight_decay < 1`` for torch-convention AdamW), constructor arguments
through the optimizer class's signature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from lightning_decay.integration.factory import check_optimizer_settings
from lightning_decay.integration.guards import check_nonfinite_policy, check_skip_limit
from lightning_decay.integration.param_groups import ParamGroupSettings
from lightning_decay.integration.schedules import check_schedule_settings
from lightning_decay.optim.conventions import weight_decay_for_timescale
from lightning_decay.optim.rules import DecayRule
from lightning_decay.validation import check_positive

__all__ = ["DecaySettings", "OPTIMIZER_FIELDS", "SCHEDULE_FIELDS", "check_timescale_settings"]

OPTIMIZER_FIELDS = ("optimizer", "lr", "weight_decay", "betas", "eps", "optimizer_kwargs")
#: Settings of the built-in schedule; with ``lr_scheduler_callable`` they do not apply.
SCHEDULE_FIELDS = ("schedule", "warmup_steps", "warmup_ratio", "total_steps", "min_lr_ratio")
#: Checkpoint key of the non-finite gradient guard's counters.


@dataclass(frozen=True)
class DecaySettings:
    """Everything :class:`DecayMixin` needs to build the optimizer and schedule; validated on construction.

    * ``optimizer``: a variant of :data:`~lightning_decay.optim.VARIANTS` (``adaml2``, ``adamw`` = torch
      convention, ``adamw-paper``, ``proxadam``, ``adamp``, ...) or a dotted ``Optimizer`` class path (a class is
      accepted and stored as its path).
    * ``lr``: the peak learning rate ``alpha``. ``weight_decay``: in the variant's own convention (torch AdamW:
      decay ``1 - lr_t*wd`` per step; paper AdamW and ProxAdam: ``1 - eta_t*wd``); ``None`` = the optimizer's
      default (AdamW torch 1e-2, paper ``1e-2*lr``).
    * ``decay_timescale_epochs`` (instead of ``weight_decay``): the EMA timescale of the decay in epochs (Wang &
      Aitchison 2024), ``tau_epoch = 1 / (1 - f) / steps_per_epoch`` with ``f`` the variant's per-step decay
      factor at the peak lr (torch AdamW: ``wd = 1 / (lr * tau_epoch * steps_per_epoch)``), resolved when the
      trainer knows the steps per epoch.
    * ``betas``, ``eps``: ``None`` = the optimizer's defaults; ``optimizer_kwargs``: other constructor arguments
      (e.g. ``{"fused": False}``).
    * ``schedule`` (``cosine`` | ``linear`` | ``constant``) after ``warmup_steps`` (or ``warmup_ratio`` of the
      total) linear warmup, down to ``min_lr_ratio * lr`` at ``total_steps`` (default: the trainer's estimate),
      stepped every optimizer step.
    * ``groups``: the parameter groups (:class:`~lightning_decay.integration.param_groups.ParamGroupSettings`).
    * ``lr_scheduler_interval`` / ``lr_scheduler_monitor``: only for a ``lr_scheduler_callable`` (how often to
      step it; the metric of a ``ReduceLROnPlateau``).
    * ``nonfinite_grads``: what a NaN/inf gradient does (:mod:`lightning_decay.integration.guards`): ``raise`` (default,
      a ``FloatingPointError`` naming the parameter), ``skip`` the step (weights and optimizer state unchanged, counted
      and logged), or ``off``; ``nonfinite_skip_limit``: with ``skip``, raise after that many consecutive skipped steps
      (None: never). Under a ``GradScaler`` (16-mixed) the scaler handles overflow instead.

    :meth:`to_dict` gives the plain form stored in ``hparams``; :meth:`coerce` reads it back.
    """

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float | None = None
    decay_timescale_epochs: float | None = None
    betas: tuple[float, float] | None = None
    eps: float | None = None
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    schedule: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    total_steps: int | None = None
    min_lr_ratio: float = 0.0
    groups: ParamGroupSettings = field(default_factory=ParamGroupSettings)
    lr_scheduler_interval: str = "epoch"
    lr_scheduler_monitor: str | None = None
    nonfinite_grads: str = "raise"
    nonfinite_skip_limit: int | None = 10

    def __post_init__(self) -> None:
        try:
            self._normalize_and_check()
        except (TypeError, ValueError) as error:
            kind = TypeError if isinstance(error, TypeError) else ValueError
            raise kind(f"DecaySettings: {error}") from None

    def _normalize_and_check(self) -> None:
        if isinstance(self.optimizer, type):
            object.__setattr__(self, "optimizer", f"{self.optimizer.__module__}.{self.optimizer.__qualname__}")
        if not isinstance(self.optimizer, str):
            raise TypeError(f"optimizer must be a variant name or a class path, got {type(self.optimizer).__name__}")
        if self.betas is not None and not isinstance(self.betas, (str, bytes)):
            object.__setattr__(self, "betas", tuple(self.betas))
        if not isinstance(self.optimizer_kwargs, Mapping):
            raise TypeError(f"optimizer_kwargs must be a mapping, got {type(self.optimizer_kwargs).__name__}")
        object.__setattr__(self, "optimizer_kwargs", dict(self.optimizer_kwargs))
        object.__setattr__(self, "groups", ParamGroupSettings.coerce(self.groups))
        check_schedule_settings(
            self.schedule, self.warmup_steps, self.warmup_ratio, self.total_steps, self.min_lr_ratio
        )
        if self.lr_scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"lr_scheduler_interval must be 'step' or 'epoch', got {self.lr_scheduler_interval!r}")
        if self.lr_scheduler_monitor is not None and not isinstance(self.lr_scheduler_monitor, str):
            raise TypeError(f"lr_scheduler_monitor must be a metric name, got {self.lr_scheduler_monitor!r}")
        check_nonfinite_policy(self.nonfinite_grads, "nonfinite_grads")
        check_skip_limit(self.nonfinite_skip_limit, "nonfinite_skip_limit")
        rule, peak_lr = check_optimizer_settings(
            self.optimizer, self.lr, self.weight_decay, self.betas, self.eps, self.optimizer_kwargs
        )
        if self.decay_timescale_epochs is not None:
            check_timescale_settings(self.decay_timescale_epochs, self.weight_decay, rule, peak_lr)

    @classmethod
    def coerce(cls, value: DecaySettings | Mapping[str, Any] | str | None) -> DecaySettings:
        """Settings from themselves, their :meth:`to_dict` form (unknown keys: ValueError naming them), a variant
        name, or ``None`` (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(optimizer=value)
        if isinstance(value, Mapping):
            valid = [f.name for f in fields(cls)]
            unknown = [key for key in value if key not in valid]
            if unknown:
                raise ValueError(f"DecaySettings: unknown setting(s) {unknown}; valid: {valid}")
            return cls(**value)
        raise TypeError(f"decay must be DecaySettings, a mapping, a variant name or None, got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """Plain (YAML- and ``torch.load(weights_only=True)``-safe) form, as stored in ``hparams["decay"]``."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["betas"] = list(self.betas) if self.betas is not None else None
        out["optimizer_kwargs"] = dict(self.optimizer_kwargs)
        out["groups"] = self.groups.to_dict()
        return out

    def replace(self, **changes: Any) -> DecaySettings:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)


def check_timescale_settings(
    tau_epochs: Any, weight_decay: float | None, rule: DecayRule | None, peak_lr: float | None
) -> None:
    """``decay_timescale_epochs`` is a finite number > 0, exclusive with ``weight_decay``, and the optimizer's
    decay rule has a timescale (a per-step scalar decay: not L2, not elementwise)."""
    check_positive("decay_timescale_epochs", tau_epochs)
    if weight_decay is not None:
        raise ValueError(
            f"give weight_decay or decay_timescale_epochs, not both (got {weight_decay} and {tau_epochs})"
        )
    if rule is None:
        raise ValueError("decay_timescale_epochs: the optimizer has no decay rule, so no timescale to set")
    try:
        weight_decay_for_timescale(1e6, peak_lr if peak_lr else 1e-3, rule)
    except ValueError as error:
        raise ValueError(f"decay_timescale_epochs: {error}") from None
