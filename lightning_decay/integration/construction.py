"""From an optimizer setting to an optimizer: class paths and variant names to classes, constructor arguments
checked against the class's signature, the defaults a class really uses, and :class:`OptimizerRecipe` (one optimizer
of a :class:`~lightning_decay.integration.plan.DecayPlan`: its class, arguments, resolved lr / weight decay and
rule; ``recipe.build(groups)`` makes it)."""

from __future__ import annotations

import importlib
import inspect
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from lightning_decay.optim.conventions import weight_decay_for_timescale
from lightning_decay.optim.kernels import on_kernel
from lightning_decay.optim.registry import REGISTRY, VariantInfo, get_variant, record_of_class, rule_of
from lightning_decay.optim.rules import DecayRule
from lightning_decay.validation import check_betas, check_lr, check_nonnegative, is_real

#: An optimizer setting: a variant name, a dotted class path, an Optimizer class, or ``params -> Optimizer``.
OptimizerSpec = str | type[Optimizer] | Callable[[Iterable[Any]], Optimizer]

__all__ = [
    "OptimizerSpec",
    "OptimizerRecipe",
    "check_optimizer_settings",
    "optimizer_rule",
    "OptimizerMaker",
    "variant_recipe",
    "Constructor",
    "checked_constructor",
    "NamesOptimizer",
    "callable_recipe",
    "resolve_optimizer",
    "signature_default",
    "accepts",
    "with_tensor_lrs",
    "warn_unread_normalized",
]


def resolve_optimizer(
    optimizer: str | type[Optimizer], kernel: str | type[Optimizer] | None = None
) -> tuple[type[Optimizer], dict[str, Any]]:
    """``(class, fixed kwargs)`` of a variant name, a dotted ``Optimizer`` class path or an ``Optimizer`` class.

    An unknown name raises ValueError listing the valid variant names (read from ``REGISTRY``). With ``kernel`` (an
    optimizer class or its dotted path, e.g. ``"torchao.optim.AdamW8bit"``), the variant's rule on that kernel
    (:func:`~lightning_decay.optim.kernels.on_kernel`); ``optimizer`` must then be a variant name.
    """
    cls, fixed, _ = _resolve_class(optimizer, kernel)
    return cls, fixed


def _resolve_class(
    optimizer: str | type[Optimizer], kernel: str | type[Optimizer] | None
) -> tuple[type[Optimizer], dict[str, Any], VariantInfo | None]:
    """:func:`resolve_optimizer` and the registry record of a variant name (one lookup; None otherwise)."""
    if kernel is not None:
        if not isinstance(optimizer, str) or optimizer.strip().lower().replace("_", "-") not in REGISTRY:
            raise ValueError(
                f"kernel runs a variant's rule on another optimizer's step: optimizer must be a variant name "
                f"({', '.join(REGISTRY)}), got {optimizer!r}"
            )
        return on_kernel(kernel, optimizer), {}, None
    if isinstance(optimizer, type):
        if not issubclass(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer subclass, got {optimizer!r}")
        return optimizer, {}, None
    if not isinstance(optimizer, str):
        raise TypeError(f"optimizer must be a variant name or an Optimizer class, got {type(optimizer).__name__}")
    try:
        record = get_variant(optimizer)
        return record.optimizer, dict(record.kwargs), record
    except ValueError:
        if "." not in optimizer:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; valid variants: {', '.join(REGISTRY)} "
                "(or a dotted torch.optim.Optimizer class path)"
            ) from None
    module_path, _, name = optimizer.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_path), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"optimizer {optimizer!r} is neither a variant ({', '.join(REGISTRY)}) nor an importable class: {error}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise ValueError(f"optimizer {optimizer!r} is not a torch.optim.Optimizer subclass")
    return cls, {}, None


def accepts(cls: type, name: str) -> bool:
    parameters = inspect.signature(cls).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _kwargs_for(
    cls: type[Optimizer], fixed: Mapping[str, Any], optimizer: str | type[Optimizer], lr: float | None,
    weight_decay: float | None, betas: tuple[float, float] | None, eps: float | None,
    optimizer_kwargs: Mapping[str, Any] | None,
) -> dict[str, Any]:
    extra = dict(optimizer_kwargs or {})
    kwargs: dict[str, Any] = dict(fixed)
    for key, value in extra.items():
        if key in ("params", "lr", "weight_decay", "betas", "eps"):
            raise ValueError(f"optimizer_kwargs: give {key!r} as its own setting, not in optimizer_kwargs")
        if key in fixed and fixed[key] != value:
            raise ValueError(
                f"optimizer_kwargs: variant {optimizer!r} fixes {key}={fixed[key]!r}, got {key}={value!r}"
            )
        if not accepts(cls, key):
            raise ValueError(f"optimizer_kwargs: {cls.__name__} takes no argument {key!r}")
        kwargs[key] = value
    for key, value in (("lr", lr), ("weight_decay", weight_decay), ("betas", betas), ("eps", eps)):
        if value is None:
            continue
        if not accepts(cls, key):
            raise ValueError(f"{key}: {cls.__name__} takes no argument {key!r} (leave it unset)")
        kwargs[key] = tuple(value) if key == "betas" else value
    return kwargs


@dataclass(frozen=True)
class Constructor:
    """A variant name or optimizer class with its settings, resolved once: the class ``cls``, the keyword arguments
    ``kwargs`` to build it with, the registry ``record`` (None outside the registry or on a kernel), the decay
    ``rule`` it applies (None where none describes it), the peak ``lr`` its signature gives (None: unknown) and the
    ``kernel`` class path it runs on (None: its own step)."""

    cls: type[Optimizer]
    kwargs: Mapping[str, Any]
    record: VariantInfo | None
    rule: DecayRule | None
    peak_lr: float | None
    kernel: str | None = None


def signature_default(cls: type, name: str) -> Any:
    parameter = inspect.signature(cls).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def with_tensor_lrs(optimizer: Optimizer, tensor_lr: bool) -> Optimizer:
    """With ``tensor_lr``, each group's lr becomes its own 0-dim tensor on the group's device (float32 on CUDA, as
    torch's fused kernels read it; float64 elsewhere): schedulers then fill it in place, and no two groups share
    one tensor (they would share their schedule)."""
    if tensor_lr:
        for group in optimizer.param_groups:
            device = group["params"][0].device
            dtype = torch.float32 if device.type == "cuda" else torch.float64
            group["lr"] = torch.tensor(float(group["lr"]), dtype=dtype, device=device)
    return optimizer


def warn_unread_normalized(optimizer: Optimizer) -> Optimizer:
    """Warns when groups are marked ``normalized`` (a group override's setting) for an optimizer that does not
    read the key (only AdamC does: it has ``normalized`` among its defaults)."""
    groups = optimizer.param_groups
    marked = [group.get("name", str(index)) for index, group in enumerate(groups) if "normalized" in group]
    if marked and "normalized" not in optimizer.defaults:
        warnings.warn(
            f"groups.overrides set normalized on group(s) {marked}, but {type(optimizer).__name__} ignores it "
            "(only adamc reads it)",
            stacklevel=3,
        )
    return optimizer




def optimizer_rule(
    optimizer: str | type[Optimizer], optimizer_kwargs: Mapping[str, Any] | None = None,
    kernel: str | type[Optimizer] | None = None,
) -> DecayRule | None:
    """The decay rule a variant name or an optimizer class applies (None when no rule describes it), from the
    registry and the class's fixed arguments; nothing is built. With ``kernel``: the variant's rule."""
    if kernel is not None:
        return rule_of(resolve_optimizer(optimizer, kernel)[0])
    if isinstance(optimizer, str):
        try:
            return get_variant(optimizer).rule
        except ValueError:
            pass
    cls, fixed = resolve_optimizer(optimizer)
    record = record_of_class(cls, {**fixed, **dict(optimizer_kwargs or {})})
    return record.rule if record is not None else rule_of(cls)


def check_optimizer_settings(
    optimizer: OptimizerSpec,
    lr: float | None = None,
    weight_decay: float | None = None,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    kernel: str | type[Optimizer] | None = None,
) -> tuple[DecayRule | None, float | None]:
    """Validate optimizer settings before training; return ``(rule, peak lr)`` of the optimizer they describe.

    A variant name or class is checked without building anything: types and ranges
    (:mod:`lightning_decay.validation`), constructor arguments against the class's signature, and the rule's own
    domain at the peak lr (e.g. ``lr * weight_decay < 1`` for torch-convention AdamW). A callable can only be
    checked by calling it: it is called once on a dummy parameter. ``kernel`` (with a variant name): the class is
    the variant on that kernel; an unknown path, a class that is no optimizer, or a variant the kernel cannot run
    (elementwise, L2 on a decoupled kernel) is an error naming ``kernel``.
    """
    if isinstance(optimizer, (str, type)):
        constructor = checked_constructor(optimizer, lr, weight_decay, betas, eps, optimizer_kwargs, kernel)
        return constructor.rule, constructor.peak_lr
    if kernel is not None:
        if not isinstance(kernel, (str, type)):
            raise TypeError(f"kernel must be an optimizer class path or class, got {type(kernel).__name__} {kernel!r}")
        raise ValueError("kernel: set the variant by name (optimizer), not with an optimizer callable")
    if callable(optimizer):
        given = {"lr": lr, "weight_decay": weight_decay, "betas": betas, "eps": eps}
        given = {key: value for key, value in given.items() if value is not None}
        if given or optimizer_kwargs:
            raise ValueError(
                f"with an optimizer callable, set {sorted(given) or sorted(optimizer_kwargs or {})} in the callable "
                "(e.g. its init_args), not as separate settings"
            )
        trial = optimizer([torch.zeros(1, requires_grad=True)])
        if not isinstance(trial, Optimizer):
            raise TypeError(f"the optimizer callable returned {type(trial).__name__}, not an Optimizer")
        return rule_of(trial), float(trial.defaults["lr"]) if is_real(trial.defaults.get("lr")) else None
    raise TypeError(
        f"optimizer must be a variant name, an Optimizer class or a callable, got {type(optimizer).__name__}"
    )


def checked_constructor(
    optimizer: str | type[Optimizer],
    lr: float | None = None,
    weight_decay: float | None = None,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    kernel: str | type[Optimizer] | None = None,
) -> Constructor:
    """:func:`check_optimizer_settings` of a variant name or class, returning what it resolved (one registry
    lookup; settings keep it: the plan builds from it without resolving again)."""
    if lr is not None:
        check_lr("lr", lr)
    if weight_decay is not None:
        check_nonnegative("weight_decay", weight_decay)
    if eps is not None:
        check_nonnegative("eps", eps)
    if betas is not None:
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Iterable):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        check_betas(tuple(betas))
    if optimizer_kwargs is not None and not isinstance(optimizer_kwargs, Mapping):
        raise TypeError(f"optimizer_kwargs must be a mapping, got {type(optimizer_kwargs).__name__}")
    if kernel is not None and not isinstance(kernel, (str, type)):
        raise TypeError(f"kernel must be an optimizer class path or class, got {type(kernel).__name__} {kernel!r}")
    cls, fixed, record = _resolve_class(optimizer, kernel)
    kwargs = _kwargs_for(cls, fixed, optimizer, lr, weight_decay, betas, eps, optimizer_kwargs)
    if kernel is not None:
        rule = rule_of(cls)
    else:
        if record is None:
            record = record_of_class(cls, kwargs)
        rule = record.rule if record is not None else rule_of(cls)
    peak_lr = kwargs.get("lr", signature_default(cls, "lr"))
    constructor = Constructor(cls, kwargs, record, rule, float(peak_lr) if is_real(peak_lr) else None,
                              _path(getattr(cls, "kernel", None)) if kernel is not None else None)
    if rule is not None and constructor.peak_lr is not None and weight_decay is not None:
        rule.check(constructor.peak_lr, constructor.peak_lr, weight_decay)
    return constructor


@dataclass(frozen=True)
class NamesOptimizer:
    """Mixin of the frozen settings that name an optimizer (fields ``optimizer``, ``lr``, ``weight_decay``,
    ``betas``, ``eps``, ``optimizer_kwargs``, ``kernel``): :meth:`_check_optimizer` checks them once, when the
    settings are made, and keeps what they resolved to as :attr:`constructor`. It is kept beside the settings, not
    in them (LightningCLI serialises the instance's attributes; a class made by ``on_kernel`` does not pickle): a
    copy or an unpickled settings object resolves it again on first use. A dataclass without fields, so that
    the settings stay pure dataclasses (jsonargparse nests only those)."""

    def _check_optimizer(self) -> Constructor:
        settings: Any = self
        constructor = checked_constructor(settings.optimizer, settings.lr, settings.weight_decay, settings.betas,
                                          settings.eps, settings.optimizer_kwargs, settings.kernel)
        key = id(self)
        if key not in _RESOLVED:
            weakref.finalize(self, _RESOLVED.pop, key, None)
        _RESOLVED[key] = constructor
        return constructor

    @property
    def constructor(self) -> Constructor:
        """The optimizer these settings describe (class, arguments, registry record, rule, peak lr)."""
        constructor = _RESOLVED.get(id(self))
        return constructor if constructor is not None else self._check_optimizer()


#: What each live settings object resolved to, by ``id`` (an entry leaves with its object).
_RESOLVED: dict[int, Constructor] = {}


class OptimizerMaker:
    """Builds the optimizer from parameter groups, for every form of the optimizer setting."""

    def __init__(
        self,
        optimizer: OptimizerSpec,
        lr: float | None,
        weight_decay: float | None,
        betas: tuple[float, float] | None,
        eps: float | None,
        optimizer_kwargs: Mapping[str, Any] | None,
        kernel: str | type[Optimizer] | None = None,
    ) -> None:
        self.callable: Callable[[Iterable[Any]], Optimizer] | None = None
        if isinstance(optimizer, (str, type)):
            constructor = checked_constructor(optimizer, lr, weight_decay, betas, eps, optimizer_kwargs, kernel)
            self.cls, self.kwargs = constructor.cls, dict(constructor.kwargs)
        else:
            check_optimizer_settings(optimizer, lr, weight_decay, betas, eps, optimizer_kwargs, kernel)
            self.callable = optimizer

    def __call__(self, groups: list[dict[str, Any]], weight_decay: float | None = None) -> Optimizer:
        if self.callable is not None:
            optimizer = self.callable(groups)
            if not isinstance(optimizer, Optimizer):
                raise TypeError(f"the optimizer callable returned {type(optimizer).__name__}, not an Optimizer")
            return optimizer
        kwargs = dict(self.kwargs)
        if weight_decay is not None:
            kwargs["weight_decay"] = weight_decay
        return self.cls(groups, **kwargs)


@dataclass(frozen=True)
class OptimizerRecipe:
    """One optimizer of a plan: the registry ``variant`` (None outside the registry), ``class_name`` /
    ``class_path``, the ``kernel`` it runs on (a class path, or None), ``kwargs`` for the constructor (None for an
    injected callable), and what it resolves to: the peak ``lr``, the ``weight_decay`` of groups that set none, the
    ``family`` (adam / sgd / muon) and the registry's one-step formula ``step``. ``rule`` is the decay rule
    (None where none describes the optimizer)."""

    variant: str | None
    class_name: str
    class_path: str
    kernel: str | None
    kwargs: Mapping[str, Any] | None
    lr: float | None
    weight_decay: float | None
    family: str | None
    step: str | None
    rule: DecayRule | None = field(default=None, compare=False)
    _probe: Optimizer | None = field(default=None, compare=False, repr=False)
    _cls: type[Optimizer] | None = field(default=None, compare=False, repr=False)

    @property
    def record(self) -> VariantInfo | None:
        return REGISTRY.get(self.variant) if self.variant is not None else None

    @property
    def defaults(self) -> Mapping[str, Any]:
        """The constructor's defaults as the optimizer really uses them (read from one built on a stand-in)."""
        return self._probe.defaults if self._probe is not None else {}

    def probe(self) -> Optimizer:
        """A new optimizer of this recipe on one stand-in weight (to try a scheduler callable on)."""
        if self._cls is None:
            assert self._probe is not None
            return self._probe
        assert self.kwargs is not None
        return _probe(lambda params: self._cls(params, **self.kwargs))  # type: ignore[misc]

    def rule_for(self, given: Mapping[str, Any]) -> DecayRule | None:
        """The rule a group that sets ``given`` follows (the rule decides from its group keys: AdamC's
        ``normalized=False`` groups follow AdamW's)."""
        if self._probe is None or self.rule is None or not self.rule.group_keys:  # one rule for every group
            return self.rule
        return rule_of(self._probe, {**self._probe.defaults, **given})

    def build(self, groups: list[dict[str, Any]]) -> Optimizer:
        """The optimizer over ``groups`` (no checks: the recipe was resolved from validated settings)."""
        assert self._cls is not None and self.kwargs is not None
        return warn_unread_normalized(self._cls(groups, **self.kwargs))

    def to_dict(self) -> dict[str, Any]:
        kwargs = None if self.kwargs is None else {
            key: list(value) if isinstance(value, tuple) else value for key, value in self.kwargs.items()
            if key != "rule"
        }
        return {"variant": self.variant, "class": self.class_path, "kernel": self.kernel, "kwargs": kwargs,
                "lr": self.lr, "weight_decay": self.weight_decay, "family": self.family, "step": self.step,
                "rule": repr(self.rule) if self.rule is not None else None}


def _probe(make: Callable[[list[torch.Tensor]], Optimizer]) -> Optimizer:
    """The optimizer on one stand-in 1 x 1 weight: the defaults it really uses (a signature may say None)."""
    return make([torch.zeros(1, 1, requires_grad=True)])


def _number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def variant_recipe(constructor: Constructor, decay_timescale_steps: float | None = None) -> OptimizerRecipe:
    """The recipe of a resolved variant or optimizer class (validated settings: :attr:`DecaySettings.constructor`);
    with ``decay_timescale_steps`` the weight decay whose timescale at the peak lr is that many steps."""
    cls, kwargs, record = constructor.cls, dict(constructor.kwargs), constructor.record
    probe = _probe(lambda params: cls(params, **kwargs))
    rule = constructor.rule if record is not None else rule_of(probe)
    peak_lr = _number(probe.defaults.get("lr"))
    if decay_timescale_steps is not None:
        kwargs["weight_decay"] = weight_decay_for_timescale(decay_timescale_steps, peak_lr or 1e-3, rule)
        probe = _probe(lambda params: cls(params, **kwargs))
    return OptimizerRecipe(
        variant=record.name if record is not None else None, class_name=cls.__name__,
        class_path=f"{cls.__module__}.{cls.__qualname__}",
        kernel=constructor.kernel, kwargs=kwargs, lr=peak_lr,
        weight_decay=_number(probe.defaults.get("weight_decay")), family=record.family if record else None,
        step=record.step if record else None, rule=rule, _probe=probe, _cls=cls,
    )


def callable_recipe(make: Callable[[Iterable[Any]], Optimizer]) -> OptimizerRecipe:
    """The recipe of an injected ``params -> Optimizer`` callable (LightningCLI's ``OptimizerCallable``), read from
    the optimizer it builds on one stand-in weight."""
    probe = _probe(make)
    if not isinstance(probe, Optimizer):
        raise TypeError(f"the optimizer callable returned {type(probe).__name__}, not an Optimizer")
    cls = type(probe)
    rule = rule_of(probe)
    record = next((info for info in REGISTRY.values() if info.optimizer is cls and type(info.rule) is type(rule)
                   and repr(info.rule) == repr(rule)), None)  # the record whose rule the optimizer applies
    return OptimizerRecipe(
        variant=record.name if record is not None else None, class_name=cls.__name__,
        class_path=f"{cls.__module__}.{cls.__qualname__}", kernel=None, kwargs=None,
        lr=_number(probe.defaults.get("lr")), weight_decay=_number(probe.defaults.get("weight_decay")),
        family=record.family if record else None, step=record.step if record else None, rule=rule,
        _probe=probe,
    )


def _path(kernel: str | type | None) -> str | None:
    if kernel is None or isinstance(kernel, str):
        return kernel
    return f"{kernel.__module__}.{kernel.__qualname__}"


