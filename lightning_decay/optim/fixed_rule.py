"""A variant's class: a generic optimizer (one that takes ``rule=``) with the rule fixed, made by a class keyword.

``class ProxAdam(KernelAdam, rule=ProxAdamRule)`` (:meth:`DecayOptimizer.__init_subclass__
<lightning_decay.optim.base.DecayOptimizer.__init_subclass__>`) gets the constructor :func:`fixed_rule_constructor`
makes: the base's signature without ``rule`` and with the rule's group keys (what ``inspect``, jsonargparse and the
factory read), binding its arguments and building the rule. ``conventions={"torch": ..., "paper": ...}`` instead
adds a ``convention`` argument (:func:`convention_rule`), as AdamW's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from lightning_decay.optim.rules import DecayRule, KernelDecayRule

__all__ = ["convention_rule", "fixed_rule_constructor"]


def convention_rule(convention: str, conventions: dict[str, type[KernelDecayRule]]) -> KernelDecayRule:
    """The rule of a ``convention`` name; ValueError naming ``convention`` and the valid names otherwise."""
    if convention not in conventions:
        raise ValueError(f"convention must be one of {sorted(conventions)}, got {convention!r}")
    return conventions[convention]()


def fixed_rule_constructor(
    cls: type,
    rule: type[KernelDecayRule] | KernelDecayRule | None,
    conventions: Mapping[str, type[KernelDecayRule]] | None,
    weight_decay: float | None,
) -> Callable[..., None]:
    """``cls.__init__`` for :meth:`DecayOptimizer.__init_subclass__`: the base constructor with the rule fixed; the
    rule's group keys (:attr:`~lightning_decay.optim.rules.DecayRule.group_keys`) become keyword arguments, their
    defaults the rule's."""
    base_init = super(cls, cls).__init__  # the generic constructor (KernelAdam's, KernelSGD's, on_kernel's)
    base_signature = inspect.signature(base_init)
    if "rule" not in base_signature.parameters:
        raise TypeError(f"{cls.__name__}: rule= and conventions= need a base class whose constructor takes rule=")
    parameters = []
    for parameter in base_signature.parameters.values():
        if parameter.name == "rule":
            if conventions is not None:
                parameters.append(parameter.replace(name="convention", default=next(iter(conventions)),
                                                    annotation="str"))
            continue
        if parameter.name == "weight_decay" and weight_decay is not None:
            parameter = parameter.replace(default=weight_decay, annotation="float")
        parameters.append(parameter)
    fixed = rule if isinstance(rule, DecayRule) else None  # a rule instance: its group keys' values are defaults
    rule_class = type(rule) if fixed is not None else rule
    group_keys = rule_class.group_keys if rule_class is not None else ()
    defaults = fixed.group_defaults() if fixed is not None else {}
    keys = [  # the rule's group keys (AdamC's normalized, lr_max): the defaults of the optimizer's groups
        parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY, default=defaults.get(parameter.name, parameter.default))
        for parameter in (inspect.signature(rule_class).parameters.values() if group_keys else ())
        if parameter.name in group_keys
    ]
    variadic = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
    parameters = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD] + keys + variadic
    signature = base_signature.replace(parameters=parameters)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        arguments = signature.bind(self, *args, **kwargs).arguments
        del arguments["self"]
        if conventions is not None:
            convention = arguments.pop("convention", next(iter(conventions)))
            decay_rule = convention_rule(convention, dict(conventions))
            self.convention = convention
        else:
            values = {key: arguments.pop(key) for key in group_keys if key in arguments}
            decay_rule = fixed.with_group_defaults(**values) if fixed is not None else rule_class(**values)
        if weight_decay is not None:
            arguments.setdefault("weight_decay", weight_decay)
        extra = arguments.pop(next((p.name for p in variadic), ""), {})
        base_init(self, **arguments, **extra, rule=decay_rule)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__module__ = cls.__module__
    return __init__
