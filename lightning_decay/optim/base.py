"""What every optimizer of the package shares: the decay rule, the blog's alpha bookkeeping, group validation.

Every optimizer exposes ``decay_rule``, ``rule_for(group)`` (the rule a group follows: AdamC's differ between
normalized and other groups), ``initial_lr(group)`` (alpha), ``schedule_multiplier(group)`` (``eta_t``) and
``decay_factor(group)`` (this step's factor, from the rule).

A group's lr may be a 0-dim tensor, as torch's optimizers take it (schedulers fill it in place): the rules compute
``lr'`` from it in float64 (:func:`precise_lr`), and a kernel gets ``lr'`` back as a tensor of the lr's own dtype
where torch wants one, a Python float elsewhere (:func:`kernel_lr`). Alpha is stored as a float, never as an alias
of the tensor the scheduler moves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_decay.optim.rules import DecayRule, KernelDecayRule, KernelSettings
from lightning_decay.validation import check_betas, check_bool, check_lr, check_nonnegative, tensor_value_readable

__all__ = [
    "DecayOptimizer",
    "LR_AT_CONSTRUCTION",
    "ADAMW_DEFAULT_WEIGHT_DECAY",
    "default_weight_decay",
    "check_adam_hyperparameters",
    "fused_supported",
    "convention_rule",
    "as_number",
    "scalar_value",
    "precise_lr",
    "wants_tensor_lr",
    "kernel_lr",
    "unhooked_step",
]

#: Group key holding the lr a group was built with: the blog's alpha when no scheduler set ``initial_lr``.
LR_AT_CONSTRUCTION = "lr_at_construction"

ADAMW_DEFAULT_WEIGHT_DECAY = 1e-2  # torch.optim.AdamW's default, torch convention


def as_number(value: Any) -> Any:
    """A one-element tensor's value as a Python number (alpha, a default weight decay); anything else as it is (a
    bad lr is then named by its check)."""
    if isinstance(value, Tensor) and value.numel() == 1 and tensor_value_readable(value):
        return value.item()
    return value


def scalar_value(value: float | Tensor, elementwise_input: Tensor | None) -> float | Tensor:
    """A factor computed from a tensor lr as a float, unless it came from an elementwise input (D, a mask)."""
    return as_number(value) if elementwise_input is None else value


def precise_lr(lr: float | Tensor) -> float | Tensor:
    """The lr the rules compute ``lr'`` from: a tensor lr in float64 (its own dtype where the device has none)."""
    if isinstance(lr, Tensor) and lr.dtype != torch.float64 and lr.device.type != "mps":
        return lr.to(torch.float64)
    return lr


def wants_tensor_lr(group: dict[str, Any]) -> bool:
    """Whether torch's kernel should get a tensor ``lr'`` for a group with a tensor lr: the fused kernels (read on
    the device, no sync), capturable and differentiable steps, and code torch.compile traces (no ``.item()``)."""
    return bool(group.get("fused") or group.get("capturable") or group.get("differentiable")) or (
        torch.compiler.is_compiling()
    )


def kernel_lr(value: float | Tensor, lr: float | Tensor, as_tensor: bool) -> float | Tensor:
    """``lr'`` as torch's kernel takes it: for a tensor ``lr``, a tensor of its dtype (torch's CUDA fused kernels
    read a float32 lr) when ``as_tensor``, else a Python float; a float lr's ``lr'`` unchanged."""
    if not isinstance(value, Tensor):
        return value
    if as_tensor:
        return value.to(lr.dtype) if isinstance(lr, Tensor) else value
    return value.item()


def unhooked_step(kernel: type[Optimizer]) -> Callable[..., Any]:
    """``kernel.step`` without the step-hook wrapper torch adds to a class once an instance exists (a subclass's own
    step already ran the hooks: calling the kernel's hooked step would run them twice)."""
    step = kernel.step
    if getattr(step, "hooked", False):
        step = step.__wrapped__  # type: ignore[attr-defined]
    return step


def default_weight_decay(
    weight_decay: float | None, lr: float | Tensor, per_unit_lr: bool, default: float = ADAMW_DEFAULT_WEIGHT_DECAY
) -> float:
    """``default`` (torch AdamW's 1e-2); for rules whose decay is ``eta_t * wd``, the same decay at the initial lr."""
    if weight_decay is not None:
        return weight_decay
    check_lr("lr", lr)
    return default * (as_number(lr) if per_unit_lr else 1.0)


def check_adam_hyperparameters(group: dict[str, Any], where: str) -> None:
    """Validate a group's Adam settings; errors name the argument (and the group, when it is not the default)."""
    check_lr("lr", group["lr"], where)
    for name in ("eps", "weight_decay"):
        check_nonnegative(name, group[name], where)
    check_betas(group["betas"], where)


def convention_rule(convention: str, conventions: dict[str, type[KernelDecayRule]]) -> KernelDecayRule:
    """The rule of a ``convention`` name; ValueError naming ``convention`` and the valid names otherwise."""
    if convention not in conventions:
        raise ValueError(f"convention must be one of {sorted(conventions)}, got {convention!r}")
    return conventions[convention]()


def _group_label(optimizer: Optimizer, group: dict[str, Any]) -> str:
    index = next((i for i, g in enumerate(optimizer.param_groups) if g is group), len(optimizer.param_groups))
    name = group.get("name")
    if index == 0 and len(optimizer.param_groups) <= 1 and name is None:
        return ""
    return f" (param group {index}{f' {name!r}' if name else ''})"


def fused_supported(params: list[Any]) -> bool:
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
        """``eta_t = lr_t / alpha`` for this group (a float, also for a tensor lr)."""
        return as_number(self.decay_rule.schedule_multiplier(precise_lr(group["lr"]), self.initial_lr(group)))

    def rule_for(self, group: dict[str, Any]) -> DecayRule:
        """The rule ``group`` follows: :attr:`decay_rule`, except where a variant treats groups differently (AdamC)."""
        return self.decay_rule

    def decay_factor(self, group: dict[str, Any], denominator: Tensor | None = None) -> float | Tensor:
        """This step's decay factor for ``group`` (elementwise rules need Adam's denominator): a float for a scalar
        rule, also with a tensor lr (monitors tell elementwise factors by their being tensors)."""
        rule = self.rule_for(group)
        factor = rule.decay_factor(precise_lr(group["lr"]), self.initial_lr(group), group["weight_decay"], denominator)
        return scalar_value(factor, denominator)

    def kernel_settings_for(self, group: dict[str, Any]) -> KernelSettings:
        """``(lr', wd', decoupled)`` of this step for ``group``: ``rule.kernel_settings(lr_t, alpha, wd)`` of the
        (scalar) rule the group follows, computed from the lr in float64 (:func:`precise_lr`)."""
        rule = self.rule_for(group)
        if not isinstance(rule, KernelDecayRule):
            raise TypeError(f"{type(self).__name__}: the rule {rule!r} has no kernel settings (it is elementwise)")
        return rule.kernel_settings(precise_lr(group["lr"]), self.initial_lr(group), group["weight_decay"])

    def _kernel_values(self, group: dict[str, Any], settings: KernelSettings) -> tuple[Any, Any]:
        """``(lr', wd')`` as the kernel reads them from the group: ``lr'`` a tensor where the group's lr is one and
        the kernel wants one (:func:`wants_tensor_lr`), else a float; ``wd'`` a float."""
        lr = group["lr"]
        return kernel_lr(settings.lr, lr, isinstance(lr, Tensor) and wants_tensor_lr(group)), settings.weight_decay

    def _checked_entry(self, group: dict[str, Any]) -> _CheckedGroup | None:
        """The record of ``group``'s last check, where it still holds (None while torch.compile traces)."""
        entry = self.__dict__.get("_checked_groups", {}).get(id(group))
        if entry is None or entry.group is not group or torch.compiler.is_compiling():
            return None
        return entry

    def _cached_kernel_settings(self, group: dict[str, Any]) -> KernelSettings:
        """:meth:`kernel_settings_for`, computed once per change of the group's settings (the cache of
        :meth:`_check_changed_groups`, which a step runs first)."""
        entry = self._checked_entry(group)
        if entry is None:
            return self.kernel_settings_for(group)
        if entry.kernel_settings is None:
            entry.kernel_settings = self.kernel_settings_for(group)
        return entry.kernel_settings

    def _cached_kernel_values(self, group: dict[str, Any]) -> tuple[Any, Any]:
        """:meth:`_kernel_values` of :meth:`kernel_settings_for`, computed once per change of the group."""
        entry = self._checked_entry(group)
        if entry is None:
            return self._kernel_values(group, self.kernel_settings_for(group))
        if entry.kernel_values is None:
            entry.kernel_values = self._kernel_values(group, self._cached_kernel_settings(group))
        return entry.kernel_values

    def _run_kernel_with_rule_settings(self, kernel_step: Callable[[], Any]) -> None:
        """Run ``kernel_step`` (the kernel's own step over :attr:`param_groups`) with every group's ``lr`` and
        ``weight_decay`` set to the rule's ``(lr', wd')``: one kernel step ``w <- (1 - lr'*wd') w - f(lr') u`` is then
        the rule's step. The group's own values (the scheduler's lr tensor, the user's weight decay) are restored
        after, also when the kernel raises."""
        values = [self._cached_kernel_values(group) for group in self.param_groups]
        saved = [(group["lr"], group["weight_decay"]) for group in self.param_groups]
        try:
            for group, (lr, weight_decay) in zip(self.param_groups, values):
                group["lr"], group["weight_decay"] = lr, weight_decay
            kernel_step()
        finally:
            for group, (lr, weight_decay) in zip(self.param_groups, saved):
                group["lr"], group["weight_decay"] = lr, weight_decay

    def _check_settings(self, group: dict[str, Any], where: str) -> None:
        """The optimizer family's own settings (Adam's betas and eps here; SGD overrides)."""
        check_adam_hyperparameters(group, where)

    def _check_group(self, group: dict[str, Any]) -> bool:
        """Check every setting of ``group``; False when the lr's value could not be read (then unchecked)."""
        where = _group_label(self, group)  # type: ignore[arg-type]
        self._check_settings(group, where)
        if isinstance(group["lr"], Tensor) and not tensor_value_readable(group["lr"]):
            return False  # a CUDA graph capture or a torch.compile trace: the lr's value cannot be read here
        self._check_rule_domain(group, where)
        return True

    def _check_rule_domain(self, group: dict[str, Any], where: str) -> None:
        """The group's rule's own limits (:meth:`~lightning_decay.optim.rules.DecayRule.check_domain`) at its lr
        and weight decay, which are valid already; the error names the group."""
        try:
            self.rule_for(group).check_domain(group["lr"], self.initial_lr(group), group["weight_decay"])
        except ValueError as error:
            raise ValueError(f"{error}{where}") from None

    def _check_decay_change(self, group: dict[str, Any], lr_changed: bool, weight_decay_changed: bool) -> bool:
        """Check what a scheduler or a user changed since the group's last check: its lr and / or weight decay,
        then the rule's limits; False when the lr's value could not be read."""
        where = _group_label(self, group)  # type: ignore[arg-type]
        lr = group["lr"]
        if lr_changed:
            check_lr("lr", lr, where)
        if weight_decay_changed:
            check_nonnegative("weight_decay", group["weight_decay"], where)
        if isinstance(lr, Tensor) and not tensor_value_readable(lr):
            return False
        self._check_rule_domain(group, where)
        return True

    def _check_changed_groups(self) -> None:
        """Check the groups whose settings changed since their last check (all of them at the first step, after a
        ``load_state_dict`` or while torch.compile traces); a group whose lr or weight decay alone changed has only
        those and the rule's limits checked. A change is any new value of a group key, a new tensor, or an in-place
        update of a tensor (its version counter: a scheduler's ``lr.fill_``)."""
        if torch.compiler.is_compiling():
            for group in self.param_groups:
                self._check_group(group)
            return
        checked: dict[int, _CheckedGroup] = self.__dict__.setdefault("_checked_groups", {})
        if len(checked) > len(self.param_groups):  # groups replaced (load_state_dict) or removed
            alive = {id(group) for group in self.param_groups}
            for key in [key for key in checked if key not in alive]:
                del checked[key]
        for group in self.param_groups:
            decay_key, settings_key = _decay_fingerprint(group), _settings_fingerprint(group)
            entry = checked.get(id(group))
            if entry is not None and entry.group is group and _same(entry.settings_key, settings_key):
                if _same(entry.decay_key, decay_key):
                    continue
                lr_changed = not _same(entry.decay_key[0], decay_key[0])
                weight_decay_changed = not _same(entry.decay_key[1], decay_key[1])
                complete = self._check_decay_change(group, lr_changed, weight_decay_changed)
            else:
                complete = self._check_group(group)
            self._remember_check(group, decay_key, settings_key, complete)

    def _remember_check(
        self, group: dict[str, Any], decay_key: tuple[Any, ...], settings_key: tuple[Any, ...], complete: bool
    ) -> None:
        checked: dict[int, _CheckedGroup] = self.__dict__.setdefault("_checked_groups", {})
        if complete:
            checked[id(group)] = _CheckedGroup(group, decay_key, settings_key)
        else:
            checked.pop(id(group), None)

    #: Group keys a state dict saved by torch's optimizer (or an older version) may lack, and their defaults.
    _GROUP_DEFAULTS: dict[str, Any] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)  # type: ignore[misc]
        try:
            self._prepare_group(self.param_groups[-1])
        except (TypeError, ValueError):
            self.param_groups.pop()  # a refused group is not left behind
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        for group in self.param_groups:  # e.g. a torch.optim.AdamW state_dict: no alpha stored
            group.setdefault(LR_AT_CONSTRUCTION, as_number(group.get("initial_lr", group["lr"])))
            for key, value in self._GROUP_DEFAULTS.items():
                group.setdefault(key, value)

    def _closure_then_checks(self, closure: Callable[[], Any] | None) -> Any:
        """Run the closure (gradients on), then check every group before any update; return the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_changed_groups()
        return loss

    def _prepare_group(self, group: dict[str, Any]) -> None:
        group.setdefault(LR_AT_CONSTRUCTION, as_number(group["lr"]))  # a float: a tensor lr moves
        where = _group_label(self, group)  # type: ignore[arg-type]
        for flag in _BOOLEAN_FLAGS:
            check_bool(flag, group.get(flag), where, allow_none=True)
        if group.get("fused") and group.get("foreach"):
            raise ValueError(f"fused and foreach{where} cannot both be True")
        complete = self._check_group(group)
        self._remember_check(group, _decay_fingerprint(group), _settings_fingerprint(group), complete)


class _CheckedGroup:
    """What a group held when it was last checked, and the kernel values computed from it since."""

    __slots__ = ("group", "decay_key", "settings_key", "kernel_settings", "kernel_values")

    def __init__(self, group: dict[str, Any], decay_key: tuple[Any, ...], settings_key: tuple[Any, ...]) -> None:
        self.group = group  # held, so that its id is not reused while the entry lives
        self.decay_key = decay_key
        self.settings_key = settings_key
        self.kernel_settings: KernelSettings | None = None
        self.kernel_values: tuple[Any, Any] | None = None


#: The group keys of the decay: the lr and weight decay a scheduler or a user sets, and alpha.
_DECAY_KEYS = ("lr", "weight_decay", "initial_lr", LR_AT_CONSTRUCTION)


def _fingerprint(value: Any) -> Any:
    """A value as a check compares it: a tensor by identity and version counter (in-place updates count), a tuple
    or list by its items, anything else as it is."""
    if isinstance(value, Tensor):
        return (id(value), value._version)
    if isinstance(value, (tuple, list)):
        return tuple(_fingerprint(item) for item in value)
    return value


def _decay_fingerprint(group: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(_fingerprint(group.get(key)) for key in _DECAY_KEYS)


def _settings_fingerprint(group: dict[str, Any]) -> tuple[Any, ...]:
    """Every other group setting (betas, eps, momentum, flags, ...), and whether the lr is a tensor."""
    return (isinstance(group["lr"], Tensor), *(
        (key, _fingerprint(value)) for key, value in group.items() if key != "params" and key not in _DECAY_KEYS
    ))


def _same(old: Any, new: Any) -> bool:
    """``old == new`` as one bool; False where the comparison is no bool (a NaN is never the same: re-checked)."""
    try:
        return bool(old == new)
    except (TypeError, ValueError, RuntimeError):
        return False


#: Constructor flags that must be booleans (``foreach`` and ``fused`` may also be None: the default path).
_BOOLEAN_FLAGS = ("amsgrad", "maximize", "foreach", "fused", "capturable", "differentiable", "nesterov")
