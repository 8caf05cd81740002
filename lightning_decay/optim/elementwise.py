"""Adam with an elementwise decay — the blog's AdamP and cautious weight decay — as compiled multi-tensor steps.

``AdamP`` runs ``adamp``, ``CautiousAdamW`` runs ``adamw-cautious`` and ``adamw-paper-cautious``; their formulas are
their rules' (:class:`~lightning_decay.optim.rules.AdamPRule`, :class:`~lightning_decay.optim.rules.CautiousRule`),
the table of every variant is the registry's (``docs/variants.md``).

No torch kernel decays elementwise: the step is a ``torch.compile``'d multi-tensor kernel (the memory traffic of
torch's fused AdamW), or the same step eagerly where compiling is impossible (one warning). A complex parameter is
stepped as its real pair (the kernels get real views; the state is torch's, complex), on every path; the lr may be
a 0-dim tensor on every path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_decay.optim.adam import CONVENTIONS
from lightning_decay.optim.base import (
    check_adam_hyperparameters,
    default_weight_decay,
    precise_lr,
    scalar_value,
)
from lightning_decay.optim.compiled import (
    CompiledKernelOptimizer,
    adam_step_scalars,
    compute_dtype,
    compute_dtype_of,
    real_view,
    scalar_table,
)
from lightning_decay.optim.fixed_rule import convention_rule
from lightning_decay.optim.rules import AdamPRule, CautiousRule, DecayRule, adam_denominator

__all__ = ["AdamP", "CautiousAdamW"]


def _update_moments(
    grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, beta1: Tensor, beta2: Tensor, maximize: bool
) -> None:
    """Adam's moments: ``m <- beta1 m + (1 - beta1) g``, ``v <- beta2 v + (1 - beta2) g^2`` (``g`` negated when
    maximizing); inlined into the compiled steps."""
    if maximize:
        grad = -grad
    exp_avg.mul_(beta1).add_(grad * (1 - beta1))
    exp_avg_sq.mul_(beta2).add_(grad * grad * (1 - beta2))


def _adamp_multi_tensor_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    hyperparameters: Tensor,
    group_index: Tensor,
    maximize: bool,
) -> None:
    """One AdamP step over many tensors (scalars from :func:`adam_step_scalars`; decay scalar: wd)."""
    scalars = adam_step_scalars(steps, group_index, hyperparameters, compute_dtype(params[0]))
    rule = AdamPRule()
    for index, (param, grad, exp_avg, exp_avg_sq) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        step_size, bias_correction2_sqrt, lr, weight_decay, beta1, beta2, eps = scalars[index].unbind()
        _update_moments(grad, exp_avg, exp_avg_sq, beta1, beta2, maximize)
        denominator = adam_denominator(exp_avg_sq, bias_correction2_sqrt, eps)
        param.sub_(exp_avg / denominator * step_size)
        param.mul_(rule.decay_factor(lr, 0.0, weight_decay, denominator))


def _cautious_multi_tensor_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    hyperparameters: Tensor,
    group_index: Tensor,
    maximize: bool,
) -> None:
    """One cautious-AdamW step over many tensors (scalars from :func:`adam_step_scalars`; decay scalar: ``c_t``).

    ``w <- (1 - c_t * 1[u * w >= 0]) * w - lr_t * u`` with the mask taken at the old weights; ``m / D`` has the
    sign of ``u = m_hat / D``, so the mask uses it directly.
    """
    scalars = adam_step_scalars(steps, group_index, hyperparameters, compute_dtype(params[0]))
    for index, (param, grad, exp_avg, exp_avg_sq) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        step_size, bias_correction2_sqrt, _, coefficient, beta1, beta2, eps = scalars[index].unbind()
        _update_moments(grad, exp_avg, exp_avg_sq, beta1, beta2, maximize)
        update = exp_avg / adam_denominator(exp_avg_sq, bias_correction2_sqrt, eps)
        factor = CautiousRule.masked_factor(coefficient, CautiousRule.decay_mask(update, param))
        param.mul_(factor).sub_(update * step_size)


class _CompiledAdam(CompiledKernelOptimizer, Optimizer):
    """Adam with an elementwise decay: a compiled multi-tensor kernel (``fused``), or the same step eagerly.

    Subclasses give the kernel (:attr:`_step_function`, signature of :func:`_adamp_multi_tensor_step`) and each
    group's float64 row ``[lr_t, decay scalar, beta1, beta2, eps]`` (:meth:`_kernel_row`; tensors for a tensor lr).
    """

    _GROUP_DEFAULTS = {"maximize": False, "foreach": None, "fused": True}
    _mutated_arguments = (0, 2, 3, 4)  # params, exp_avgs, exp_avg_sqs, steps

    def __init__(
        self,
        params: Iterable[Any],
        rule: DecayRule,
        lr: float | Tensor,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        *,
        maximize: bool,
        foreach: bool | None,
        fused: bool | None,
    ) -> None:
        self.decay_rule = rule
        check_adam_hyperparameters({"lr": lr, "eps": eps, "weight_decay": weight_decay, "betas": betas}, "")
        if fused and foreach:
            raise ValueError("fused and foreach cannot both be True")
        if fused is None:
            fused = not foreach
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, maximize=maximize, foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults)
        self._kernel = self._new_kernel()

    def _kernel_row(self, group: dict[str, Any]) -> list[float | Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step over all groups (groups checked first)."""
        loss = self._closure_then_checks(closure)
        by_device: dict[tuple[torch.device, torch.dtype, bool], dict[str, list[Any]]] = {}
        for index, group in enumerate(self.param_groups):
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[param]
                if len(state) == 0:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                dtype = param.dtype
                if dtype.is_complex:  # as torch's Adam: the real pairs (views of the parameter and its state)
                    param, grad, exp_avg, exp_avg_sq = map(real_view, (param, grad, exp_avg, exp_avg_sq))
                key = (param.device, compute_dtype_of(dtype), bool(group["maximize"]))
                lists = by_device.setdefault(key, {"p": [], "g": [], "m": [], "v": [], "s": [], "i": []})
                lists["p"].append(param)
                lists["g"].append(grad)
                lists["m"].append(exp_avg)
                lists["v"].append(exp_avg_sq)
                lists["s"].append(state["step"])
                lists["i"].append(index)
        rows = [self._kernel_row(group) for group in self.param_groups]
        use_compile = all(group["fused"] for group in self.param_groups)
        for (device, _, maximize), lists in by_device.items():
            hyperparameters = scalar_table(rows, device)
            group_index = torch.tensor(lists["i"], device=device)
            self._kernel(
                lists["p"], lists["g"], lists["m"], lists["v"], lists["s"], hyperparameters, group_index, maximize,
                use_compile=use_compile,
            )
        return loss


class AdamP(_CompiledAdam):
    """The blog's AdamP (Decay No More, ICLR 2023 blog track) — not Heo et al. 2021's AdamP.

    ``w <- (w - lr_t * m_hat / D) / (1 + lr_t * wd / D)`` with ``D = sqrt(v_hat) + eps``: the proximal step of
    the plain squared norm in Adam's adaptive metric. The decay is elementwise and, unlike AdamW's, not
    scale-free. ``fused=None``/``True`` runs a compiled multi-tensor kernel (first step compiles for seconds),
    ``fused=False`` or ``foreach=True`` the same step eagerly.
    """

    _step_function = _adamp_multi_tensor_step

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params, AdamPRule(), lr, betas, eps, weight_decay, maximize=maximize, foreach=foreach, fused=fused
        )

    def _kernel_row(self, group: dict[str, Any]) -> list[float | Tensor]:
        return [precise_lr(group["lr"]), group["weight_decay"], group["betas"][0], group["betas"][1], group["eps"]]


class CautiousAdamW(_CompiledAdam):
    """AdamW with Chen et al. 2025's cautious weight decay: decay only where the update and the weight agree.

    * ``convention="torch"`` (default): ``w <- w - lr_t * u_t - lr_t * wd * 1[u_t * w >= 0] * w``;
    * ``convention="paper"``: ``w <- w - lr_t * u_t - eta_t * wd * 1[u_t * w >= 0] * w``, ``eta_t = lr_t / alpha``;

    with torch Adam's direction ``u_t = m_hat / (sqrt(v_hat) + eps)`` and the mask at the weights before the step.
    The mask makes the decay elementwise, so the step is a compiled multi-tensor kernel (``fused=None``/``True``;
    first step compiles for seconds; the same memory traffic as torch's fused AdamW) or the same step eagerly
    (``fused=False`` or ``foreach=True``). ``weight_decay=None`` as in :class:`AdamW`. For monitoring:
    :meth:`decay_mask`, :meth:`decayed_fraction` and ``decay_factor(group, mask=...)``.
    """

    _step_function = _cautious_multi_tensor_step
    decay_rule: CautiousRule

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
        *,
        convention: str = "torch",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        rule = CautiousRule(convention_rule(convention, CONVENTIONS))
        self.convention = convention
        weight_decay = default_weight_decay(weight_decay, lr, per_unit_lr=rule.per_unit_lr)
        super().__init__(
            params, rule, lr, betas, eps, weight_decay, maximize=maximize,
            foreach=foreach, fused=fused,
        )

    def _kernel_row(self, group: dict[str, Any]) -> list[float | Tensor]:
        lr = precise_lr(group["lr"])
        coefficient = self.decay_rule.decay_coefficient(lr, self.initial_lr(group), group["weight_decay"])
        return [lr, coefficient, group["betas"][0], group["betas"][1], group["eps"]]

    def decay_factor(  # type: ignore[override]
        self, group: dict[str, Any], denominator: Tensor | None = None, mask: Tensor | None = None
    ) -> float | Tensor:
        """``1 - c_t * mask`` elementwise given a mask (:meth:`decay_mask`); without one, ``1 - c_t`` (a float):
        the factor on the coordinates that decay (``c_t = lr_t * wd`` torch convention, ``eta_t * wd`` paper)."""
        factor = self.decay_rule.decay_factor(
            precise_lr(group["lr"]), self.initial_lr(group), group["weight_decay"], denominator, mask=mask
        )
        return scalar_value(factor, mask)

    @torch.no_grad()
    def decay_mask(self, param: Tensor) -> Tensor | None:
        """``1[u_t * w >= 0]`` with the last step's direction ``u_t`` (from the state) and the current weights.

        The step used the weights before it; the two masks differ only where a weight crossed zero. None before
        the parameter's first step. A complex parameter's mask is its real pairs' (shape ``(*param.shape, 2)``).
        """
        state = self.state.get(param)
        if not state:
            return None
        group = next(g for g in self.param_groups if any(p is param for p in g["params"]))
        beta1, beta2 = group["betas"]
        step = float(state["step"])
        exp_avg, exp_avg_sq = real_view(state["exp_avg"]), real_view(state["exp_avg_sq"])
        denominator = adam_denominator(exp_avg_sq, (1 - beta2**step) ** 0.5, group["eps"])
        update = exp_avg / (1 - beta1**step) / denominator
        return self.decay_rule.decay_mask(update, real_view(param))

    def decayed_fraction(self, group: dict[str, Any]) -> float | None:
        """Fraction of ``group``'s coordinates the mask decays (see :meth:`decay_mask`); None before any step."""
        decayed = total = 0
        for param in group["params"]:
            mask = self.decay_mask(param)
            if mask is not None:
                decayed += int(mask.sum())
                total += mask.numel()
        return decayed / total if total else None
