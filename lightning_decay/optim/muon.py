"""Muon with the decay rules: torch's ``torch.optim.Muon`` kernel run with each rule's per-step ``(lr', wd')``.

torch's Muon steps a 2-D parameter as ``w <- (1 - lr * wd) w - adjust(lr) O_t``, ``O_t`` the Newton-Schulz
orthogonalized momentum and ``adjust`` linear in the lr; so a scalar rule is torch's kernel with
``rule.kernel_settings(lr_t, alpha, wd)`` (:func:`~lightning_decay.optim.kernels.on_kernel`), exactly
(each Muon variant's one step: the registry's table in ``docs/variants.md``).

Cautious decay is elementwise (a mask on the sign of Muon's update), so :class:`CautiousMuon` runs torch's kernel
without decay and then decays the masked coordinates; the update's sign is read from the step itself
(``w_before - w_after``), with no second orthogonalization.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.optim._muon as torch_muon
from torch import Tensor

from lightning_decay.optim.base import DecayOptimizer, precise_lr, unhooked_step
from lightning_decay.optim.kernels import on_kernel
from lightning_decay.optim.rules import CautiousRule, KernelSettings, MuonPaperRule, MuonTorchRule
from lightning_decay.validation import check_lr, check_nonnegative

__all__ = ["MatrixMuon", "KernelMuon", "CautiousMuon", "MUON_CONVENTIONS", "ORTHOGONALIZE_DTYPES", "orthogonalize"]


def _memory_order(param: Tensor) -> list[int] | None:
    """The order of ``param``'s dimensions in memory, the first one first (``[0, 2, 3, 1]`` for a channels-last
    filter), when that permutation is contiguous; None otherwise."""
    order = [0] + sorted(range(1, param.ndim), key=lambda d: -param.stride(d))
    return order if param.stride(0) == max(param.stride()) and param.permute(order).is_contiguous() else None


class MatrixMuon(torch.optim.Muon):
    """torch's Muon that also steps a parameter of 3 or more dimensions (a convolution filter ``out x in x k x k``)
    as the matrix ``out x (in k k)`` it is a view of (its columns in the filter's memory order, e.g. channels-last:
    orthogonalizing commutes with permuting columns). The orthogonalization, the shape adjustment of the lr and the
    momentum buffer are the matrix's. Matrices step exactly as in torch's Muon; 0-D and 1-D parameters are refused.
    ``orthogonalize_dtype`` (per group): bfloat16 as torch, or float32 / float64 (:func:`orthogonalize`).
    ``transposed`` (per group, default False): the group's weights are stored ``in x out`` (transformers'
    ``Conv1D``, ``y = x @ W``); each is stepped as the ``out x in`` matrix ``W^T`` it stands for, so the lr scaling
    ``sqrt(max(1, out/in))`` and a filter's flattening read the layer's real shape (its momentum is kept
    ``out x in``)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        orthogonalize_dtype: str = "bfloat16",
    ) -> None:
        params = list(params)
        super().__init__(  # torch's own checks of the settings, and its defaults, on a stand-in matrix
            [torch.zeros(1, 1)], lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn
        )
        _check_dtype(orthogonalize_dtype, "")
        self.defaults["orthogonalize_dtype"] = orthogonalize_dtype
        self.defaults["transposed"] = False
        self.param_groups, self.state = [], defaultdict(dict)
        if not params:
            raise ValueError("params is empty: the optimizer got no parameters")
        for group in params if isinstance(params[0], dict) else [{"params": params}]:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        try:
            group = self.param_groups[-1]
            where = f" (param group {len(self.param_groups) - 1})"
            _check_dtype(group.get("orthogonalize_dtype", "bfloat16"), where)
            if not isinstance(group.get("transposed", False), bool):
                raise ValueError(f"transposed{where} must be True or False, got {group['transposed']!r}")
        except ValueError:
            self.param_groups.pop()
            raise
        transposed = self.param_groups[-1].get("transposed", False)
        for param in self.param_groups[-1]["params"]:
            matrix = param.transpose(0, 1) if transposed and param.ndim >= 2 else param
            if param.ndim < 2 or (param.ndim > 2 and _memory_order(matrix) is None):
                self.param_groups.pop()
                what = f"a {param.ndim}-D parameter" if param.ndim < 2 else "a parameter with overlapping memory"
                raise ValueError(
                    f"Muon steps matrices (and filters as matrices): got {what} of size {tuple(param.shape)}"
                )

    def _init_group(
        self, group: dict[str, Any], params_with_grad: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor]
    ) -> bool:
        for param in group["params"]:
            if param.grad is None:
                continue
            if torch.is_complex(param) or param.grad.is_sparse:
                raise RuntimeError("Muon does not support complex parameters or sparse gradients")
            matrix, grad = param, param.grad
            if group.get("transposed", False):  # stored in x out: step the out x in view
                matrix, grad = param.transpose(0, 1), grad.transpose(0, 1)
            if matrix.ndim > 2:  # a view: the step updates the filter in place
                order = _memory_order(matrix)
                assert order is not None
                grad = grad.permute(order).reshape(matrix.shape[0], -1)
                matrix = matrix.permute(order).view(matrix.shape[0], -1)
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
            params_with_grad.append(matrix)
            grads.append(grad)
            momentum_buffers.append(state["momentum_buffer"])
        return False


    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """torch's Muon step per group (its own functional ``muon``); a group with ``orthogonalize_dtype`` other
        than bfloat16 runs the same step with the Newton-Schulz iteration in that dtype (:func:`orthogonalize`)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:  # refused before any group is stepped
            for param in group["params"]:
                if param.grad is not None and (param.grad.is_sparse or torch.is_complex(param)):
                    raise RuntimeError(
                        f"Muon does not support complex parameters or sparse gradients (a parameter of size "
                        f"{tuple(param.shape)}); nothing was updated"
                    )
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            buffers: list[Tensor] = []
            self._init_group(group, params, grads, buffers)
            settings = {key: group[key] for key in ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients",
                                                    "ns_steps", "eps", "adjust_lr_fn")}
            if group["orthogonalize_dtype"] == "bfloat16":
                torch_muon.muon(params, grads, buffers, has_complex=False, **settings)
            else:
                _muon_step(params, grads, buffers, getattr(torch, group["orthogonalize_dtype"]), **settings)
        return loss


def _check_dtype(dtype: Any, where: str) -> None:
    if dtype not in ORTHOGONALIZE_DTYPES:
        raise ValueError(f"orthogonalize_dtype must be one of {ORTHOGONALIZE_DTYPES}{where}, got {dtype!r}")


#: The dtypes the Newton-Schulz iteration may run in: torch's bfloat16 (the default), or float32 / float64 (on a CPU
#: without fast bfloat16 matrix products, ~30x faster: 0.38 s instead of 11 s for a 256 x 3072 matrix here).
ORTHOGONALIZE_DTYPES = ("bfloat16", "float32", "float64")


def orthogonalize(
    matrix: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> Tensor:
    """torch's Newton-Schulz iteration (``X <- a X + (b A + c A^2) X``, ``A = X X^T``, on the wide orientation,
    after ``X <- X / max(|X|_F, eps)``) in ``dtype``."""
    a, b, c = coefficients
    x = matrix.to(dtype)
    tall = matrix.size(0) > matrix.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _muon_step(
    params: list[Tensor], grads: list[Tensor], buffers: list[Tensor], dtype: torch.dtype, *, lr: float | Tensor,
    weight_decay: float | Tensor, momentum: float, nesterov: bool, ns_coefficients: tuple[float, float, float],
    ns_steps: int, eps: float, adjust_lr_fn: str | None,
) -> None:
    """torch's single-tensor Muon step (momentum, Nesterov, shape-adjusted lr, decoupled decay) with the
    orthogonalization in ``dtype``."""
    lr = float(lr)
    for param, grad, buffer in zip(params, grads, buffers):
        buffer.lerp_(grad, 1 - momentum)
        direction = grad.lerp(buffer, momentum) if nesterov else buffer
        update = orthogonalize(direction, ns_coefficients, ns_steps, eps, dtype)
        param.mul_(1 - lr * weight_decay)
        param.add_(update.to(param.dtype), alpha=-torch_muon._adjust_lr(lr, adjust_lr_fn, param.shape))


#: torch's Muon run with any scalar rule given as ``rule=`` (the registry's Muon records build it).
KernelMuon = on_kernel(MatrixMuon)
KernelMuon.__module__, KernelMuon.__name__, KernelMuon.__qualname__ = __name__, "KernelMuon", "KernelMuon"  # importable

#: The decoupled Muon rule of each ``convention`` (cautious decay's base).
MUON_CONVENTIONS = {"torch": MuonTorchRule, "paper": MuonPaperRule}


class CautiousMuon(DecayOptimizer, MatrixMuon):
    """Muon with cautious weight decay: ``w <- w - adjust(lr_t) O_t - c_t 1[O_t w >= 0] w``.

    ``c_t = lr_t * wd`` (``convention="torch"``) or ``eta_t * wd`` (``"paper"``): only coordinates the update
    already moves towards zero are decayed. torch's Muon kernel takes the step without decay; the mask compares the
    step it took, ``w_before - w_after = adjust(lr_t) O_t``, with ``w_before`` (a coordinate whose update rounds to
    zero is decayed, as ``0 * w >= 0``). The step's mask stays in the state (``decay_mask``, one byte per coordinate)
    for the monitors. Other arguments are torch's Muon's; ``weight_decay`` defaults to its 0.1.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        *,
        convention: str = "torch",
        **kwargs: Any,
    ) -> None:
        if convention not in MUON_CONVENTIONS:
            raise ValueError(f"convention must be one of {sorted(MUON_CONVENTIONS)}, got {convention!r}")
        self.convention = convention
        self.decay_rule = CautiousRule(MUON_CONVENTIONS[convention]())
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, **kwargs)

    def _check_settings(self, group: dict[str, Any], where: str) -> None:
        check_lr("lr", group["lr"], where)
        check_nonnegative("weight_decay", group["weight_decay"], where)
        check_nonnegative("momentum", group["momentum"], where)

    def kernel_settings_for(self, group: dict[str, Any]) -> KernelSettings:
        """torch's kernel without decay (``wd' = 0``) at the base rule's ``lr'``; the decay follows the mask."""
        rule = self.decay_rule
        assert isinstance(rule, CautiousRule)
        settings = rule.base.kernel_settings(precise_lr(group["lr"]), self.initial_lr(group), group["weight_decay"])
        return KernelSettings(settings.lr, 0.0, decoupled=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step: checks, torch's Muon without decay, then ``w -= c_t 1[(w_before - w) w_before >= 0] w_before``."""
        loss = self._closure_then_checks(closure)
        rule = self.decay_rule
        assert isinstance(rule, CautiousRule)
        before = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            coefficient = float(
                rule.decay_coefficient(precise_lr(group["lr"]), self.initial_lr(group), group["weight_decay"])
            )
            before.append((params, [p.detach().clone() for p in params], coefficient))
        kernel_step = unhooked_step(MatrixMuon)
        self._step_kernel_with_rule_settings(None, lambda: kernel_step(self))
        for params, weights, coefficient in before:
            if not params or coefficient == 0.0:
                continue
            steps = torch._foreach_sub(weights, [p.detach() for p in params])
            for param, weight, update in zip(params, weights, steps):
                mask = rule.decay_mask(update, weight)
                self.state[param]["decay_mask"] = mask  # for the monitors: the share of coordinates decayed
                param.addcmul_(mask.to(weight.dtype), weight, value=-coefficient)
        return loss
