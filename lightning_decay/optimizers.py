"""Adam with each weight-decay rule of :mod:`lightning_decay.decay_rules`, as ``torch.optim.Optimizer`` classes.

| variant | class | kernel |
|---|---|---|
| ``adaml2`` | ``AdamL2`` | torch's Adam (fused by default) |
| ``adamw``, ``adamw-paper`` | ``AdamW(convention="torch" / "paper")`` | torch's Adam(W) with per-step ``(lr', wd')`` |
| ``proxadam`` | ``ProxAdam`` | torch's Adam(W) with per-step ``(lr', wd')`` |
| ``adamc`` | ``AdamC`` | torch's Adam(W) with per-group, per-step ``(lr', wd')`` |
| ``adamp`` | ``AdamP`` | compiled multi-tensor step (eager fallback) |
| ``adamw-cautious``, ``adamw-paper-cautious`` | ``CautiousAdamW(convention=...)`` | compiled (eager fallback) |
| ``sgd-l2``, ``sgdw``, ``sgdw-paper``, ``proxsgd`` | :mod:`lightning_decay.sgd` | torch's SGD / compiled |

Speed by construction:

* ``AdamL2``, ``AdamW`` (both conventions), ``ProxAdam`` and ``AdamC`` are torch's own Adam/AdamW kernels (fused on
  CPU and CUDA by default) run with the per-step learning rate and weight decay that make them exactly the rule
  (:meth:`~lightning_decay.decay_rules.KernelDecayRule.kernel_settings`).
* ``AdamP`` and ``CautiousAdamW`` decay elementwise, which no torch kernel does; they run a ``torch.compile``'d
  multi-tensor step whose per-step scalars are tensors (no recompiles when the lr changes), and an eager path
  where compiling is impossible (one warning).

Every optimizer exposes ``decay_rule``, ``rule_for(group)`` (the rule a group follows: AdamC's differ between
normalized and other groups), ``initial_lr(group)``, ``schedule_multiplier(group)`` and ``decay_factor(group)``.
"""

from __future__ import annotations

import logging
import numbers
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_decay.decay_rules import (
    AdamCRule,
    AdamL2Rule,
    AdamPRule,
    AdamWPaperRule,
    AdamWTorchRule,
    CautiousRule,
    DecayRule,
    KernelDecayRule,
    ProxAdamRule,
    adam_denominator,
    check_nonnegative,
)

__all__ = [
    "AdamL2",
    "AdamW",
    "ProxAdam",
    "AdamP",
    "AdamC",
    "CautiousAdamW",
    "SGDL2",
    "SGDW",
    "ProxSGD",
    "DecayOptimizer",
    "VARIANTS",
    "resolve_variant",
]

log = logging.getLogger(__name__)

#: Group key holding the lr a group was built with: the blog's alpha when no scheduler set ``initial_lr``.
LR_AT_CONSTRUCTION = "lr_at_construction"

ADAMW_DEFAULT_WEIGHT_DECAY = 1e-2  # torch.optim.AdamW's default, torch convention


def _default_weight_decay(
    weight_decay: float | None, lr: float, per_unit_lr: bool, default: float = ADAMW_DEFAULT_WEIGHT_DECAY
) -> float:
    """``default`` (torch AdamW's 1e-2); for rules whose decay is ``eta_t * wd``, the same decay at the initial lr."""
    if weight_decay is not None:
        return weight_decay
    check_nonnegative("lr", lr)
    return default * (lr if per_unit_lr else 1.0)


def _check_hyperparameters(group: dict[str, Any], where: str) -> None:
    """Validate a group's Adam settings; errors name the argument (and the group, when it is not the default)."""
    for name in ("lr", "eps", "weight_decay"):
        check_nonnegative(name, group[name], where)
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas{where} must be a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
            raise TypeError(f"betas[{index}]{where} must be a real number, got {beta!r}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"betas[{index}]{where} must be in [0, 1), got {beta!r}")


def _group_label(optimizer: Optimizer, group: dict[str, Any]) -> str:
    index = next((i for i, g in enumerate(optimizer.param_groups) if g is group), len(optimizer.param_groups))
    name = group.get("name")
    if index == 0 and len(optimizer.param_groups) <= 1 and name is None:
        return ""
    return f" (param group {index}{f' {name!r}' if name else ''})"


def _fused_supported(params: list[Any]) -> bool:
    """True when torch's fused Adam kernel can take every parameter (device type and floating dtype)."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    tensors: list[Tensor] = []
    for item in params:
        if isinstance(item, dict):
            tensors.extend(item["params"] if not isinstance(item["params"], Tensor) else [item["params"]])
        elif isinstance(item, tuple):  # named parameters
            tensors.append(item[1])
        else:
            tensors.append(item)
    return bool(tensors) and all(
        isinstance(t, Tensor) and t.device.type in devices and torch.is_floating_point(t) for t in tensors
    )


class DecayOptimizer:
    """What every optimizer of this package shares: its decay rule, alpha bookkeeping and validation."""

    decay_rule: DecayRule
    param_groups: list[dict[str, Any]]

    #: Attributes a copy or pickle keeps (torch's ``Optimizer.__getstate__`` keeps only defaults, state and groups).
    _PICKLED_ATTRIBUTES = ("decay_rule", "convention", "_adamc_defaults", "_unnormalized_rule")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # type: ignore[misc]
        state.update({key: self.__dict__[key] for key in self._PICKLED_ATTRIBUTES if key in self.__dict__})
        return state

    def initial_lr(self, group: dict[str, Any]) -> float:
        """The blog's alpha: ``initial_lr`` set by a torch LR scheduler, else the lr the group was built with."""
        return float(group.get("initial_lr", group[LR_AT_CONSTRUCTION]))

    def schedule_multiplier(self, group: dict[str, Any]) -> float:
        """``eta_t = lr_t / alpha`` for this group."""
        return self.decay_rule.schedule_multiplier(group["lr"], self.initial_lr(group))

    def rule_for(self, group: dict[str, Any]) -> DecayRule:
        """The rule ``group`` follows: :attr:`decay_rule`, except where a variant treats groups differently (AdamC)."""
        return self.decay_rule

    def decay_factor(self, group: dict[str, Any], denominator: Tensor | None = None) -> float | Tensor:
        """This step's decay factor for ``group`` (elementwise rules need Adam's denominator)."""
        rule = self.rule_for(group)
        return rule.decay_factor(group["lr"], self.initial_lr(group), group["weight_decay"], denominator)

    def _check_settings(self, group: dict[str, Any], where: str) -> None:
        """The optimizer family's own settings (Adam's betas and eps here; SGD overrides)."""
        _check_hyperparameters(group, where)

    def _check_group(self, group: dict[str, Any]) -> None:
        where = _group_label(self, group)  # type: ignore[arg-type]
        self._check_settings(group, where)
        try:
            self.rule_for(group).check(group["lr"], self.initial_lr(group), group["weight_decay"])
        except ValueError as error:
            raise ValueError(f"{error}{where}") from None

    #: Group keys a state dict saved by torch's optimizer (or an older version) may lack, and their defaults.
    _GROUP_DEFAULTS: dict[str, Any] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)  # type: ignore[misc]
        self._prepare_group(self.param_groups[-1])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        for group in self.param_groups:  # e.g. a torch.optim.AdamW state_dict: no alpha stored
            group.setdefault(LR_AT_CONSTRUCTION, group.get("initial_lr", group["lr"]))
            for key, value in self._GROUP_DEFAULTS.items():
                group.setdefault(key, value)

    def _closure_then_checks(self, closure: Callable[[], Any] | None) -> Any:
        """Run the closure (gradients on), then check every group before any update; return the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._check_group(group)
        return loss

    def _prepare_group(self, group: dict[str, Any]) -> None:
        group.setdefault(LR_AT_CONSTRUCTION, group["lr"])
        where = _group_label(self, group)  # type: ignore[arg-type]
        for flag in _BOOLEAN_FLAGS:
            value = group.get(flag)
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"{flag}{where} must be True or False, got {type(value).__name__} {value!r}")
        if group.get("fused") and group.get("foreach"):
            raise ValueError(f"fused and foreach{where} cannot both be True")
        self._check_group(group)


#: Constructor flags that must be booleans (``foreach`` and ``fused`` may also be None: the default path).
_BOOLEAN_FLAGS = ("amsgrad", "maximize", "foreach", "fused", "capturable", "differentiable", "nesterov")


def _torch_adam_step(optimizer: torch.optim.Adam) -> None:
    """torch's ``Adam.step`` without the step-hook wrapper torch adds once an Adam exists (ours already ran)."""
    step = torch.optim.Adam.step
    if getattr(step, "hooked", False):
        step = step.__wrapped__
    step(optimizer)


class _KernelAdam(DecayOptimizer, torch.optim.Adam):
    """torch's Adam run with the per-step ``(lr', wd')`` of a :class:`KernelDecayRule`."""

    decay_rule: KernelDecayRule

    def __init__(
        self,
        params: Iterable[Any],
        rule: KernelDecayRule,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        amsgrad: bool,
        *,
        maximize: bool,
        foreach: bool | None,
        capturable: bool,
        differentiable: bool,
        fused: bool | None,
    ) -> None:
        self.decay_rule = rule
        params = list(params)
        if not params:
            raise ValueError("params is empty: the optimizer got no parameters")
        _check_hyperparameters({"lr": lr, "eps": eps, "weight_decay": weight_decay, "betas": betas}, "")
        if fused is None and foreach is None and not differentiable and _fused_supported(params):
            fused = True  # the fastest exact path: torch's fused kernel (memory-bandwidth bound)
        decoupled = rule.kernel_settings(lr, lr, weight_decay).decoupled
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
            decoupled_weight_decay=decoupled,
        )

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step: every group is checked, then torch's kernel runs with the rule's settings."""
        loss = self._closure_then_checks(closure)
        kernel_settings = []
        for group in self.param_groups:
            rule = self.rule_for(group)
            assert isinstance(rule, KernelDecayRule)
            kernel_settings.append(rule.kernel_settings(group["lr"], self.initial_lr(group), group["weight_decay"]))
        saved = [(group["lr"], group["weight_decay"]) for group in self.param_groups]
        try:
            for group, settings in zip(self.param_groups, kernel_settings):
                group["lr"], group["weight_decay"] = settings.lr, settings.weight_decay
            _torch_adam_step(self)
        finally:
            for group, (lr, weight_decay) in zip(self.param_groups, saved):
                group["lr"], group["weight_decay"] = lr, weight_decay
        return loss


class AdamL2(_KernelAdam):
    """Adam with an L2 penalty in the gradient: ``g <- g + wd * w``, then the Adam step.

    Not scale-free: the penalty does not scale with the loss. torch's ``Adam(weight_decay=wd)``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-4,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params, AdamL2Rule(), lr, betas, eps, weight_decay, amsgrad, maximize=maximize, foreach=foreach,
            capturable=capturable, differentiable=differentiable, fused=fused,
        )


CONVENTIONS = {"torch": AdamWTorchRule, "paper": AdamWPaperRule}


class AdamW(_KernelAdam):
    """AdamW in either convention.

    * ``convention="torch"`` (default; a drop-in for ``torch.optim.AdamW``): ``w <- (1 - lr_t*wd) w - lr_t u_t``.
    * ``convention="paper"`` (Loshchilov & Hutter): ``w <- (1 - eta_t*wd) w - lr_t u_t``, ``eta_t = lr_t / alpha``.

    ``weight_decay=None`` means torch's default 1e-2 in the torch convention and the same decay at the initial
    lr in the paper convention (``1e-2 * lr``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
        amsgrad: bool = False,
        *,
        convention: str = "torch",
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {sorted(CONVENTIONS)}, got {convention!r}")
        self.convention = convention
        weight_decay = _default_weight_decay(weight_decay, lr, per_unit_lr=convention == "paper")
        super().__init__(
            params, CONVENTIONS[convention](), lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
            foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused,
        )


class ProxAdam(_KernelAdam):
    """Zhuang et al.'s proximal Adam: ``w <- (w - lr_t * u_t) / (1 + eta_t * wd)``, ``eta_t = lr_t / alpha``.

    ``weight_decay=None`` means ``1e-2 * lr`` (torch AdamW's default decay at the initial lr).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        weight_decay = _default_weight_decay(weight_decay, lr, per_unit_lr=True)
        super().__init__(
            params, ProxAdamRule(), lr, betas, eps, weight_decay, amsgrad, maximize=maximize, foreach=foreach,
            capturable=capturable, differentiable=differentiable, fused=fused,
        )


class AdamC(_KernelAdam):
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
        lr: float = 1e-3,
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
        self._adamc_defaults = {"normalized": normalized, "lr_max": lr_max}
        self._check_adamc_settings(self._adamc_defaults, "")
        self._unnormalized_rule = AdamWTorchRule()
        weight_decay = _default_weight_decay(weight_decay, lr, per_unit_lr=False)
        super().__init__(
            params, AdamCRule(), lr, betas, eps, weight_decay, amsgrad, maximize=maximize, foreach=foreach,
            capturable=capturable, differentiable=differentiable, fused=fused,
        )
        self.defaults.update(self._adamc_defaults)

    @staticmethod
    def _check_adamc_settings(group: dict[str, Any], where: str) -> None:
        if not isinstance(group["normalized"], bool):
            raise TypeError(f"normalized{where} must be True or False, got {group['normalized']!r}")
        lr_max = group["lr_max"]
        if lr_max is not None:
            check_nonnegative("lr_max", lr_max, where)
            if lr_max <= 0:
                raise ValueError(f"lr_max{where} must be > 0 (the schedule's peak lr) or None, got {lr_max!r}")

    def rule_for(self, group: dict[str, Any]) -> DecayRule:
        """:class:`AdamCRule` with the group's ``lr_max`` for normalized groups, torch's AdamW rule otherwise."""
        if group["normalized"]:
            return AdamCRule(group["lr_max"])
        return self._unnormalized_rule

    def lr_max(self, group: dict[str, Any]) -> float:
        """The peak lr AdamC divides by for ``group``: ``group["lr_max"]``, else alpha."""
        return AdamCRule(group["lr_max"]).peak_lr(self.initial_lr(group))

    def _check_settings(self, group: dict[str, Any], where: str) -> None:
        super()._check_settings(group, where)
        self._check_adamc_settings(group, where)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in self._adamc_defaults.items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if not hasattr(self, "_unnormalized_rule"):  # unpickled or deep-copied
            self._unnormalized_rule = AdamWTorchRule()
            self._adamc_defaults = {
                "normalized": self.defaults.get("normalized", True), "lr_max": self.defaults.get("lr_max")
            }
        for group in self.param_groups:  # e.g. a torch.optim.AdamW state_dict
            for key, value in self._adamc_defaults.items():
                group.setdefault(key, value)


def _compute_dtype(param: Tensor) -> torch.dtype:
    """float64 parameters compute in float64, every other dtype in float32 (bf16/fp16 upcast in the kernel)."""
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def _adam_step_scalars(steps: list[Tensor], group_index: Tensor, hyperparameters: Tensor, dtype: torch.dtype) -> Tensor:
    """Advance the step counters and return each parameter's scalars as one ``(n, 7)`` tensor of ``dtype``.

    ``hyperparameters`` holds one float64 row per group: ``lr_t``, the rule's decay scalar, ``beta1``, ``beta2``,
    ``eps``; ``group_index[i]`` is tensor i's group. Columns: ``lr_t / (1 - beta1^t)``, ``sqrt(1 - beta2^t)``,
    ``lr_t``, decay scalar, ``beta1``, ``beta2``, ``eps``. Computed in float64 once per tensor, at the top of the
    (compiled) step, so the elementwise loops only load them.
    """
    torch._foreach_add_(steps, 1)
    step = torch.stack(steps).to(torch.float64)
    lr, decay, beta1, beta2, eps = hyperparameters[group_index].unbind(1)
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step).sqrt()
    return torch.stack([step_size, bias_correction2_sqrt, lr, decay, beta1, beta2, eps], dim=1).to(dtype)


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
    """One AdamP step over many tensors (scalars from :func:`_adam_step_scalars`; decay scalar: wd)."""
    scalars = _adam_step_scalars(steps, group_index, hyperparameters, _compute_dtype(params[0]))
    rule = AdamPRule()
    for index, (param, grad, exp_avg, exp_avg_sq) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        step_size, bias_correction2_sqrt, lr, weight_decay, beta1, beta2, eps = scalars[index].unbind()
        if maximize:
            grad = -grad
        exp_avg.mul_(beta1).add_(grad * (1 - beta1))
        exp_avg_sq.mul_(beta2).add_(grad * grad * (1 - beta2))
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
    """One cautious-AdamW step over many tensors (scalars from :func:`_adam_step_scalars`; decay scalar: ``c_t``).

    ``w <- (1 - c_t * 1[u * w >= 0]) * w - lr_t * u`` with the mask taken at the old weights; ``m / D`` has the
    sign of ``u = m_hat / D``, so the mask uses it directly.
    """
    scalars = _adam_step_scalars(steps, group_index, hyperparameters, _compute_dtype(params[0]))
    for index, (param, grad, exp_avg, exp_avg_sq) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        step_size, bias_correction2_sqrt, _, coefficient, beta1, beta2, eps = scalars[index].unbind()
        if maximize:
            grad = -grad
        exp_avg.mul_(beta1).add_(grad * (1 - beta1))
        exp_avg_sq.mul_(beta2).add_(grad * grad * (1 - beta2))
        update = exp_avg / adam_denominator(exp_avg_sq, bias_correction2_sqrt, eps)
        factor = CautiousRule.masked_factor(coefficient, CautiousRule.decay_mask(update, param))
        param.mul_(factor).sub_(update * step_size)


class _CompiledStep:
    """``torch.compile`` of a multi-tensor step, falling back (with one warning) to eager when compiling fails."""

    _warned = False

    def __init__(self, function: Callable[..., None], label: str = "AdamP") -> None:
        self.function = function
        self.label = label
        self.compiled: Callable[..., None] | None = None
        self.failed = False
        self.compile_seconds: float | None = None

    def __call__(self, *args: Any, use_compile: bool) -> None:
        if not use_compile or self.failed or torch.compiler.is_compiling():
            self.function(*args)
            return
        if self.compiled is None:
            self.compiled = torch.compile(self.function, fullgraph=True, dynamic=False)
            started = time.perf_counter()
            try:
                self.compiled(*args)
            except Exception as error:  # no C++ compiler, unsupported platform, ...
                self.failed = True
                if not _CompiledStep._warned:
                    _CompiledStep._warned = True
                    warnings.warn(
                        f"{self.label}: torch.compile of the fused step failed ({type(error).__name__}: {error}); "
                        "using the slower eager multi-tensor step.",
                        stacklevel=3,
                    )
                self.function(*args)
                return
            self.compile_seconds = time.perf_counter() - started
            log.info("%s: first step (compiling the fused kernel) took %.1f s", self.label, self.compile_seconds)
            return
        self.compiled(*args)


class _CompiledKernelOptimizer(DecayOptimizer):
    """A :class:`DecayOptimizer` whose step runs :attr:`_step_function` through a :class:`_CompiledStep`."""

    _step_function: Callable[..., None]
    _kernel: _CompiledStep

    def _new_kernel(self) -> _CompiledStep:
        return _CompiledStep(type(self)._step_function, type(self).__name__)

    @property
    def compile_seconds(self) -> float | None:
        """Seconds the first compiled step took (compilation included); None before it or without compiling."""
        return self._kernel.compile_seconds

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if not hasattr(self, "_kernel"):  # unpickled or deep-copied; load_state_dict keeps the compiled kernel
            self._kernel = self._new_kernel()


class _CompiledAdam(_CompiledKernelOptimizer, Optimizer):
    """Adam with an elementwise decay: a compiled multi-tensor kernel (``fused``), or the same step eagerly.

    Subclasses give the kernel (:attr:`_step_function`, signature of :func:`_adamp_multi_tensor_step`) and each
    group's float64 row ``[lr_t, decay scalar, beta1, beta2, eps]`` (:meth:`_kernel_row`).
    """

    _GROUP_DEFAULTS = {"maximize": False, "foreach": None, "fused": True}

    def __init__(
        self,
        params: Iterable[Any],
        rule: DecayRule,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        *,
        maximize: bool,
        foreach: bool | None,
        fused: bool | None,
    ) -> None:
        self.decay_rule = rule
        _check_hyperparameters({"lr": lr, "eps": eps, "weight_decay": weight_decay, "betas": betas}, "")
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

    def _kernel_row(self, group: dict[str, Any]) -> list[float]:
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
                key = (param.device, _compute_dtype(param), bool(group["maximize"]))
                lists = by_device.setdefault(key, {"p": [], "g": [], "m": [], "v": [], "s": [], "i": []})
                lists["p"].append(param)
                lists["g"].append(grad)
                lists["m"].append(state["exp_avg"])
                lists["v"].append(state["exp_avg_sq"])
                lists["s"].append(state["step"])
                lists["i"].append(index)
        rows = [self._kernel_row(group) for group in self.param_groups]
        use_compile = all(group["fused"] for group in self.param_groups)
        for (device, _, maximize), lists in by_device.items():
            hyperparameters = torch.tensor(rows, dtype=torch.float64, device=device)
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
        lr: float = 1e-3,
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

    def _kernel_row(self, group: dict[str, Any]) -> list[float]:
        return [group["lr"], group["weight_decay"], group["betas"][0], group["betas"][1], group["eps"]]


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
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
        *,
        convention: str = "torch",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {sorted(CONVENTIONS)}, got {convention!r}")
        self.convention = convention
        weight_decay = _default_weight_decay(weight_decay, lr, per_unit_lr=convention == "paper")
        super().__init__(
            params, CautiousRule(CONVENTIONS[convention]()), lr, betas, eps, weight_decay, maximize=maximize,
            foreach=foreach, fused=fused,
        )

    def _kernel_row(self, group: dict[str, Any]) -> list[float]:
        coefficient = self.decay_rule.decay_coefficient(group["lr"], self.initial_lr(group), group["weight_decay"])
        return [group["lr"], coefficient, group["betas"][0], group["betas"][1], group["eps"]]

    def decay_factor(  # type: ignore[override]
        self, group: dict[str, Any], denominator: Tensor | None = None, mask: Tensor | None = None
    ) -> float | Tensor:
        """``1 - c_t * mask`` elementwise given a mask (:meth:`decay_mask`); without one, ``1 - c_t``: the factor
        on the coordinates that decay (``c_t = lr_t * wd`` torch convention, ``eta_t * wd`` paper)."""
        return self.decay_rule.decay_factor(
            group["lr"], self.initial_lr(group), group["weight_decay"], denominator, mask=mask
        )

    @torch.no_grad()
    def decay_mask(self, param: Tensor) -> Tensor | None:
        """``1[u_t * w >= 0]`` with the last step's direction ``u_t`` (from the state) and the current weights.

        The step used the weights before it; the two masks differ only where a weight crossed zero. None before
        the parameter's first step.
        """
        state = self.state.get(param)
        if not state:
            return None
        group = next(g for g in self.param_groups if any(p is param for p in g["params"]))
        beta1, beta2 = group["betas"]
        step = float(state["step"])
        denominator = adam_denominator(state["exp_avg_sq"], (1 - beta2**step) ** 0.5, group["eps"])
        update = state["exp_avg"] / (1 - beta1**step) / denominator
        return self.decay_rule.decay_mask(update, param)

    def decayed_fraction(self, group: dict[str, Any]) -> float | None:
        """Fraction of ``group``'s coordinates the mask decays (see :meth:`decay_mask`); None before any step."""
        decayed = total = 0
        for param in group["params"]:
            mask = self.decay_mask(param)
            if mask is not None:
                decayed += int(mask.sum())
                total += mask.numel()
        return decayed / total if total else None


# The SGD optimizers build on _CompiledKernelOptimizer above; imported here so that VARIANTS lists them.
from lightning_decay.sgd import SGDL2, SGDW, ProxSGD  # noqa: E402

#: Variant name -> (optimizer class, fixed keyword arguments). The factory and the CLI resolve names here.
VARIANTS: dict[str, tuple[type[Optimizer], dict[str, Any]]] = {
    "adaml2": (AdamL2, {}),
    "adamw": (AdamW, {"convention": "torch"}),
    "adamw-paper": (AdamW, {"convention": "paper"}),
    "proxadam": (ProxAdam, {}),
    "adamp": (AdamP, {}),
    "adamc": (AdamC, {}),
    "adamw-cautious": (CautiousAdamW, {"convention": "torch"}),
    "adamw-paper-cautious": (CautiousAdamW, {"convention": "paper"}),
    "sgd-l2": (SGDL2, {}),
    "sgdw": (SGDW, {"convention": "torch"}),
    "sgdw-paper": (SGDW, {"convention": "paper"}),
    "proxsgd": (ProxSGD, {}),
}


def resolve_variant(name: str) -> tuple[type[Optimizer], dict[str, Any]]:
    """``(optimizer class, fixed kwargs)`` of a variant name; ValueError listing the valid names on a typo."""
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    if key not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; valid variants: {', '.join(VARIANTS)}")
    return VARIANTS[key]
