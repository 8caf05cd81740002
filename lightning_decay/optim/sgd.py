"""SGD with each weight-decay rule of :mod:`lightning_decay.optim.rules`, as ``torch.optim.Optimizer`` classes.

Momentum is torch's SGD's: ``b_1 = g_1``, ``b_t = mu * b_{t-1} + (1 - tau) * g_t`` (``tau`` the dampening), the
direction ``d_t = b_t``, or ``g_t + mu * b_t`` with Nesterov, or ``d_t = g_t`` without momentum; the lr multiplies
the direction outside the buffer.

The variants (``sgd-l2``, ``sgdw``, ``sgdw-paper``, ``proxsgd``) and their one-step formulas: the registry's table
in ``docs/variants.md``; each formula is its rule's (:mod:`lightning_decay.optim.rules`). Where each puts the decay:

* ``sgd-l2`` (in the gradient, so in the momentum buffer) is ``torch.optim.SGD(weight_decay=wd)`` exactly: with
  momentum the decay term is smoothed and amplified by the buffer (long-run weight ``(1 - tau) / (1 - mu)``).
* The decoupled rules keep the buffer gradient-only: the decay shrinks the weights before the step, ``w_{t-1}``,
  in the same update that subtracts ``lr_t * d_t``. This is Loshchilov & Hutter's SGDW with torch's momentum (their
  Algorithm 1 puts ``eta_t * alpha`` inside the buffer, ``m_t = mu * m_{t-1} + eta_t * alpha * g_t``; the two
  agree for a constant lr). ``proxsgd`` (after the step) is the proximal step of ``wd / (2 alpha) * ||w||^2`` with
  step ``lr_t``, taken at the point the momentum step reaches.

Speed by construction (``benchmarks/optimizer_step.py`` compares each to torch's fused SGD with the same momentum):

* ``sgd-l2``, and every rule in groups without momentum, run torch's own SGD kernel (fused by default): without
  momentum decoupled decay is an L2 term (``w - lr' * (g + wd' * w) = (1 - lr' * wd') * w - lr' * g``), so the
  rule's :meth:`~lightning_decay.optim.rules.KernelDecayRule.kernel_settings` make torch's step exactly the rule's.
* Decoupled decay with momentum is no setting of torch's SGD. A ``torch.compile``'d multi-tensor kernel fuses the
  buffer update, the decay and the step into one pass over ``w, g, b`` (torch's fused SGD's memory traffic; torch's
  fused SGD followed by a separate decay pass moves 40% more bytes). Its per-step scalars are one float64-computed
  tensor (no recompiles when the lr changes); ``fused=False`` or ``foreach=True`` run the same step eagerly, and
  compiling falls back to it with one warning where it fails.

A complex parameter is stepped as its real pair on every path (torch's kernels and the compiled one get real views;
the momentum buffer stays complex, as torch's); the lr may be a 0-dim tensor on every path, as torch's SGD takes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.sgd import sgd as torch_sgd

from lightning_decay.optim.base import (
    default_weight_decay,
    fused_supported,
    kernel_lr,
    precise_lr,
    scalar_value,
    wants_tensor_lr,
)
from lightning_decay.optim.compiled import CompiledKernelOptimizer, compute_dtype_of, real_view, scalar_table
from lightning_decay.optim.rules import KernelDecayRule, ProxSGDRule, SGDL2Rule, SGDWPaperRule, SGDWTorchRule
from lightning_decay.validation import check_bool, check_lr, check_nonnegative, check_real

__all__ = ["KernelSGD", "SGDL2", "SGDW", "ProxSGD", "SGD_DEFAULT_WEIGHT_DECAY"]

#: The default weight decay of the torch-convention SGD variants (the usual ResNet/CIFAR value); the paper and
#: proximal conventions default to the same decay at the initial lr, ``5e-4 * lr``.
SGD_DEFAULT_WEIGHT_DECAY = 5e-4

SGD_CONVENTIONS = {"torch": SGDWTorchRule, "paper": SGDWPaperRule}


def _check_sgd_hyperparameters(group: dict[str, Any], where: str) -> None:
    """Validate a group's SGD settings; errors name the argument (and the group, when it is not the default)."""
    check_lr("lr", group["lr"], where)
    check_nonnegative("weight_decay", group["weight_decay"], where)
    check_real("momentum", group["momentum"], low=0.0, high=1.0, high_open=True, where=where)
    check_real("dampening", group["dampening"], low=0.0, high=1.0, where=where)
    check_bool("nesterov", group["nesterov"], where)
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError(
            f"nesterov{where} needs momentum > 0 and dampening = 0, got momentum={group['momentum']!r}, "
            f"dampening={group['dampening']!r}"
        )


def _sgd_multi_tensor_step(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor], scalars: Tensor) -> None:
    """One decoupled-decay SGD step over many tensors; row i of ``scalars`` belongs to tensor i.

    ``b <- a * b + c * g``, then ``w <- f * w - s * (n_g * g + n_b * b)``, columns ``a, c, n_g, n_b, f, s``:
    ``a = mu`` (0 at the first step, whose buffer is zeros), ``c = 1 - tau`` (1 at the first step), ``n_g = 1``
    with Nesterov (else 0), ``n_b = mu`` with Nesterov (else 1), ``f = 1 - lr' * wd'`` and ``s = lr'`` (the rule's
    kernel settings); ``maximize`` negates ``c`` and ``n_g``.
    """
    for index, (param, grad, buffer) in enumerate(zip(params, grads, buffers)):
        buffer_decay, grad_weight, direction_grad, direction_buffer, weight_factor, step_size = scalars[index].unbind()
        buffer.mul_(buffer_decay).add_(grad * grad_weight)
        param.mul_(weight_factor).sub_((grad * direction_grad + buffer * direction_buffer) * step_size)


class KernelSGD(CompiledKernelOptimizer, Optimizer):
    """torch's SGD semantics with a :class:`~lightning_decay.optim.rules.KernelDecayRule`'s per-step ``(lr', wd')``.

    Groups whose rule torch's SGD runs exactly (L2, or no momentum) go to torch's SGD kernel (fused where supported,
    else torch's default; ``foreach``/``fused`` as given); the others to the compiled kernel
    (:func:`_sgd_multi_tensor_step`). The state is torch's (``momentum_buffer``), so torch SGD state dicts load.
    """

    decay_rule: KernelDecayRule
    _step_function = _sgd_multi_tensor_step
    _mutated_arguments = (0, 2)  # params, buffers
    # e.g. a torch.optim.SGD state_dict
    _GROUP_DEFAULTS = {"dampening": 0.0, "nesterov": False, "maximize": False, "foreach": None, "fused": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float | None = None,
        nesterov: bool = False,
        *,
        rule: KernelDecayRule,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if not isinstance(rule, KernelDecayRule):
            raise TypeError(f"rule must be a KernelDecayRule, got {rule!r}")
        weight_decay = default_weight_decay(
            weight_decay, lr, per_unit_lr=rule.per_unit_lr, default=SGD_DEFAULT_WEIGHT_DECAY
        )
        self.decay_rule = rule
        params = list(params)
        if not params:
            raise ValueError("params is empty: the optimizer got no parameters")
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            maximize=maximize, foreach=foreach, fused=fused,
        )
        _check_sgd_hyperparameters(defaults, "")
        if fused and foreach:
            raise ValueError("fused and foreach cannot both be True")
        if fused is None and foreach is None and fused_supported(params):
            defaults["fused"] = True  # the fastest exact path: torch's fused kernel (memory-bandwidth bound)
        super().__init__(params, defaults)
        self._kernel = self._new_kernel()

    def _check_settings(self, group: dict[str, Any], where: str) -> None:
        _check_sgd_hyperparameters(group, where)

    def decay_factor(self, group: dict[str, Any], denominator: Tensor | None = None) -> float | Tensor:
        """This step's decay factor for ``group``; for L2, its effective factor given the group's momentum."""
        rule = self.rule_for(group)
        if isinstance(rule, SGDL2Rule):
            factor = rule.decay_factor(
                precise_lr(group["lr"]), self.initial_lr(group), group["weight_decay"], momentum=group["momentum"],
                dampening=group["dampening"],
            )
            return scalar_value(factor, None)
        return super().decay_factor(group, denominator)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step over all groups (groups checked first)."""
        loss = self._closure_then_checks(closure)
        compiled: dict[tuple[torch.device, torch.dtype], dict[str, list[Any]]] = {}
        rows: list[list[float | Tensor]] = []  # per compiled group: its steady-state row, then its first-step row
        use_compile = True
        for group in self.param_groups:
            settings = self._cached_kernel_settings(group)
            momentum = group["momentum"]
            params = [param for param in group["params"] if param.grad is not None]
            if not params:
                continue
            grads = [param.grad for param in params]
            if any(grad.is_sparse for grad in grads):
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            buffers = [self.state[param].get("momentum_buffer") for param in params] if momentum != 0 else []
            if momentum == 0 or not settings.decoupled:  # torch's SGD is exactly the rule
                self._torch_step(group, settings.lr, settings.weight_decay, params, grads, buffers)
                continue
            use_compile = use_compile and group["fused"] is not False and not group["foreach"]
            sign = -1.0 if group["maximize"] else 1.0
            nesterov = group["nesterov"]
            last_columns = [  # n_g, n_b, f, s of _sgd_multi_tensor_step: the same at the first step
                sign if nesterov else 0.0, momentum if nesterov else 1.0, settings.decay_factor, settings.lr
            ]
            steady_row = len(rows)
            rows += [[momentum, sign * (1.0 - group["dampening"]), *last_columns], [0.0, sign, *last_columns]]
            for param, grad, buffer in zip(params, grads, buffers):
                first = buffer is None
                if first:  # zeros, and the first step's row: b_1 = g_1
                    buffer = torch.zeros_like(param, memory_format=torch.preserve_format)
                    self.state[param]["momentum_buffer"] = buffer
                dtype = param.dtype
                if dtype.is_complex:  # the real pairs (views of the parameter and its buffer)
                    param, grad, buffer = real_view(param), real_view(grad), real_view(buffer)
                key = (param.device, compute_dtype_of(dtype))
                lists = compiled.setdefault(key, {"p": [], "g": [], "b": [], "i": []})
                lists["p"].append(param)
                lists["g"].append(grad)
                lists["b"].append(buffer)
                lists["i"].append(steady_row + first)
        for (device, dtype), lists in compiled.items():
            table = scalar_table(rows, device)
            scalars = table[torch.tensor(lists["i"], device=device)].to(dtype)
            self._kernel(lists["p"], lists["g"], lists["b"], scalars, use_compile=use_compile)
        return loss

    def _torch_step(
        self,
        group: dict[str, Any],
        lr: float | Tensor,
        weight_decay: float,
        params: list[Tensor],
        grads: list[Tensor],
        buffers: list[Tensor | None],
    ) -> None:
        """torch's SGD kernel on a group's parameters with ``(lr', wd')``; complex parameters as their real pairs
        (exactly the real pair's step on every path, the fused one included), buffers stored complex as torch's."""
        originals, stored = params, list(buffers)
        if any(param.is_complex() for param in params):
            params, grads = [real_view(p) for p in params], [real_view(g) for g in grads]
            buffers = [None if b is None else real_view(b) for b in buffers]
        as_tensor = isinstance(lr, Tensor) and wants_tensor_lr(group)
        torch_sgd(
            params, grads, buffers, foreach=group["foreach"], fused=group["fused"], weight_decay=weight_decay,
            momentum=group["momentum"], lr=kernel_lr(lr, group["lr"], as_tensor), dampening=group["dampening"],
            nesterov=group["nesterov"], maximize=group["maximize"],
        )
        for param, before, buffer in zip(originals, stored, buffers):  # torch's SGD makes the first buffers
            if before is None and param.is_complex():
                buffer = torch.view_as_complex(buffer)
            self.state[param]["momentum_buffer"] = buffer if before is None else before


class SGDL2(KernelSGD, rule=SGDL2Rule, weight_decay=SGD_DEFAULT_WEIGHT_DECAY):
    """SGD with an L2 penalty in the gradient (the ``sgd-l2`` rule, :class:`~lightning_decay.optim.rules.SGDL2Rule`):
    exactly ``torch.optim.SGD(weight_decay=wd)``, the decay term in the momentum buffer; not scale-free. Defaults as
    torch's SGD except ``weight_decay=5e-4``; fused kernel by default where supported."""


class SGDW(KernelSGD, conventions=SGD_CONVENTIONS):
    """SGD with decoupled weight decay in torch's convention (``convention="torch"``, the default, rule ``sgdw``) or
    Loshchilov & Hutter's (``"paper"``, rule ``sgdw-paper``); the momentum buffer sees only gradients.
    ``weight_decay=None`` means 5e-4, or in the paper convention the same decay at the initial lr (``5e-4 * lr``).
    Without momentum: torch's (fused) SGD; with it: the compiled kernel."""


class ProxSGD(KernelSGD, rule=ProxSGDRule):
    """Proximal SGD (the ``proxsgd`` rule, :class:`~lightning_decay.optim.rules.ProxSGDRule`): the proximal map of
    ``wd / (2 alpha) * ||w||^2`` after the momentum step. ``weight_decay=None`` means ``5e-4 * lr``. Without
    momentum: torch's (fused) SGD; with it: the compiled kernel."""
