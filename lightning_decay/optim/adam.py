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

import functools
import warnings
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
    KernelDecayRule,
    ProxAdamRule,
)

__all__ = ["KernelAdam", "AdamL2", "AdamW", "ProxAdam", "AdamC", "CONVENTIONS", "check_tensor_lr_path"]


def check_tensor_lr_path(group: dict[str, Any], where: str) -> None:
    """torch's foreach Adam kernel refuses a tensor lr unless capturable: the same error, but raised before any
    group is updated (ValueError naming ``lr``)."""
    if isinstance(group["lr"], Tensor) and group.get("foreach") and not group.get("capturable"):
        raise ValueError(
            f"lr as a Tensor is not supported for capturable=False and foreach=True{where} (torch's foreach Adam "
            "kernel): give a float lr, foreach=False or capturable=True"
        )


#: torch's Adam step without its hook wrapper (resolved once: torch wraps ``Adam.step`` when an Adam is first made,
#: and the function inside stays the same).
_ADAM_STEP = unhooked_step(torch.optim.Adam)


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
        return self._step_kernel_with_rule_settings(closure, functools.partial(_ADAM_STEP, self))


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


class AdamC(KernelAdam, rule=AdamCRule):
    """Defazio et al. 2025's AdamC (the ``adamc`` rule, :class:`~lightning_decay.optim.rules.AdamCRule`): torch's
    AdamW whose decay on normalized layers follows the schedule, ``w <- (1 - lr_t^2 / lr_max * wd) w - lr_t u_t``;
    groups with ``normalized=False`` decay as torch's AdamW. ``normalized`` and ``lr_max`` are per group (the
    arguments are the defaults of groups that set neither); ``lr_max=None`` means the group's alpha, its initial lr
    (the peak of a warmup+cosine ``LambdaLR`` whose multiplier peaks at 1). ``weight_decay`` defaults to AdamW's 1e-2.
    """

    def lr_max(self, group: dict[str, Any]) -> float:
        """Deprecated: ``optimizer.rule_for(group).peak_lr(optimizer.initial_lr(group))``."""
        warnings.warn("AdamC.lr_max(group) is deprecated: use rule_for(group).peak_lr(initial_lr(group))",
                      DeprecationWarning, stacklevel=2)
        return AdamCRule(group["lr_max"]).peak_lr(self.initial_lr(group))
