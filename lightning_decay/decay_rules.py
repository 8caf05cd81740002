"""The weight-decay rules: every decay formula of the package, each written once.

Notation (the blog's): ``alpha`` is a group's initial learning rate, ``eta_t`` the schedule multiplier,
``lr_t = alpha * eta_t`` the learning rate a scheduler sets, ``wd`` the group's ``weight_decay``,
``u_t = m_hat / D`` the Adam direction with ``D = sqrt(v_hat) + eps``.

| rule | one step |
|---|---|
| ``adaml2`` | ``g <- g + wd * w``, then Adam |
| ``adamw`` (torch convention) | ``w <- (1 - lr_t * wd) * w - lr_t * u_t`` |
| ``adamw-paper`` (Loshchilov & Hutter) | ``w <- (1 - eta_t * wd) * w - lr_t * u_t`` |
| ``proxadam`` (Zhuang et al. 2022) | ``w <- (w - lr_t * u_t) / (1 + eta_t * wd)`` |
| ``adamp`` (the blog's AdamP) | ``w <- (w - lr_t * u_t) / (1 + lr_t * wd / D)``, elementwise |

Rules that torch's Adam kernel can run exactly (all but AdamP) say so through :meth:`KernelDecayRule.kernel_settings`:
the learning rate and weight decay to hand torch's Adam/AdamW kernel (``w <- (1 - lr' * wd') * w - lr' * u_t``,
or ``g <- g + wd' * w`` when not decoupled) so that one step is exactly the rule's. The per-step decay factor that
the monitoring callbacks log is derived from those same settings, so the optimizer and the monitors cannot disagree.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "DecayRule",
    "KernelDecayRule",
    "KernelSettings",
    "AdamL2Rule",
    "AdamWTorchRule",
    "AdamWPaperRule",
    "ProxAdamRule",
    "AdamPRule",
    "adam_denominator",
    "check_nonnegative",
]


def adam_denominator(exp_avg_sq: Tensor, bias_correction2_sqrt: Tensor | float, eps: Tensor | float) -> Tensor:
    """Adam's denominator ``D = sqrt(v_hat) + eps = sqrt(v) / sqrt(1 - beta2^t) + eps`` (as torch computes it)."""
    return exp_avg_sq.sqrt() / bias_correction2_sqrt + eps


def check_nonnegative(name: str, value: object, where: str = "") -> None:
    """TypeError unless ``value`` is a real number, ValueError unless it is finite and >= 0; both name it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}{where} must be a real number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name}{where} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class KernelSettings:
    """What to pass torch's Adam kernel so that its step is exactly a rule's step."""

    lr: float
    weight_decay: float
    decoupled: bool


class DecayRule(ABC):
    """One decay rule. ``lr`` is ``lr_t``, ``initial_lr`` is ``alpha``; ``eta_t = lr / initial_lr``."""

    #: The variant's name in the factory's registry.
    name: str
    #: True if multiplying the loss by c > 0 leaves the trajectory unchanged (eps = 0).
    scale_free: bool
    #: True if the decay factor depends on Adam's denominator D (elementwise).
    elementwise: bool = False

    def check(self, lr: float, initial_lr: float, weight_decay: float) -> None:
        """Raise ValueError naming the argument when the settings are outside the rule's domain."""
        check_nonnegative("lr", lr)
        check_nonnegative("weight_decay", weight_decay)

    @staticmethod
    def schedule_multiplier(lr: float, initial_lr: float) -> float:
        """``eta_t = lr_t / alpha`` (1 when alpha is 0)."""
        return lr / initial_lr if initial_lr > 0 else 1.0

    @abstractmethod
    def decay_factor(
        self, lr: float, initial_lr: float, weight_decay: float, denominator: Tensor | None = None
    ) -> float | Tensor:
        """The factor that multiplies the weights in one step (1 means no decay)."""

    def timescale_steps(self, lr: float, initial_lr: float, weight_decay: float) -> float:
        """EMA timescale of the decay in steps, ``1 / (1 - factor)`` (inf without decay); scalar rules only."""
        factor = self.decay_factor(lr, initial_lr, weight_decay)
        shrink = 1.0 - float(factor)
        return math.inf if shrink <= 0.0 else 1.0 / shrink


class KernelDecayRule(DecayRule):
    """A rule that torch's Adam/AdamW kernel runs exactly, given per-step settings."""

    @abstractmethod
    def kernel_settings(self, lr: float, initial_lr: float, weight_decay: float) -> KernelSettings:
        """torch-kernel ``(lr', wd', decoupled)`` for this step."""

    def decay_factor(
        self, lr: float, initial_lr: float, weight_decay: float, denominator: Tensor | None = None
    ) -> float:
        """``1 - lr' * wd'`` of the kernel settings for decoupled rules; 1 for L2 (decay goes through the gradient)."""
        settings = self.kernel_settings(lr, initial_lr, weight_decay)
        return 1.0 - settings.lr * settings.weight_decay if settings.decoupled else 1.0


class AdamL2Rule(KernelDecayRule):
    """``g <- g + wd * w`` then Adam: the decay is preconditioned, ``lr_t * wd / D`` per coordinate."""

    name = "adaml2"
    scale_free = False

    def kernel_settings(self, lr: float, initial_lr: float, weight_decay: float) -> KernelSettings:
        return KernelSettings(lr, weight_decay, decoupled=False)

    def preconditioned_decay(self, lr: float, weight_decay: float, denominator: Tensor) -> Tensor:
        """``lr_t * wd / D``: how strongly the L2 term pulls each coordinate in one (momentum-free) step."""
        return lr * weight_decay / denominator


class AdamWTorchRule(KernelDecayRule):
    """PyTorch's AdamW: ``w <- (1 - lr_t * wd) * w - lr_t * u_t``."""

    name = "adamw"
    scale_free = True

    def check(self, lr: float, initial_lr: float, weight_decay: float) -> None:
        super().check(lr, initial_lr, weight_decay)
        if lr * weight_decay >= 1.0:
            raise ValueError(
                f"lr * weight_decay = {lr * weight_decay:g} >= 1 would flip the weights' sign "
                f"(torch convention, decay factor 1 - lr*weight_decay; lr={lr:g}, weight_decay={weight_decay:g})"
            )

    def kernel_settings(self, lr: float, initial_lr: float, weight_decay: float) -> KernelSettings:
        return KernelSettings(lr, weight_decay, decoupled=True)


class AdamWPaperRule(KernelDecayRule):
    """Loshchilov & Hutter's AdamW: ``w <- (1 - eta_t * wd) * w - lr_t * u_t``.

    torch's kernel decays by ``1 - lr' * wd'``; with ``lr' = lr_t`` and ``wd' = wd / alpha`` that is
    ``1 - eta_t * wd``.
    """

    name = "adamw-paper"
    scale_free = True

    def check(self, lr: float, initial_lr: float, weight_decay: float) -> None:
        super().check(lr, initial_lr, weight_decay)
        eta_wd = self.schedule_multiplier(lr, initial_lr) * weight_decay
        if eta_wd >= 1.0:
            raise ValueError(
                f"eta_t * weight_decay = {eta_wd:g} >= 1 would flip the weights' sign (paper convention, decay "
                f"factor 1 - eta_t*weight_decay with eta_t = lr/initial lr; lr={lr:g}, weight_decay={weight_decay:g})"
            )

    def kernel_settings(self, lr: float, initial_lr: float, weight_decay: float) -> KernelSettings:
        if initial_lr <= 0:
            return KernelSettings(lr, 0.0, decoupled=True)
        return KernelSettings(lr, weight_decay / initial_lr, decoupled=True)


class ProxAdamRule(KernelDecayRule):
    """Zhuang et al.'s ProxAdam: ``w <- (w - lr_t * u_t) / (1 + eta_t * wd)``.

    Equal to torch's AdamW kernel with ``lr' = lr_t / (1 + eta_t * wd)`` and ``wd' = wd / alpha``:
    ``1 - lr' * wd' = 1 / (1 + eta_t * wd)``.
    """

    name = "proxadam"
    scale_free = True

    def kernel_settings(self, lr: float, initial_lr: float, weight_decay: float) -> KernelSettings:
        if initial_lr <= 0:
            return KernelSettings(lr, 0.0, decoupled=True)
        shrink = 1.0 + self.schedule_multiplier(lr, initial_lr) * weight_decay
        return KernelSettings(lr / shrink, weight_decay / initial_lr, decoupled=True)


class AdamPRule(DecayRule):
    """The blog's AdamP (not Heo et al.'s): ``w <- (w - lr_t * u_t) / (1 + lr_t * wd / D)``, elementwise."""

    name = "adamp"
    scale_free = False
    elementwise = True

    def decay_factor(
        self, lr: float | Tensor, initial_lr: float, weight_decay: float | Tensor, denominator: Tensor | None = None
    ) -> Tensor:
        """``1 / (1 + lr_t * wd / D)``; needs Adam's denominator D (see :func:`adam_denominator`)."""
        if denominator is None:
            raise ValueError("AdamP's decay factor is elementwise: pass Adam's denominator D")
        return torch.reciprocal(1.0 + lr * weight_decay / denominator)

    def timescale_steps(self, lr: float, initial_lr: float, weight_decay: float) -> float:
        raise ValueError("AdamP's decay is elementwise; compute its timescale from decay_factor(..., denominator)")
