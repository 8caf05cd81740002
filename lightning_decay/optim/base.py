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

import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_decay.optim.checked_groups import LR_AT_CONSTRUCTION, CheckedGroup
from lightning_decay.optim.fixed_rule import fixed_rule_constructor
from lightning_decay.optim.rules import DecayRule, KernelDecayRule, KernelSettings
from lightning_decay.validation import check_betas, check_flags, check_lr, check_nonnegative, tensor_value_readable

__all__ = [
    "DecayOptimizer",
    "LR_AT_CONSTRUCTION",
    "ADAMW_DEFAULT_WEIGHT_DECAY",
    "default_weight_decay",
    "check_adam_hyperparameters",
    "fused_supported",
    "as_number",
    "scalar_value",
    "precise_lr",
    "wants_tensor_lr",
    "kernel_lr",
    "unhooked_step",
]


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
    """What every optimizer of this package shares: its decay rule, alpha bookkeeping and validation.

    A class that runs any rule given as ``rule=`` (:class:`~lightning_decay.optim.adam.KernelAdam`,
    :class:`~lightning_decay.optim.sgd.KernelSGD`) makes a variant's public class in one line, through class
    keywords (:meth:`__init_subclass__`): ``class ProxAdam(KernelAdam, rule=ProxAdamRule)``.
    """

    decay_rule: DecayRule
    param_groups: list[dict[str, Any]]
    #: The class computes kernel settings as this base does (a step may then take them from the group's record).
    _plain_kernel_settings: bool = True

    def __init_subclass__(
        cls,
        *,
        rule: type[KernelDecayRule] | KernelDecayRule | None = None,
        conventions: Mapping[str, type[KernelDecayRule]] | None = None,
        weight_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        """A subclass of a class that takes ``rule=`` fixes the rule: ``rule`` (a rule class, or a rule whose group
        keys' values are then the defaults), or ``conventions`` (``{name: rule class}``; the constructor then takes
        ``convention``, the first name by default, kept as ``self.convention``). ``weight_decay`` is the default
        weight decay of its constructor (else the base's ``None``: torch AdamW's default, scaled for ``eta_t * wd``
        rules). The constructor's signature is the base's without ``rule``, with the rule's group keys (what
        ``inspect``, jsonargparse and the factory read). This is the one way a variant's class is made: the public
        classes (``class ProxAdam(KernelAdam, rule=ProxAdamRule)``) and
        :func:`~lightning_decay.optim.kernels.on_kernel`'s."""
        super().__init_subclass__(**kwargs)
        cls._plain_kernel_settings = (
            cls.kernel_settings_for is DecayOptimizer.kernel_settings_for
            and cls._kernel_values is DecayOptimizer._kernel_values
        )
        if rule is None and conventions is None:
            return
        cls.__init__ = fixed_rule_constructor(cls, rule, conventions, weight_decay)  # type: ignore[method-assign]

    #: Attributes a copy or pickle keeps (torch's ``Optimizer.__getstate__`` keeps only defaults, state and groups).
    _PICKLED_ATTRIBUTES = ("decay_rule", "convention")

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
        """The rule ``group`` follows: :attr:`decay_rule`, or what it decides from the group's keys (AdamC's
        ``normalized`` and ``lr_max``: :meth:`~lightning_decay.optim.rules.DecayRule.for_group`)."""
        return self.decay_rule.for_group(group)

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
        kernel_settings = getattr(rule, "kernel_settings", None)  # a KernelDecayRule's (an ABC check is slower)
        if kernel_settings is None:
            raise TypeError(f"{type(self).__name__}: the rule {rule!r} has no kernel settings (it is elementwise)")
        return kernel_settings(precise_lr(group["lr"]), self.initial_lr(group), group["weight_decay"])

    def _kernel_values(self, group: dict[str, Any], settings: KernelSettings) -> tuple[Any, Any]:
        """``(lr', wd')`` as the kernel reads them from the group: ``lr'`` a tensor where the group's lr is one and
        the kernel wants one (:func:`wants_tensor_lr`), else a float; ``wd'`` a float."""
        lr = group["lr"]
        return kernel_lr(settings.lr, lr, isinstance(lr, Tensor) and wants_tensor_lr(group)), settings.weight_decay

    def _checked_entry(self, group: dict[str, Any]) -> CheckedGroup | None:
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
        return self._entry_kernel_settings(entry, group)

    def _entry_kernel_settings(self, entry: CheckedGroup, group: dict[str, Any]) -> KernelSettings:
        if entry.kernel_settings is None:
            entry.kernel_settings = self.kernel_settings_for(group)
        return entry.kernel_settings

    def _entry_kernel_values(self, entry: CheckedGroup, group: dict[str, Any]) -> tuple[Any, Any]:
        """The kernel's ``(lr', wd')`` for a checked group, computed once per change."""
        entry.kernel_values = self._kernel_values(group, self._entry_kernel_settings(entry, group))
        return entry.kernel_values

    def _check_settings(self, group: dict[str, Any], where: str) -> None:
        """The optimizer family's own settings (Adam's betas and eps here; SGD overrides)."""
        check_adam_hyperparameters(group, where)

    def _check_group(self, group: dict[str, Any]) -> bool:
        """Check every setting of ``group``; False when the lr's value could not be read (then unchecked)."""
        where = _group_label(self, group)  # type: ignore[arg-type]
        self._check_settings(group, where)
        self.decay_rule.check_group_keys(group, where)
        if isinstance(group["lr"], Tensor) and not tensor_value_readable(group["lr"]):
            return False  # a CUDA graph capture or a torch.compile trace: the lr's value cannot be read here
        self._check_rule_domain(group, where)
        return True

    def _check_rule_domain(self, group: dict[str, Any], where: str) -> None:
        """The group's rule's own limits (:meth:`~lightning_decay.optim.rules.DecayRule.check_domain`) at its lr
        and weight decay, which are valid already; the error names the group."""
        check_domain = self._domain_check(self.rule_for(group))
        if check_domain is None:
            return
        try:
            check_domain(group["lr"], self.initial_lr(group), group["weight_decay"])
        except ValueError as error:
            raise ValueError(f"{error}{where}") from None

    @staticmethod
    def _domain_check(rule: DecayRule) -> Callable[[Any, float, float], None] | None:
        """The limits of ``rule``, ``(lr, alpha, weight_decay) -> None``; None where it has none."""
        # a rule written before check_domain existed put its limits into check (it validates lr and wd again)
        if type(rule).check is not DecayRule.check:
            return rule.check
        return None if type(rule).check_domain is DecayRule.check_domain else rule.check_domain

    def _check_decay_change(self, group: dict[str, Any], lr_changed: bool, weight_decay_changed: bool) -> bool:
        """Check what a scheduler or a user changed since the group's last check: its lr and / or weight decay,
        then the rule's limits; False when the lr's value could not be read. The group's label is computed for an
        error message only (the checks run again with it)."""
        try:
            return self._check_decay_values(group, lr_changed, weight_decay_changed, "")
        except (TypeError, ValueError):
            where = _group_label(self, group)  # type: ignore[arg-type]
            self._check_decay_values(group, lr_changed, weight_decay_changed, where)
            raise

    def _check_decay_values(self, group: dict[str, Any], lr_changed: bool, weight_decay_changed: bool,
                            where: str) -> bool:
        lr = group["lr"]
        if lr_changed:
            check_lr("lr", lr, where)
        if weight_decay_changed:
            check_nonnegative("weight_decay", group["weight_decay"], where)
        if isinstance(lr, Tensor) and not tensor_value_readable(lr):
            return False
        self._check_rule_domain(group, where)
        return True

    def _check_changed_groups(self, swapped: list[tuple[dict[str, Any], Any, Any]] | None = None
                              ) -> list[CheckedGroup | None]:
        """Check the groups whose settings changed since their last check (all of them at the first step, after a
        ``load_state_dict`` or while torch.compile traces); a group whose lr or weight decay alone changed has only
        those and the rule's limits checked. A change is a key set to another object (a scheduler's new lr), or a
        tensor updated in place (its version counter: a scheduler's ``lr.fill_``). Returns each group's record
        (None where its lr could not be read, or while torch.compile traces).

        ``swapped`` (a list, for a step that runs a kernel: :meth:`_step_kernel_with_rule_settings`): each checked
        group's ``lr`` and ``weight_decay`` are also set to the kernel's ``(lr', wd')`` of its rule, computed once
        per change and kept in its record; ``(group, its lr, its weight decay)`` is appended where they differ
        (torch's AdamW rule: nowhere), for the caller to restore."""
        groups = self.param_groups
        compiling = torch.compiler.is_compiling()  # then every group is checked whole, and no record kept
        checked: dict[int, CheckedGroup] = {} if compiling else self.__dict__.setdefault("_checked_groups", {})
        if len(checked) > len(groups):  # groups replaced (load_state_dict) or removed
            alive = {id(group) for group in groups}
            for key in [key for key in checked if key not in alive]:
                del checked[key]
        # The common cases (nothing changed; a scheduler's new float lr) are decided inline, in one pass with the
        # kernel values: each Python call costs ~1-2 us where a step over a large model has evicted the caches
        # (docs/performance.md, issue 26).
        is_not = operator.is_not
        plain = self._plain_kernel_settings
        entries: list[CheckedGroup | None] = []
        for group in groups:
            if compiling:
                self._check_group(group)
                entry = None
            elif (entry := checked.get(id(group))) is None or entry.group is not group:
                entry = self._remember_check(group, self._check_group(group))
            else:
                values = tuple(group.values())
                old = entry.values
                moved = -1 if entry.tensors or len(values) != len(old) else sum(map(is_not, values, old))
                if moved:
                    lr, old_lr = values[entry.lr_index], old[entry.lr_index]
                    if moved == 1 and lr is not old_lr and type(lr) is float and type(old_lr) is float:
                        # a scheduler's step: the new lr and the rule's limits (errors again, naming the group)
                        check_domain = entry.check_domain
                        try:
                            check_lr("lr", lr)
                            if check_domain is not None:
                                check_domain(lr, entry.initial_lr, group["weight_decay"])
                        except (TypeError, ValueError):
                            self._check_decay_change(group, True, False)
                            raise
                        entry.values = values
                        entry.kernel_settings = entry.kernel_values = None
                    else:
                        entry = self._check_group_change(group, entry, values)
            entries.append(entry)
            if swapped is None:
                continue
            if entry is None:
                kernel_values = self._kernel_values(group, self.kernel_settings_for(group))
            elif (kernel_values := entry.kernel_values) is None:
                own_lr = group["lr"]
                if plain and type(own_lr) is float:  # straight from the rule and alpha of the group's record
                    settings = entry.rule.kernel_settings(own_lr, entry.initial_lr, group["weight_decay"])
                    entry.kernel_settings = settings
                    kernel_values = entry.kernel_values = settings[:2]
                else:
                    kernel_values = self._entry_kernel_values(entry, group)
            lr, weight_decay = kernel_values
            own_lr, own_weight_decay = group["lr"], group["weight_decay"]
            if lr is not own_lr or weight_decay is not own_weight_decay:
                swapped.append((group, own_lr, own_weight_decay))
                group["lr"], group["weight_decay"] = lr, weight_decay
        return entries

    def _check_group_change(self, group: dict[str, Any], entry: CheckedGroup, values: tuple[Any, ...]
                            ) -> CheckedGroup | None:
        """Check what changed in ``group`` (now holding ``values``) since its record ``entry``: its decay keys alone
        (:meth:`_check_decay_change`), else the whole group; returns its new record (None: the lr is unreadable)."""
        moved = {key for key, tensor, version in entry.tensors if tensor._version != version}
        changed = entry.changed_keys(group, values, moved)
        if changed is None:
            return self._remember_check(group, self._check_group(group))
        if not changed:
            return entry
        if self._check_decay_change(group, "lr" in changed, "weight_decay" in changed):
            entry.refresh(group, values, changed, self.initial_lr(group))
            return entry
        self.__dict__["_checked_groups"].pop(id(group), None)
        return None

    def _remember_check(self, group: dict[str, Any], complete: bool) -> CheckedGroup | None:
        checked: dict[int, CheckedGroup] = self.__dict__.setdefault("_checked_groups", {})
        if not complete:
            checked.pop(id(group), None)
            return None
        rule = self.rule_for(group)
        entry = checked[id(group)] = CheckedGroup(group, rule, self._domain_check(rule), self.initial_lr(group))
        return entry

    #: Group keys a state dict saved by torch's optimizer (or an older version) may lack, and their defaults.
    _GROUP_DEFAULTS: dict[str, Any] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, the rule's group keys (:attr:`~lightning_decay.optim.rules.DecayRule.group_keys`) among the
        defaults a group inherits; then the new group is checked (:meth:`_prepare_group`)."""
        for key, value in self.decay_rule.group_defaults().items():
            self.defaults.setdefault(key, value)  # type: ignore[attr-defined]
        super().add_param_group(param_group)  # type: ignore[misc]
        try:
            self._prepare_group(self.param_groups[-1])
        except (TypeError, ValueError):
            self.param_groups.pop()  # a refused group is not left behind
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        defaults = self.defaults  # type: ignore[attr-defined]
        rule_defaults = {key: defaults.get(key, value) for key, value in self.decay_rule.group_defaults().items()}
        for group in self.param_groups:  # e.g. a torch.optim.AdamW state_dict: no alpha stored
            group.setdefault(LR_AT_CONSTRUCTION, as_number(group.get("initial_lr", group["lr"])))
            for key, value in {**self._GROUP_DEFAULTS, **rule_defaults}.items():
                group.setdefault(key, value)

    def _closure_then_checks(self, closure: Callable[[], Any] | None) -> Any:
        """Run the closure (gradients on), then check every group before any update; return the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_changed_groups()
        return loss

    def _step_kernel_with_rule_settings(self, closure: Callable[[], Any] | None,
                                        kernel_step: Callable[[], Any]) -> Any:
        """The step of a class whose kernel runs the rule's settings: the closure (gradients on); every group checked
        before any update, its ``lr`` and ``weight_decay`` set to the rule's ``(lr', wd')``
        (:meth:`_check_changed_groups`), so that one step of the kernel, ``w <- (1 - lr'*wd') w - f(lr') u``, is the
        rule's step; then ``kernel_step`` (the kernel's own step over :attr:`param_groups`). The groups' own values
        (the scheduler's lr tensor, the user's weight decay) are restored after, also when a check or the kernel
        raises. Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        swapped: list[tuple[dict[str, Any], Any, Any]] = []
        try:
            self._check_changed_groups(swapped)
            kernel_step()
        finally:
            for group, lr, weight_decay in swapped:
                group["lr"], group["weight_decay"] = lr, weight_decay
        return loss

    def _prepare_group(self, group: dict[str, Any]) -> None:
        """Check a new group once. A group whose settings are those an earlier group passed (the same objects: the
        constructor's defaults every group inherits) but for a float lr and / or a weight decay has only these and
        its rule's limits checked, as a step does after a scheduler's change; any other group is checked whole."""
        group.setdefault(LR_AT_CONSTRUCTION, as_number(group["lr"]))  # a float: a tensor lr moves
        trusted: dict[str, Any] | None = self.__dict__.get("_trusted_settings")
        if trusted is not None and not isinstance(group["lr"], Tensor):
            own = {key for key, value in group.items() if key not in trusted or value is not trusted[key]}
            if own <= _DECAY_KEYS:
                complete = self._check_decay_change(group, "lr" in own, "weight_decay" in own)
                self._remember_check(group, complete)
                return
        where = _group_label(self, group)  # type: ignore[arg-type]
        check_flags(group, _BOOLEAN_FLAGS, where, allow_none=True)
        if group.get("fused") and group.get("foreach"):
            raise ValueError(f"fused and foreach{where} cannot both be True")
        complete = self._check_group(group)
        self._remember_check(group, complete)
        if complete and not isinstance(group["lr"], Tensor):
            self.__dict__["_trusted_settings"] = {key: value for key, value in group.items() if key != "params"}


#: The keys in which a new group may differ from an earlier, fully checked one and still be checked in part (with
#: ``params``, the group's ``name`` label and the lr it was made with, which follows its lr).
_DECAY_KEYS = frozenset({"params", "lr", "weight_decay", "name", LR_AT_CONSTRUCTION})

#: Constructor flags that must be booleans (``foreach`` and ``fused`` may also be None: the default path).
_BOOLEAN_FLAGS = ("amsgrad", "maximize", "foreach", "fused", "capturable", "differentiable", "nesterov")
