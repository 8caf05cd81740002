"""The weight-decay rules: every decay formula of the package, each written once.

Notation (the blog's): ``alpha`` is a group's initial learning rate, ``eta_t`` the schedule multiplier,
``lr_t = alpha * eta_t`` the learning rate a scheduler sets, ``wd`` the group's ``weight_decay``,
``u_t = m_hat / D`` the Adam direction with ``D = sqrt(v_hat) + eps``, ``d_t`` the SGD direction (torch's momentum:
``b_1 = g_1``, ``b_t = mu * b_{t-1} + (1 - tau) * g_t``; ``d_t = b_t``, or ``g_t + mu * b_t`` with Nesterov, or ``g_t``
without momentum), ``O_t`` Muon's Newton-Schulz-orthogonalized momentum and ``adjust(lr)`` torch's shape-dependent
Muon lr (linear in ``lr``), ``1[.]`` an elementwise indicator.

Each rule's one-step formula is in its class docstring; the table of every variant (name, class, step, kernel,
scale-freeness, source) is generated from the registry: ``docs/variants.md``, or
:func:`lightning_decay.optim.registry.variants_markdown`.

AdamC's groups that are not normalized follow ``adamw``. The decay formulas themselves are shared: AdamW, SGDW
and Muon (torch convention) are :class:`TorchConventionRule`, the paper conventions :class:`PaperConventionRule`, the
proximal ones :class:`ProximalRule` (the proximal term ``1 / (1 + eta_t * wd)`` is computed there and only there);
the Adam, SGD and Muon rules differ only in name and scale-freeness.

What a rule *is* is class data, read without computing anything: :attr:`DecayRule.decoupled` (the decay acts on the
weights, not through the gradient), :attr:`~DecayRule.scale_free`, :attr:`~DecayRule.elementwise` and
:attr:`~DecayRule.per_unit_lr`. :data:`RULES` holds the rule of every variant name (the registry's records carry
the same rules; :func:`rule_named` looks one up).

Rules that torch's kernels can run exactly say so through :meth:`KernelDecayRule.kernel_settings`: the learning
rate and weight decay to hand torch's Adam/AdamW kernel (``w <- (1 - lr' * wd') * w - lr' * u_t``, or
``g <- g + wd' * w`` when not decoupled) so that one step is exactly the rule's; the SGD optimizers run the same
``(lr', wd')`` as ``w <- (1 - lr' * wd') * w - lr' * d_t``. The per-step decay factor that the monitoring callbacks
log is derived from those same settings, so the optimizer and the monitors cannot disagree.

``lr`` may be a 0-dim tensor (as torch's optimizers take it): every rule then computes ``lr'``, the decay factor and
its checks by tensor arithmetic (``lr'`` a tensor); ``wd'`` is always a Python float, since torch's kernels take the
weight decay as a number (AdamC's ``wd' = lr_t * wd / lr_max`` reads the lr's value for it).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from lightning_decay.validation import check_bool, check_lr, check_nonnegative, check_optional_real

__all__ = [
    "DecayRule",
    "KernelDecayRule",
    "KernelSettings",
    "L2Rule",
    "TorchConventionRule",
    "PaperConventionRule",
    "ProximalRule",
    "AdamL2Rule",
    "AdamWTorchRule",
    "AdamWPaperRule",
    "ProxAdamRule",
    "AdamPRule",
    "AdamCRule",
    "CautiousRule",
    "SGDL2Rule",
    "SGDWTorchRule",
    "SGDWPaperRule",
    "ProxSGDRule",
    "MuonTorchRule",
    "MuonPaperRule",
    "ProxMuonRule",
    "MuonCRule",
    "adam_denominator",
    "RULES",
    "rule_named",
]


def adam_denominator(exp_avg_sq: Tensor, bias_correction2_sqrt: Tensor | float, eps: Tensor | float) -> Tensor:
    """Adam's denominator ``D = sqrt(v_hat) + eps = sqrt(v) / sqrt(1 - beta2^t) + eps`` (as torch computes it)."""
    return exp_avg_sq.sqrt() / bias_correction2_sqrt + eps


class KernelSettings(NamedTuple):
    """What to pass torch's Adam (or SGD) kernel so that its step is exactly a rule's step: ``(lr', wd', decoupled)``.

    ``lr`` is a tensor when the group's lr is one; ``weight_decay`` is always a Python float (make it with
    :meth:`of`, which reads a tensor weight decay). A named tuple: a step makes one per group whose lr changed.
    """

    lr: float | Tensor
    weight_decay: float
    decoupled: bool

    @classmethod
    def of(cls, lr: float | Tensor, weight_decay: float | Tensor, decoupled: bool) -> KernelSettings:
        """The settings, a tensor ``weight_decay`` read as a float."""
        return cls(lr, weight_decay.item() if isinstance(weight_decay, Tensor) else weight_decay, decoupled)

    @property
    def decay_factor(self) -> float | Tensor:
        """``1 - lr' * wd'`` when decoupled (the kernel's multiplicative decay); 1 for L2 (decay via the gradient)."""
        return 1.0 - self.lr * self.weight_decay if self.decoupled else 1.0


class DecayRule(ABC):
    """One decay rule. ``lr`` is ``lr_t``, ``initial_lr`` is ``alpha``; ``eta_t = lr / initial_lr``."""

    #: The variant's name in the factory's registry.
    name: str
    #: True if multiplying the loss by c > 0 leaves the trajectory unchanged (eps = 0).
    scale_free: bool
    #: True if the decay acts on the weights (``w <- f w - ...``); False for an L2 term in the gradient
    #: (``g <- g + wd * w``, which the optimizer then preconditions or feeds into its momentum).
    decoupled: bool = True
    #: True if the decay factor differs between coordinates (needs Adam's denominator D, or a mask).
    elementwise: bool = False
    #: True if the decay coefficient is ``eta_t * wd`` (paper convention, proximal): a weight decay that means the
    #: same decay as torch's ``wd`` at the initial lr is ``wd * alpha`` (defaults scale with the lr).
    per_unit_lr: bool = False
    #: Param-group keys the rule reads (AdamC's ``normalized`` and ``lr_max``): they are the rule's constructor
    #: arguments, whose values are the defaults of groups that do not set them (an optimizer's constructor takes
    #: them too). Empty: every group follows the rule as it is.
    group_keys: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def group_defaults(self) -> dict[str, Any]:
        """The values of :attr:`group_keys` for groups that set none (this rule's own)."""
        return {key: getattr(self, key) for key in self.group_keys}

    def with_group_defaults(self, **values: Any) -> DecayRule:
        """This rule with other :attr:`group_keys` defaults (an optimizer constructor's ``normalized=False``)."""
        return type(self)(**{**self.group_defaults(), **values}) if values else self

    def check_group_keys(self, group: Mapping[str, Any], where: str = "") -> None:
        """Check a group's values of :attr:`group_keys` (errors name the key and ``where``). None here."""
        return None

    def for_group(self, group: Mapping[str, Any]) -> DecayRule:
        """The rule a param group follows, given its :attr:`group_keys`: this rule, unless the rule has group keys."""
        return self

    def check(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> None:
        """Raise ValueError (TypeError for a wrong type) naming the argument when the settings are outside the
        rule's domain: ``lr >= 0`` and ``weight_decay >= 0`` (:mod:`lightning_decay.validation`), then
        :meth:`check_domain`."""
        check_lr("lr", lr)
        check_nonnegative("weight_decay", weight_decay)
        self.check_domain(lr, initial_lr, weight_decay)

    def check_domain(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> None:
        """The rule's own limits for an lr and a weight decay already validated (a decay factor that would flip
        the weights' sign): ValueError naming ``weight_decay``. None here."""
        return None

    @staticmethod
    def schedule_multiplier(lr: float | Tensor, initial_lr: float) -> float | Tensor:
        """``eta_t = lr_t / alpha`` (1 when alpha is 0)."""
        return lr / initial_lr if initial_lr > 0 else 1.0

    @abstractmethod
    def decay_factor(
        self, lr: float | Tensor, initial_lr: float, weight_decay: float, denominator: Tensor | None = None
    ) -> float | Tensor:
        """The factor that multiplies the weights in one step (1 means no decay)."""

    def timescale_steps(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> float:
        """EMA timescale of the decay in steps, ``1 / (1 - factor)`` (inf without decay); scalar rules only."""
        factor = self.decay_factor(lr, initial_lr, weight_decay)
        shrink = 1.0 - float(factor)
        return math.inf if shrink <= 0.0 else 1.0 / shrink


class KernelDecayRule(DecayRule):
    """A rule that torch's Adam/AdamW kernel runs exactly, given per-step settings."""

    @abstractmethod
    def kernel_settings(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> KernelSettings:
        """torch-kernel ``(lr', wd', decoupled)`` for this step (``decoupled`` is :attr:`decoupled`)."""

    def decay_factor(
        self, lr: float | Tensor, initial_lr: float, weight_decay: float, denominator: Tensor | None = None
    ) -> float | Tensor:
        """``1 - lr' * wd'`` of the kernel settings for decoupled rules; 1 for L2 (decay goes through the gradient)."""
        return self.kernel_settings(lr, initial_lr, weight_decay).decay_factor


# --- The shared formulas ------------------------------------------------------------------------------------------


class L2Rule(KernelDecayRule):
    """An L2 penalty in the gradient, ``g <- g + wd * w``: the kernel's own (coupled) weight decay."""

    scale_free = False
    decoupled = False

    def kernel_settings(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> KernelSettings:
        return KernelSettings(lr, weight_decay, decoupled=False)


class TorchConventionRule(KernelDecayRule):
    """Decoupled decay in torch's convention: ``w <- (1 - lr_t * wd) * w - lr_t * step_t``."""

    def check_domain(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> None:
        if lr * weight_decay >= 1.0:
            raise ValueError(
                f"lr * weight_decay = {lr * weight_decay:g} >= 1 would flip the weights' sign "
                f"(torch convention, decay factor 1 - lr*weight_decay; lr={lr:g}, weight_decay={weight_decay:g})"
            )

    def kernel_settings(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> KernelSettings:
        return KernelSettings(lr, weight_decay, decoupled=True)


class PaperConventionRule(KernelDecayRule):
    """Decoupled decay in Loshchilov & Hutter's convention: ``w <- (1 - eta_t * wd) * w - lr_t * step_t``.

    torch's kernel decays by ``1 - lr' * wd'``; with ``lr' = lr_t`` and ``wd' = wd / alpha`` that is
    ``1 - eta_t * wd``.
    """

    per_unit_lr = True

    def check_domain(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> None:
        eta_wd = self.schedule_multiplier(lr, initial_lr) * weight_decay
        if eta_wd >= 1.0:
            raise ValueError(
                f"eta_t * weight_decay = {eta_wd:g} >= 1 would flip the weights' sign (paper convention, decay "
                f"factor 1 - eta_t*weight_decay with eta_t = lr/initial lr; lr={lr:g}, weight_decay={weight_decay:g})"
            )

    def kernel_settings(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> KernelSettings:
        if initial_lr <= 0:
            return KernelSettings(lr, 0.0, decoupled=True)
        return KernelSettings(lr, weight_decay / initial_lr, decoupled=True)


class ProximalRule(KernelDecayRule):
    """The proximal step of ``wd / (2 alpha) * ||w||^2``: ``w <- (w - lr_t * step_t) / (1 + eta_t * wd)``.

    Equal to torch's decoupled kernel with ``lr' = lr_t / (1 + eta_t * wd)`` and ``wd' = wd / alpha``:
    ``1 - lr' * wd' = 1 / (1 + eta_t * wd)``.
    """

    per_unit_lr = True

    def kernel_settings(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> KernelSettings:
        if initial_lr <= 0:
            return KernelSettings(lr, 0.0, decoupled=True)
        shrink = 1.0 + self.schedule_multiplier(lr, initial_lr) * weight_decay
        return KernelSettings(lr / shrink, weight_decay / initial_lr, decoupled=True)


# --- Adam ----------------------------------------------------------------------------------------------------------


class AdamL2Rule(L2Rule):
    """``g <- g + wd * w`` then Adam: the decay is preconditioned, ``lr_t * wd / D`` per coordinate."""

    name = "adaml2"

    def preconditioned_decay(self, lr: float | Tensor, weight_decay: float, denominator: Tensor) -> Tensor:
        """``lr_t * wd / D``: how strongly the L2 term pulls each coordinate in one (momentum-free) step."""
        return lr * weight_decay / denominator


class AdamWTorchRule(TorchConventionRule):
    """PyTorch's AdamW: ``w <- (1 - lr_t * wd) * w - lr_t * u_t``."""

    name = "adamw"
    scale_free = True


class AdamWPaperRule(PaperConventionRule):
    """Loshchilov & Hutter's AdamW: ``w <- (1 - eta_t * wd) * w - lr_t * u_t`` (kernel: ``wd' = wd / alpha``)."""

    name = "adamw-paper"
    scale_free = True


class ProxAdamRule(ProximalRule):
    """Zhuang et al.'s ProxAdam: :class:`ProximalRule` with Adam's update, ``step_t = u_t``."""

    name = "proxadam"
    scale_free = True


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

    def timescale_steps(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> float:
        raise ValueError("AdamP's decay is elementwise; compute its timescale from decay_factor(..., denominator)")


class AdamCRule(KernelDecayRule):
    """Defazio et al. 2025's AdamC, for normalized layers: ``w <- (1 - lr_t^2 / lr_max * wd) * w - lr_t * u_t``.

    The decay coefficient is torch AdamW's ``lr_t * wd`` times ``lr_t / lr_max``, so a normalized layer's
    steady-state weight norm does not move as the schedule lowers the lr (its gradient norm then stays flat at the
    end of training). torch's AdamW kernel runs it with ``lr' = lr_t`` and ``wd' = lr_t * wd / lr_max``.
    ``lr_max=None`` means alpha, the group's initial lr (the peak of a schedule whose multiplier peaks at 1).

    Per group (:attr:`~DecayRule.group_keys`): a group's ``lr_max``, and ``normalized``: groups with
    ``normalized=False`` follow :attr:`unnormalized` (torch's AdamW rule). The constructor's values are the
    defaults of groups that set neither.
    """

    name = "adamc"
    scale_free = True
    group_keys = ("normalized", "lr_max")
    #: What a rule unpickled from before ``normalized`` was a rule argument reads.
    normalized = True

    def __init__(self, lr_max: float | None = None, *, normalized: bool = True) -> None:
        AdamCRule.check_group_keys(self, {"normalized": normalized, "lr_max": lr_max})
        self.lr_max = lr_max
        self.normalized = normalized

    def __repr__(self) -> str:
        arguments = ", ".join(
            [f"lr_max={self.lr_max!r}"] * (self.lr_max is not None) + ["normalized=False"] * (not self.normalized)
        )
        return f"{type(self).__name__}({arguments})"

    def check_group_keys(self, group: Mapping[str, Any], where: str = "") -> None:
        check_bool("normalized", group["normalized"], where)
        check_optional_real("lr_max", group["lr_max"], positive=True, where=where)

    @property
    def unnormalized(self) -> KernelDecayRule:
        """The rule of the groups that are not normalized: torch's AdamW."""
        return AdamWTorchRule()

    def for_group(self, group: Mapping[str, Any]) -> DecayRule:
        """:attr:`unnormalized` for a group with ``normalized=False``; else AdamC with the group's ``lr_max``."""
        if not group["normalized"]:
            return self.unnormalized
        lr_max = group["lr_max"]
        return self if lr_max == self.lr_max and self.normalized else type(self)(lr_max)

    def peak_lr(self, initial_lr: float) -> float:
        """``lr_max``, or alpha when it was not given."""
        return float(self.lr_max) if self.lr_max is not None else initial_lr

    def check_domain(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> None:
        coefficient = 1.0 - self.decay_factor(lr, initial_lr, weight_decay)
        if coefficient >= 1.0:
            raise ValueError(
                f"lr^2 / lr_max * weight_decay = {coefficient:g} >= 1 would flip the weights' sign (AdamC, decay "
                f"factor 1 - lr^2/lr_max*weight_decay; lr={lr:g}, lr_max={self.peak_lr(initial_lr):g}, "
                f"weight_decay={weight_decay:g})"
            )

    def kernel_settings(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> KernelSettings:
        peak = self.peak_lr(initial_lr)
        if peak <= 0:
            return KernelSettings(lr, 0.0, decoupled=True)
        return KernelSettings.of(lr, lr * weight_decay / peak, decoupled=True)  # a tensor lr gives a tensor wd'


class CautiousRule(DecayRule):
    """Chen et al. 2025's cautious weight decay on top of a decoupled rule: decay only where ``u * w >= 0``.

    ``w <- w - lr_t * u_t - c_t * 1[u_t * w >= 0] * w`` with ``c_t = 1 - base factor`` (``lr_t * wd`` for AdamW's
    torch convention, ``eta_t * wd`` for the paper's): the decay acts only on coordinates where the update already
    moves the weight towards zero. Elementwise through the mask; the factor is ``1 - c_t`` on masked coordinates
    and 1 elsewhere. Scale-free like its base (the mask depends only on signs).
    """

    elementwise = True

    def __init__(self, base: KernelDecayRule) -> None:
        if not base.decoupled:
            raise ValueError(f"cautious decay needs a decoupled rule, got {base.name!r}")
        self.base = base
        self.name = f"{base.name}-cautious"
        self.scale_free = base.scale_free
        self.per_unit_lr = base.per_unit_lr

    def __repr__(self) -> str:
        return f"CautiousRule({self.base!r})"

    def check_domain(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> None:
        self.base.check_domain(lr, initial_lr, weight_decay)

    def decay_coefficient(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> float | Tensor:
        """``c_t = lr' * wd'`` of the base rule's kernel settings: ``lr_t * wd`` (torch) or ``eta_t * wd`` (paper)."""
        settings = self.base.kernel_settings(lr, initial_lr, weight_decay)
        return settings.lr * settings.weight_decay

    @staticmethod
    def decay_mask(update: Tensor, weight: Tensor) -> Tensor:
        """``1[u * w >= 0]`` (bool): the coordinates that decay (same sign, or either one zero)."""
        return update * weight >= 0

    @staticmethod
    def masked_factor(coefficient: float | Tensor, mask: Tensor) -> Tensor:
        """``1 - c_t * mask``, elementwise."""
        return 1.0 - coefficient * mask

    def decay_factor(
        self,
        lr: float | Tensor,
        initial_lr: float,
        weight_decay: float,
        denominator: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> float | Tensor:
        """``1 - c_t * mask`` given the mask (see :meth:`decay_mask`); without it, ``1 - c_t``: the factor on the
        decayed coordinates (the others keep factor 1). ``denominator`` is not used (the mask is sign-only)."""
        coefficient = self.decay_coefficient(lr, initial_lr, weight_decay)
        return 1.0 - coefficient if mask is None else self.masked_factor(coefficient, mask)

    def timescale_steps(self, lr: float | Tensor, initial_lr: float, weight_decay: float) -> float:
        """The timescale of a coordinate the mask decays at every step, ``1 / c_t`` (steps it skips lengthen it)."""
        coefficient = self.decay_coefficient(lr, initial_lr, weight_decay)
        return math.inf if coefficient <= 0.0 else 1.0 / coefficient


# --- SGD -----------------------------------------------------------------------------------------------------------


class SGDL2Rule(L2Rule):
    """``g <- g + wd * w`` then torch's SGD: the decay term goes through the momentum buffer.

    Without momentum one step is ``w <- (1 - lr_t * wd) * w - lr_t * g``. With momentum ``mu`` and dampening
    ``tau`` the term ``wd * w`` is spread over the following steps with total weight ``k = (1 - tau) / (1 - mu)``
    (Nesterov too: torch requires ``tau = 0`` there, and ``g + mu * b`` also sums to ``1 / (1 - mu)``), so the
    effective per-step decay factor is ``1 - k * lr_t * wd`` for a slowly varying lr (exact without momentum, ``k = 1``;
    with momentum, the slowest mode of the pure-decay recurrence up to ``O((lr_t * wd)^2)``).
    """

    name = "sgd-l2"

    @staticmethod
    def momentum_gain(momentum: float = 0.0, dampening: float = 0.0) -> float:
        """``k = (1 - tau) / (1 - mu)``: the long-run weight of a gradient term in SGD's steps (1 without momentum)."""
        return 1.0 if momentum == 0 else (1.0 - dampening) / (1.0 - momentum)

    def decay_factor(
        self,
        lr: float | Tensor,
        initial_lr: float,
        weight_decay: float,
        denominator: Tensor | None = None,
        *,
        momentum: float = 0.0,
        dampening: float = 0.0,
    ) -> float | Tensor:
        """``1 - k * lr_t * wd`` with ``k`` = :meth:`momentum_gain` (the L2 term's effective decay)."""
        settings = self.kernel_settings(lr, initial_lr, weight_decay)
        return 1.0 - self.momentum_gain(momentum, dampening) * settings.lr * settings.weight_decay


class SGDWTorchRule(TorchConventionRule):
    """SGDW in torch's convention: ``w <- (1 - lr_t * wd) * w - lr_t * d_t`` (the buffer sees only gradients)."""

    name = "sgdw"
    scale_free = False


class SGDWPaperRule(PaperConventionRule):
    """SGDW in Loshchilov & Hutter's convention: ``w <- (1 - eta_t * wd) * w - lr_t * d_t``."""

    name = "sgdw-paper"
    scale_free = False


class ProxSGDRule(ProximalRule):
    """Proximal SGD: :class:`ProximalRule` with SGD's momentum direction, ``step_t = d_t``."""

    name = "proxsgd"
    scale_free = False


# --- Muon ----------------------------------------------------------------------------------------------------------


class MuonTorchRule(TorchConventionRule):
    """torch's Muon: ``w <- (1 - lr_t * wd) * w - adjust(lr_t) * O_t``, ``O_t`` the orthogonalized momentum."""

    name = "muon"
    scale_free = True  # O_t is normalized before the Newton-Schulz iteration: the loss scale cancels


class MuonPaperRule(PaperConventionRule):
    """Muon in Loshchilov & Hutter's convention: ``w <- (1 - eta_t * wd) * w - adjust(lr_t) * O_t``."""

    name = "muon-paper"
    scale_free = True


class ProxMuonRule(ProximalRule):
    """Proximal Muon: :class:`ProximalRule` with Muon's update, ``lr_t * step_t = adjust(lr_t) * O_t`` (torch's Muon
    kernel runs it exactly with the proximal ``(lr', wd')``, since ``adjust`` is linear in the lr)."""

    name = "proxmuon"
    scale_free = True


class MuonCRule(AdamCRule):
    """AdamC's correction on Muon's matrices: ``w <- (1 - lr_t^2 / lr_max * wd) * w - adjust(lr_t) * O_t``, on
    every group Muon steps (Muon's matrices are hidden layers: no group key)."""

    name = "muonc"
    group_keys = ()

    def check_group_keys(self, group: Mapping[str, Any], where: str = "") -> None:
        return None

    def for_group(self, group: Mapping[str, Any]) -> DecayRule:
        return self


#: The rule of every variant name (the registry's records carry these rules: ``tests/test_variants.py`` checks that
#: both agree). Kept here, below the optimizers, so that :func:`~lightning_decay.optim.kernels.on_kernel` resolves a
#: variant name without importing the registry.
RULES: Mapping[str, DecayRule] = MappingProxyType({rule.name: rule for rule in (
    AdamL2Rule(), AdamWTorchRule(), AdamWPaperRule(), ProxAdamRule(), AdamPRule(), AdamCRule(),
    CautiousRule(AdamWTorchRule()), CautiousRule(AdamWPaperRule()),
    SGDL2Rule(), SGDWTorchRule(), SGDWPaperRule(), ProxSGDRule(),
    MuonTorchRule(), MuonPaperRule(), ProxMuonRule(), MuonCRule(), CautiousRule(MuonTorchRule()),
)})


def rule_named(name: str) -> DecayRule:
    """The rule of a variant name (case and ``_`` / ``-`` insensitive); ValueError listing the valid names."""
    if not isinstance(name, str):
        raise TypeError(f"variant name must be a string, got {type(name).__name__} {name!r}")
    key = name.strip().lower().replace("_", "-")
    if key not in RULES:
        raise ValueError(f"unknown variant {name!r}; valid variants: {', '.join(RULES)}")
    return RULES[key]
