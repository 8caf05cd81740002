"""Adam with the scalar decay rules, as torch's own Adam/AdamW kernels run with per-step ``(lr', wd')``.

The variants (``adaml2``, ``adamw``, ``adamw-paper``, ``proxadam``, ``adamc``) and their one-step formulas: the
registry's table in ``docs/variants.md``; each formula is its rule's (:mod:`lightning_decay.optim.rules`). Each public
class is one line: :class:`KernelAdam` with its rule fixed (:meth:`DecayOptimizer.__init_subclass__
<lightning_decay.optim.base.DecayOptimizer.__init_subclass__>`).

Exact and fast by construction: each step is torch's kernel (fused on CPU and CUDA by default) with the settings of
:meth:`~lightning_decay.optim.rules.KernelDecayRule.kernel_settings`, so the step *is* the rule.

torch's edges are kept: a complex parameter is stepped as its real pair by torch's single-tensor and foreach kernels
(the fused kernel has none: refused when the group is built, not midway through a step), and a 0-dim tensor lr is
taken where torch takes one (not by the foreach kernel unless capturable: refused, naming ``lr``, before any update).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from lightning_decay.optim.base import (
    DecayOptimizer,
    _group_label,
    check_adam_hyperparameters,
    default_weight_decay,
    fused_supported,
    unhooked_step,
)
from lightning_decay.optim.rules import (
    AdamCRule,
    AdamL2Rule,
    AdamWPaperRule,
    AdamWTorchRule,
    DecayRule,
    KernelDecayRule,
    ProxAdamRule,
)
from lightning_decay.validation import check_bool, check_optional_real

__all__ = ["KernelAdam", "AdamL2", "AdamW", "ProxAdam", "AdamC", "AdamCGroups", "CONVENTIONS", "check_tensor_lr_path"]


def check_tensor_lr_path(group: dict[str, Any], where: str) -> None:
    """torch's foreach Adam kernel refuses a tensor lr unless capturable: the same error, but raised before any
    group is updated (ValueError naming ``lr``)."""
    if isinstance(group["lr"], Tensor) and group.get("foreach") and not group.get("capturable"):
        raise ValueError(
            f"lr as a Tensor is not supported for capturable=False and foreach=True{where} (torch's foreach Adam "
            "kernel): give a float lr, foreach=False or capturable=True"
        )


class KernelAdam(DecayOptimizer, torch.optim.Adam):
    """torch's Adam run with the per-step ``(lr', wd')`` of any :class:`KernelDecayRule` (``rule=``).

    One step is torch's kernel with ``rule.kernel_settings(lr_t, alpha, wd)``: ``w <- (1 - lr'*wd') w - lr' u_t``
    (decoupled rules) or ``g <- g + wd'*w`` then Adam (L2). A new scalar rule needs no class of its own: its registry
    record builds ``KernelAdam(params, rule=TheRule(), ...)``. ``weight_decay=None`` means torch AdamW's 1e-2, scaled
    by the lr for rules whose decay is ``eta_t * wd`` (:attr:`DecayRule.per_unit_lr`).
    """

    decay_rule: KernelDecayRule

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
        amsgrad: bool = False,
        *,
        rule: KernelDecayRule,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        if not isinstance(rule, KernelDecayRule):
            raise TypeError(f"rule must be a KernelDecayRule (a rule torch's kernel runs), got {rule!r}")
        self.decay_rule = rule
        params = list(params)
        if not params:
            raise ValueError("params is empty: the optimizer got no parameters")
        weight_decay = default_weight_decay(weight_decay, lr, per_unit_lr=rule.per_unit_lr)
        check_adam_hyperparameters({"lr": lr, "eps": eps, "weight_decay": weight_decay, "betas": betas}, "")
        if fused is None and foreach is None and not differentiable and fused_supported(params):
            fused = True  # the fastest exact path: torch's fused kernel (memory-bandwidth bound)
        super().__init__(
            params,
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=rule.decoupled,
        )

    def _check_settings(self, group: dict[str, Any], where: str) -> None:
        super()._check_settings(group, where)
        check_tensor_lr_path(group, where)

    def _prepare_group(self, group: dict[str, Any]) -> None:
        super()._prepare_group(group)
        if group.get("fused"):
            dtypes = sorted({str(p.dtype) for p in group["params"] if p.is_complex()})
            if dtypes:
                raise ValueError(
                    f"fused=True{_group_label(self, group)} cannot step complex parameters ({', '.join(dtypes)}): "
                    "torch's fused Adam kernel has no complex version; give this group fused=False (torch's other "
                    "kernels step a complex parameter as its real pair)"
                )

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step: every group is checked, then torch's kernel runs with the rule's settings."""
        loss = self._closure_then_checks(closure)
        self._run_kernel_with_rule_settings(lambda: unhooked_step(torch.optim.Adam)(self))
        return loss


#: The decoupled-AdamW rule of each ``convention``.
CONVENTIONS = {"torch": AdamWTorchRule, "paper": AdamWPaperRule}


class AdamL2(KernelAdam, rule=AdamL2Rule, weight_decay=1e-4):
    """Adam with an L2 penalty in the gradient (the ``adaml2`` rule, :class:`~lightning_decay.optim.rules.AdamL2Rule`):
    torch's ``Adam(weight_decay=wd)``, not scale-free. ``weight_decay`` defaults to 1e-4."""


class AdamW(KernelAdam, conventions=CONVENTIONS):
    """AdamW in torch's convention (``convention="torch"``, the default: a drop-in for ``torch.optim.AdamW``, rule
    ``adamw``) or Loshchilov & Hutter's (``"paper"``, rule ``adamw-paper``, decay ``eta_t * wd``).
    ``weight_decay=None`` means torch's 1e-2, or in the paper convention the same decay at the initial lr."""


class ProxAdam(KernelAdam, rule=ProxAdamRule):
    """Zhuang et al.'s proximal Adam (the ``proxadam`` rule, :class:`~lightning_decay.optim.rules.ProxAdamRule`).
    ``weight_decay=None`` means ``1e-2 * lr`` (torch AdamW's default decay at the initial lr)."""


class AdamCGroups:
    """AdamC's per-group rule, for any optimizer of this package that runs kernel settings (:class:`AdamC`, and
    AdamC on another kernel, :func:`~lightning_decay.optim.kernels.on_kernel`): groups with ``normalized`` follow
    :class:`AdamCRule` with the group's ``lr_max``, the others torch's AdamW rule. Call :meth:`_init_adamc` before
    the optimizer's ``__init__`` (it adds the groups) and ``self.defaults.update(self._adamc_defaults)`` after."""

    defaults: dict[str, Any]
    param_groups: list[dict[str, Any]]

    def _init_adamc(self, normalized: bool, lr_max: float | None) -> None:
        self._adamc_defaults = {"normalized": normalized, "lr_max": lr_max}
        self._check_adamc_settings(self._adamc_defaults, "")
        self._unnormalized_rule = AdamWTorchRule()

    @staticmethod
    def _check_adamc_settings(group: dict[str, Any], where: str) -> None:
        check_bool("normalized", group["normalized"], where)
        check_optional_real("lr_max", group["lr_max"], positive=True, where=where)

    def rule_for(self, group: dict[str, Any]) -> DecayRule:
        """:class:`AdamCRule` with the group's ``lr_max`` for normalized groups, torch's AdamW rule otherwise."""
        if group["normalized"]:
            return AdamCRule(group["lr_max"])
        return self._unnormalized_rule

    def lr_max(self, group: dict[str, Any]) -> float:
        """The peak lr AdamC divides by for ``group``: ``group["lr_max"]``, else alpha."""
        return AdamCRule(group["lr_max"]).peak_lr(self.initial_lr(group))  # type: ignore[attr-defined]

    def _check_settings(self, group: dict[str, Any], where: str) -> None:
        super()._check_settings(group, where)  # type: ignore[misc]
        self._check_adamc_settings(group, where)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in self._adamc_defaults.items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)  # type: ignore[misc]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        if not hasattr(self, "_unnormalized_rule"):  # unpickled or deep-copied
            self._unnormalized_rule = AdamWTorchRule()
            self._adamc_defaults = {
                "normalized": self.defaults.get("normalized", True), "lr_max": self.defaults.get("lr_max")
            }
        for group in self.param_groups:  # e.g. a torch.optim.AdamW state_dict
            for key, value in self._adamc_defaults.items():
                group.setdefault(key, value)


class AdamC(AdamCGroups, KernelAdam):
    """Defazio et al. 2025's AdamC: torch's AdamW whose decay on normalized layers follows the schedule.

    * groups with ``group["normalized"] = True``: ``w <- (1 - lr_t^2 / lr_max * wd) w - lr_t u_t``, i.e. torch's
      kernel with ``wd' = lr_t * wd / lr_max`` (as fast as AdamW);
    * other groups: torch's AdamW, ``w <- (1 - lr_t * wd) w - lr_t u_t``.

    ``lr_max`` is per group (``group["lr_max"]``; the argument is the default for groups that do not set it).
    ``None`` means the group's alpha, its initial lr: the peak of a warmup+cosine ``LambdaLR`` whose multiplier
    peaks at 1 (set ``lr_max`` when the schedule peaks elsewhere). At ``lr_t = lr_max`` the decay equals AdamW's,
    so ``weight_decay`` carries over from AdamW (default 1e-2). ``normalized`` is the default for groups without the
    key; a param-group builder should set it on every group (False for layers not followed by a normalization).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
        amsgrad: bool = False,
        *,
        normalized: bool = True,
        lr_max: float | None = None,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        self._init_adamc(normalized, lr_max)
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, rule=AdamCRule(), maximize=maximize, foreach=foreach,
            capturable=capturable, differentiable=differentiable, fused=fused,
        )
        self.defaults.update(self._adamc_defaults)
