"""``DecaySettings``: every setting of the decay optimizer and its schedule, validated when built.

Validation needs no trial optimizer: numbers go through :mod:`lightning_decay.validation`, a variant's domain
through its registry rule (e.g. ``lr * weight_decay < 1`` for torch-convention AdamW), constructor arguments
through the optimizer class's signature.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from lightning_decay.integration.construction import NamesOptimizer
from lightning_decay.integration.guards import check_nonfinite_policy, check_skip_limit
from lightning_decay.integration.muon_split import OthersSettings
from lightning_decay.integration.param_groups import ParamGroupSettings
from lightning_decay.integration.schedules import check_schedule_settings
from lightning_decay.integration.settings_record import SettingsRecord
from lightning_decay.optim.conventions import weight_decay_for_timescale
from lightning_decay.optim.registry import REGISTRY, VariantInfo
from lightning_decay.optim.rules import DecayRule
from lightning_decay.validation import check_bool, check_flags, check_positive

__all__ = ["DecaySettings", "OPTIMIZER_FIELDS", "SCHEDULE_FIELDS", "GENERAL_FIELDS", "check_timescale_settings"]

OPTIMIZER_FIELDS = (
    "optimizer", "lr", "weight_decay", "betas", "eps", "optimizer_kwargs", "tensor_lr", "kernel", "others"
)
#: Settings of the built-in schedule; with ``lr_scheduler_callable`` they do not apply.
SCHEDULE_FIELDS = ("schedule", "warmup_steps", "warmup_ratio", "total_steps", "min_lr_ratio")
#: Settings that apply whoever builds the optimizer (the gradient guard, the startup summary, the opt-in); every other
#: setting is read only by DecayMixin's own optimizer and schedule, and is lost when another optimizer runs.
GENERAL_FIELDS = ("nonfinite_grads", "nonfinite_skip_limit", "verbose", "allow_external_optimizer")


@dataclass(frozen=True)
class DecaySettings(NamesOptimizer, SettingsRecord):
    """The decay optimizer and its lr schedule (model.decay); every key is checked before training.

    Everything :class:`~lightning_decay.integration.mixin.DecayMixin` needs to build them. :meth:`to_dict` gives the
    plain form stored in ``hparams["decay"]``; :meth:`coerce` reads it back. The ``Args`` below are also the
    LightningCLI's help lines (``--help``, ``--model.help``); the variant lists in them are the registry's
    (``tests/test_cli.py`` keeps them so).

    Args:
        optimizer: the weight-decay variant: adaml2, adamw, adamw-paper, proxadam, adamp, adamc, adamw-cautious,
            adamw-paper-cautious, sgd-l2, sgdw, sgdw-paper, proxsgd, muon, muon-paper, proxmuon, muonc,
            muon-cautious (adamw is torch's convention, decay 1 - lr_t*wd per step; adamw-paper Loshchilov &
            Hutter's, 1 - eta_t*wd: the same number decays ~1/lr times faster); or a dotted
            torch.optim.Optimizer class path.
        lr: the peak learning rate alpha; the schedule sets lr_t = alpha * eta_t.
        weight_decay: in the variant's own convention: decay lr_t*wd per step for adamw, adamp, adamc,
            adamw-cautious, sgdw, muon, muonc, muon-cautious; eta_t*wd for adamw-paper, proxadam,
            adamw-paper-cautious, sgdw-paper, proxsgd, muon-paper, proxmuon; an L2 term wd*w in the gradient for
            adaml2, sgd-l2. null: the optimizer's default (torch AdamW: 0.01). The startup summary prints the decay
            timescale it means.
        decay_timescale_epochs: instead of weight_decay: the decay's EMA timescale in epochs (Wang & Aitchison
            2024), turned into a weight decay once the trainer knows the steps per epoch (variants with one decay
            factor per step only).
        betas: Adam's (beta1, beta2); null: the optimizer's default.
        eps: Adam's eps; null: the optimizer's default.
        optimizer_kwargs: further constructor arguments of the optimizer, e.g. {fused: false} or {momentum: 0.9}.
        schedule: the lr shape after the warmup: cosine, linear, constant; stepped every optimizer step.
        warmup_steps: optimizer steps of linear warmup to lr (0: none).
        warmup_ratio: the warmup as a fraction of total_steps, instead of warmup_steps.
        total_steps: the step at which the schedule reaches min_lr_ratio * lr; null: the fit's optimizer steps
            (the trainer's estimate).
        min_lr_ratio: the final lr as a fraction of lr.
        groups: how the parameters are split into groups: biases, normalization layers and other 1-D parameters
            get no decay by default; overrides by name pattern or module type.
        lr_scheduler_interval: only with model.lr_scheduler_callable: 'epoch' (null: the default, as in
            Lightning) or 'step' (every optimizer step). Without an injected scheduler it is an error (the built-in
            schedule is always stepped every optimizer step).
        lr_scheduler_monitor: only with a ReduceLROnPlateau model.lr_scheduler_callable: the metric it watches.
        nonfinite_grads: what a NaN/inf gradient does: raise, skip, off (raise: an error naming the parameter;
            skip: the step is skipped, weights and optimizer state unchanged; off: no check).
        nonfinite_skip_limit: with nonfinite_grads skip: raise after this many consecutive skipped steps (null:
            never).
        verbose: the startup summary also lists the name of every parameter in each group.
        tensor_lr: every parameter group gets its own 0-dim tensor lr (as torch's optimizers accept, for capturable
            or compiled training loops); the schedule fills it in place. A tensor given as lr sets this.
        allow_external_optimizer: let an optimizer that DecayMixin did not build train the model (LightningCLI's
            top-level optimizer: key, or the model's own configure_optimizers given decay settings); without
            it that is an error, since the parameter groups and these settings would be lost.
        kernel: run the variant's decay rule on another AdamW implementation's step, state and state_dict, given
            by class path: e.g. torchao.optim.AdamW8bit (8-bit moments, 2 bytes per parameter instead of 8),
            torchao.optim.AdamW4bit, torchao.optim.AdamWFp8, torch.optim.AdamW; null: the variant's own optimizer.
            Scalar variants only (not the elementwise adamp, adamw-cautious, adamw-paper-cautious,
            muon-cautious).
        others: with a Muon variant (muon, muon-paper, proxmuon, muonc, muon-cautious, which step only hidden
            weight matrices): the optimizer of every other parameter (embeddings, the output head, biases, norms,
            convolution filters), e.g. {optimizer:
            adamw-paper, lr: 0.001, weight_decay: 0.0001}; keys optimizer, lr, weight_decay, betas, eps,
            optimizer_kwargs, kernel, muon_exclude / muon_include (name patterns). One optimizer to Lightning.
    """

    config_key = "decay"

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
    lr_scheduler_interval: str | None = None
    lr_scheduler_monitor: str | None = None
    nonfinite_grads: str = "raise"
    nonfinite_skip_limit: int | None = 10
    verbose: bool = False
    allow_external_optimizer: bool = False
    tensor_lr: bool = False
    kernel: str | None = None
    others: OthersSettings | None = None

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
        if isinstance(self.lr, torch.Tensor):  # kept as a number (hparams, YAML); each group gets its own tensor
            if self.lr.ndim != 0 or not self.lr.is_floating_point():
                raise TypeError(f"lr must be a number or a 0-dim floating tensor, got a tensor of shape "
                                f"{tuple(self.lr.shape)} and dtype {self.lr.dtype}")
            object.__setattr__(self, "lr", float(self.lr))
            object.__setattr__(self, "tensor_lr", True)
        check_bool("tensor_lr", self.tensor_lr)
        if isinstance(self.kernel, type):
            object.__setattr__(self, "kernel", f"{self.kernel.__module__}.{self.kernel.__qualname__}")
        if self.kernel is not None and not isinstance(self.kernel, str):
            raise TypeError(f"kernel must be an optimizer class path or null, got {type(self.kernel).__name__}")
        if self.betas is not None and not isinstance(self.betas, (str, bytes)):
            object.__setattr__(self, "betas", tuple(self.betas))
        if not isinstance(self.optimizer_kwargs, Mapping):
            raise TypeError(f"optimizer_kwargs must be a mapping, got {type(self.optimizer_kwargs).__name__}")
        object.__setattr__(self, "optimizer_kwargs", dict(self.optimizer_kwargs))
        object.__setattr__(self, "groups", ParamGroupSettings.coerce(self.groups))
        check_schedule_settings(
            self.schedule, self.warmup_steps, self.warmup_ratio, self.total_steps, self.min_lr_ratio
        )
        if self.lr_scheduler_interval not in (None, "step", "epoch"):
            raise ValueError(f"lr_scheduler_interval must be 'step', 'epoch' or null, got "
                             f"{self.lr_scheduler_interval!r}")
        if self.lr_scheduler_monitor is not None and not isinstance(self.lr_scheduler_monitor, str):
            raise TypeError(f"lr_scheduler_monitor must be a metric name, got {self.lr_scheduler_monitor!r}")
        check_nonfinite_policy(self.nonfinite_grads, "nonfinite_grads")
        check_skip_limit(self.nonfinite_skip_limit, "nonfinite_skip_limit")
        check_flags(vars(self), ("verbose", "allow_external_optimizer"))
        if self.optimizer in REGISTRY and REGISTRY[self.optimizer].family == "muon":
            for setting in ("kernel", "betas", "eps"):
                if getattr(self, setting) is not None:
                    raise ValueError(f"{setting}: {self.optimizer!r} runs torch's Muon, which has no {setting}; set "
                                     f"others.{setting} for the optimizer of the other parameters")
        constructor = self._check_optimizer()
        if self.decay_timescale_epochs is not None:
            check_timescale_settings(self.decay_timescale_epochs, self.weight_decay, constructor.rule,
                                     constructor.peak_lr)
        self._check_others()

    def _check_others(self) -> None:
        """``others`` goes with a Muon variant (which steps only hidden matrices), and is itself a valid optimizer."""
        try:
            others = OthersSettings.coerce(self.others)
        except (TypeError, ValueError) as error:
            raise type(error)(str(error) if str(error).startswith(("others", "decay.others")) else f"others: {error}"
                              ) from None
        object.__setattr__(self, "others", others)
        muon = self.optimizer in REGISTRY and REGISTRY[self.optimizer].family == "muon"
        if muon and "orthogonalize_dtype" in self.optimizer_kwargs:
            from lightning_decay.optim.muon import ORTHOGONALIZE_DTYPES

            if self.optimizer_kwargs["orthogonalize_dtype"] not in ORTHOGONALIZE_DTYPES:
                raise ValueError(f"optimizer_kwargs.orthogonalize_dtype must be one of {ORTHOGONALIZE_DTYPES}, got "
                                 f"{self.optimizer_kwargs['orthogonalize_dtype']!r}")
        if others is None:
            return
        if not muon:
            raise ValueError(
                f"others: the optimizer of the parameters Muon does not step, but optimizer is {self.optimizer!r}; "
                f"use a Muon variant ({_names(lambda info: info.family == 'muon')}) or drop others"
            )
        if others.optimizer in REGISTRY and REGISTRY[others.optimizer].family == "muon":
            raise ValueError(f"others.optimizer: {others.optimizer!r} is a Muon variant; the others need an Adam or "
                             "SGD variant (Muon steps matrices only)")
        try:
            others._check_optimizer()
        except (TypeError, ValueError) as error:
            raise type(error)(f"others: {error}") from None

    @classmethod
    def _from_other(cls, value: Any) -> DecaySettings:
        """A variant name alone: ``DecaySettings(optimizer=value)``."""
        if isinstance(value, str):
            return cls(optimizer=value)
        raise TypeError(f"decay must be DecaySettings, a mapping, a variant name or None, got {type(value).__name__}")

    def replace(self, **changes: Any) -> DecaySettings:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)

    @staticmethod
    def defaults() -> DecaySettings:
        """The settings with every default (made and checked once)."""
        return _default_settings()

    def changed(self, names: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The settings (among ``names``, default: all) that differ from the defaults, in field order."""
        defaults = _default_settings()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if (names is None or f.name in names) and getattr(self, f.name) != getattr(defaults, f.name)
        }


def _names(keep: Callable[[VariantInfo], bool]) -> str:
    return ", ".join(name for name, info in REGISTRY.items() if keep(info))



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


@functools.cache
def _default_settings() -> DecaySettings:
    return DecaySettings()
