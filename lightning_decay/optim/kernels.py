"""Every scalar decay rule on any decoupled-AdamW implementation: ``on_kernel(kernel, variant)``.

A *kernel* is an optimizer class whose step is, per parameter, ``w <- (1 - lr * wd) * w - f(lr) * update`` with
``f`` linear in the lr (decoupled decay; ``update`` independent of lr and wd): ``torch.optim.AdamW`` (single-tensor,
foreach, fused), ``torch.optim.Adam(decoupled_weight_decay=True)``, torchao's ``AdamW8bit`` / ``AdamW4bit`` /
``AdamWFp8`` / ``_AdamW``, bitsandbytes' AdamWs, ``torch.optim.Muon`` (``f(lr) = adjust_lr(lr)``). A scalar rule
(:class:`~lightning_decay.optim.rules.KernelDecayRule`) is then the kernel run with the per-step settings
``(lr', wd') = rule.kernel_settings(lr_t, alpha, wd)``: one step is ``w <- (1 - lr' * wd') w - f(lr') update``,
which is the rule's step with the kernel's update (the proximal settings of
:class:`~lightning_decay.optim.rules.ProximalRule` give the proximal step). An L2 rule needs a kernel whose decay
goes through the gradient (``torch.optim.Adam``, torchao's ``Adam8bit``); elementwise rules (AdamP, cautious decay)
have no such setting.

.. code-block:: python

    from torchao.optim import AdamW8bit
    ProxAdam8bit = on_kernel(AdamW8bit, "proxadam")   # the class ProxAdamOnAdamW8bit, cached
    optimizer = ProxAdam8bit(model.parameters(), lr=1e-3, weight_decay=1e-4)
    Generic = on_kernel(torch.optim.Muon)            # KernelMuon(params, ..., rule=ProxAdamRule())

The class keeps the kernel's constructor, step, state and ``state_dict`` (it is a subclass of the kernel); it adds
the package's group checks, alpha bookkeeping and ``decay_factor``
(:class:`~lightning_decay.optim.base.DecayOptimizer`), so the monitors, resume and the CLI treat it as any variant.
``weight_decay`` left unset is the kernel's default, times the lr for rules whose decay is ``eta_t * wd`` (as
:class:`~lightning_decay.optim.adam.KernelAdam`).

Kernels that compile their step with the settings as constants (torchao passes ``weight_decay`` as a Python float
into a ``torch.compile``'d function: a value that changes every step, as AdamC's and ProxAdam's ``wd'``/``lr'`` do,
would recompile every step) get ``lr'`` and ``wd'`` as 0-dim tensors, which the compiled graph takes as inputs.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from lightning_decay.optim.adam import check_tensor_lr_path
from lightning_decay.optim.base import DecayOptimizer, as_number, default_weight_decay, unhooked_step
from lightning_decay.optim.compiled import announce_compiling_step
from lightning_decay.optim.rules import DecayRule, KernelDecayRule, KernelSettings, rule_named
from lightning_decay.validation import check_betas, check_lr, check_nonnegative

__all__ = [
    "on_kernel", "resolve_kernel", "check_kernel_variant", "kernel_decoupling", "KernelRuleOptimizer",
    "flatten_state_tensor", "unflatten_state_tensor",
]


def resolve_kernel(kernel: type[Optimizer] | str) -> type[Optimizer]:
    """The kernel class of an ``Optimizer`` subclass or a dotted class path (``"torchao.optim.AdamW8bit"``).

    ValueError naming ``kernel`` for a path that does not import, TypeError for anything not an ``Optimizer``
    subclass or one that already applies a decay rule of this package.
    """
    given = kernel
    if isinstance(kernel, str):
        module_path, _, name = kernel.strip().rpartition(".")
        if not module_path:
            raise ValueError(f"kernel {kernel!r} is not a class path such as 'torchao.optim.AdamW8bit'")
        try:
            kernel = getattr(importlib.import_module(module_path), name)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"kernel {kernel!r} does not import: {error}") from None
    if not (isinstance(kernel, type) and issubclass(kernel, Optimizer)):
        shown = f"{given!r}, which is {kernel!r}" if isinstance(given, str) else repr(kernel)
        raise TypeError(f"kernel must be a torch.optim.Optimizer subclass (or its class path), got {shown}")
    if issubclass(kernel, DecayOptimizer):
        raise TypeError(
            f"kernel {kernel.__qualname__} already applies a decay rule of this package; give the optimizer it "
            "runs on (e.g. torch.optim.AdamW)"
        )
    if "weight_decay" not in _kernel_parameters(kernel) or "lr" not in _kernel_parameters(kernel):
        raise TypeError(f"kernel {kernel.__qualname__} takes no lr and weight_decay: no decay setting to run a rule on")
    return kernel


def _kernel_parameters(kernel: type[Optimizer]) -> dict[str, inspect.Parameter]:
    """The kernel constructor's parameters, without ``self``."""
    parameters = inspect.signature(kernel.__init__).parameters
    return {name: parameter for name, parameter in parameters.items() if name != "self"}


def _is_torchao(kernel: type[Optimizer]) -> bool:
    return kernel.__module__.split(".")[0] == "torchao"


def kernel_decoupling(kernel: type[Optimizer]) -> frozenset[bool]:
    """Which decay a kernel applies: ``{True}`` decoupled (``w <- (1 - lr*wd) w``), ``{False}`` L2 (``g <- g +
    wd*w``), both when its ``decoupled_weight_decay`` argument chooses (``torch.optim.Adam``).

    ``torch.optim.AdamW`` and ``Muon`` and torchao's AdamWs are decoupled; torch's other optimizers and torchao's
    Adams are L2; any other kernel is taken to be decoupled (the contract of :func:`on_kernel`).
    """
    if "decoupled_weight_decay" in _kernel_parameters(kernel):
        return frozenset({True, False})
    if issubclass(kernel, (torch.optim.AdamW, getattr(torch.optim, "Muon", torch.optim.AdamW))):
        return frozenset({True})
    if _is_torchao(kernel):
        return frozenset({"AdamW" in kernel.__name__})  # torchao's classes set is_adamw by name
    if kernel.__module__.split(".")[:2] == ["torch", "optim"]:
        return frozenset({False})
    return frozenset({True})


def _takes_tensor_settings(kernel: type[Optimizer]) -> bool:
    """Whether the kernel gets ``lr'`` and ``wd'`` as 0-dim tensors: torchao's optimizers (a tensor lr, and a
    compiled step that would bake a float ``weight_decay`` in as a constant)."""
    return _is_torchao(kernel)


def _resolve_rule(variant: str | KernelDecayRule | DecayRule) -> tuple[KernelDecayRule | DecayRule, str]:
    if isinstance(variant, DecayRule):
        return variant, variant.name
    if isinstance(variant, str):
        rule = rule_named(variant)
        return rule, rule.name
    raise TypeError(f"variant must be a variant name or a KernelDecayRule, got {type(variant).__name__} {variant!r}")


def check_kernel_variant(kernel: type[Optimizer], rule: DecayRule, name: str | None = None) -> None:
    """ValueError, naming the variant and the kernel and saying why, when ``kernel`` cannot run ``rule``."""
    name = name or rule.name
    where = f"variant {name!r} cannot run on kernel {kernel.__qualname__}"
    if rule.elementwise or not isinstance(rule, KernelDecayRule):
        raise ValueError(
            f"{where}: its decay is elementwise (a factor per coordinate, from Adam's denominator or a sign mask), "
            "not a per-step (lr, weight_decay) setting that a kernel takes; use the variant's own optimizer"
        )
    decoupled = rule.decoupled
    if decoupled not in kernel_decoupling(kernel):
        kind = "an L2 term in the gradient" if decoupled else "decoupled (it multiplies the weights by 1 - lr*wd)"
        needs = "decoupled" if decoupled else "L2 (g <- g + wd*w)"
        raise ValueError(f"{where}: the rule's decay is {needs}, but the kernel's weight decay is {kind}")


class KernelRuleOptimizer(DecayOptimizer):
    """The base of :func:`on_kernel`'s classes, placed before the kernel in their bases: the kernel's step runs with
    the rule's ``(lr', wd')`` (:meth:`DecayOptimizer._step_kernel_with_rule_settings`)."""

    #: The kernel class (the next base).
    kernel: ClassVar[type[Optimizer]]
    #: The rule of a class built for one variant; None: the constructor takes ``rule=``.
    fixed_rule: ClassVar[KernelDecayRule | None] = None
    #: Give the kernel ``lr'`` and ``wd'`` as 0-dim tensors (see :func:`_takes_tensor_settings`).
    tensor_settings: ClassVar[bool] = False
    #: The kernel compiles its step at the first call (torchao's): the first step says so, once per process.
    compiles_first_step: ClassVar[bool] = False

    decay_rule: KernelDecayRule

    def __init__(self, params: Iterable[Any], *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        rule = kwargs.pop("rule", None)
        if cls.fixed_rule is None and isinstance(rule, DecayRule):  # a fixed rule was checked by on_kernel
            check_kernel_variant(cls.kernel, rule)
        if not isinstance(rule, KernelDecayRule):
            raise TypeError(f"rule must be a KernelDecayRule (a rule a kernel runs by its settings), got {rule!r}")
        self.decay_rule = rule
        parameters = _kernel_parameters(cls.kernel)
        try:
            bound = inspect.signature(cls.kernel.__init__).bind(self, params, *args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{cls.__name__}: {error}") from None
        arguments = bound.arguments
        lr = arguments.get("lr", parameters["lr"].default)
        if arguments.get("weight_decay") is None:
            default = parameters["weight_decay"].default
            arguments["weight_decay"] = default_weight_decay(None, lr, rule.per_unit_lr, default=default)
        decoupled = rule.decoupled
        if "decoupled_weight_decay" in parameters:
            if arguments.get("decoupled_weight_decay") is None:
                arguments["decoupled_weight_decay"] = decoupled
            if arguments["decoupled_weight_decay"] != decoupled:
                raise ValueError(
                    f"decoupled_weight_decay={arguments['decoupled_weight_decay']!r} contradicts the rule "
                    f"{rule.name!r}, whose decay is {'decoupled' if decoupled else 'L2'}: leave it unset"
                )
        cls.kernel.__init__(self, *bound.args[1:], **bound.kwargs)

    def _check_settings(self, group: dict[str, Any], where: str) -> None:
        """lr, weight_decay, and the Adam settings where the kernel has them (betas, eps)."""
        check_lr("lr", group["lr"], where)
        check_nonnegative("weight_decay", group["weight_decay"], where)
        if isinstance(group.get("eps"), (int, float)):
            check_nonnegative("eps", group["eps"], where)
        if "betas" in group:
            check_betas(group["betas"], where)
        if issubclass(type(self).kernel, torch.optim.Adam):
            check_tensor_lr_path(group, where)

    def _kernel_values(self, group: dict[str, Any], settings: KernelSettings) -> tuple[Any, Any]:
        if not type(self).tensor_settings:
            return super()._kernel_values(group, settings)
        lr = group["lr"]
        dtype = lr.dtype if isinstance(lr, Tensor) else torch.float32
        device = lr.device if isinstance(lr, Tensor) else torch.device("cpu")
        as_tensor = torch.as_tensor
        return as_tensor(settings.lr, dtype=dtype, device=device), as_tensor(settings.weight_decay, dtype=dtype,
                                                                             device=device)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step: every group is checked, then the kernel's own step runs with the rule's ``(lr', wd')``."""
        cls = type(self)
        kernel_step = unhooked_step(cls.kernel)

        def run_kernel() -> None:
            if cls.compiles_first_step and not self.state:
                announce_compiling_step(cls.__name__, cls.kernel)
            kernel_step(self)

        return self._step_kernel_with_rule_settings(closure, run_kernel)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        # the kernel's own attributes (torchao's block_size, is_adamw, ...); torch's hooks are rebuilt on load, and
        # an LR scheduler's wrapper of ``step`` is dropped (as torch's own optimizers drop it)
        state.update({key: value for key, value in self.__dict__.items()
                      if not key.startswith("_") and not callable(value)})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # torchao keeps the lr as a tensor
            if type(self).tensor_settings and not isinstance(group["lr"], Tensor):
                group["lr"] = torch.tensor(as_number(group["lr"]), dtype=torch.float32)

    def state_dict(self) -> dict[str, Any]:
        """The kernel's state dict, with tensor-subclass state (torchao's quantized moments) stored as its plain
        inner tensors and numbers (:func:`flatten_state_tensor`): torch.load reads it with any ``map_location``
        (Lightning passes a callable, which torch cannot apply to a wrapper subclass) and ``weights_only``."""
        state_dict = super().state_dict()
        state = {key: {name: flatten_state_tensor(value) for name, value in values.items()}
                 for key, values in state_dict["state"].items()}
        return {**state_dict, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The kernel's ``load_state_dict``; flattened tensor-subclass state (see :meth:`state_dict`) is rebuilt."""
        state = {key: {name: unflatten_state_tensor(value) for name, value in values.items()}
                 for key, values in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": state})

    def __reduce__(self) -> tuple[Any, ...]:
        cls = type(self)
        return _new_instance, (cls.kernel, cls.fixed_rule), self.__getstate__()


#: The key that marks a flattened tensor subclass in a state dict.
SUBCLASS_KEY = "tensor_subclass"


def flatten_state_tensor(value: Any) -> Any:
    """A traceable tensor subclass (torchao's ``OptimState8bit``, ...) as ``{"tensor_subclass": class path, "inner":
    {name: tensor}, "ctx": ..., "size": ..., "stride": ...}`` (its ``__tensor_flatten__``); anything else as it is
    (plain tensors, numbers, DTensors)."""
    if not isinstance(value, Tensor) or type(value) in (Tensor, torch.nn.Parameter):
        return value
    if not hasattr(type(value), "__tensor_flatten__") or isinstance(value, DTensor):
        return value
    names, ctx = value.__tensor_flatten__()
    return {
        SUBCLASS_KEY: f"{type(value).__module__}.{type(value).__qualname__}",
        "inner": {name: flatten_state_tensor(getattr(value, name)) for name in names},
        "ctx": ctx, "size": list(value.size()), "stride": list(value.stride()),
    }


def unflatten_state_tensor(value: Any) -> Any:
    """The tensor subclass :func:`flatten_state_tensor` stored (its class must be imported already: the kernel's
    module imports it); anything else as it is."""
    if not (isinstance(value, dict) and SUBCLASS_KEY in value):
        return value
    module_name, _, name = value[SUBCLASS_KEY].rpartition(".")
    cls = getattr(sys.modules.get(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, Tensor)):
        raise ValueError(f"state_dict: the state tensor class {value[SUBCLASS_KEY]!r} is not imported")
    inner = {key: unflatten_state_tensor(tensor) for key, tensor in value["inner"].items()}
    return cls.__tensor_unflatten__(inner, value["ctx"], torch.Size(value["size"]), tuple(value["stride"]))


def _new_instance(kernel: type[Optimizer], rule: KernelDecayRule | None, *_: Any) -> Optimizer:
    """An empty instance of ``on_kernel(kernel, rule)`` (pickle fills it through ``__setstate__``; a third argument
    is an older version's AdamC flag, now the rule's own)."""
    cls = _class_for(kernel, rule)
    return cls.__new__(cls)


_CACHE: dict[tuple[Any, ...], type[Optimizer]] = {}
_CACHE_LOCK = threading.RLock()  # a fixed-rule class makes its generic class first


def on_kernel(kernel: type[Optimizer] | str, variant: str | KernelDecayRule | None = None) -> type[Optimizer]:
    """An ``Optimizer`` class that runs ``variant``'s decay rule on ``kernel``'s step, state and ``state_dict``.

    ``kernel``: an optimizer class (or its dotted path) whose step is ``w <- (1 - lr*wd) w - f(lr) update`` with
    ``f`` linear (see the module). ``variant``: a registry name (``"proxadam"``, ``"adamc"``, ...) or a
    :class:`~lightning_decay.optim.rules.KernelDecayRule`; each step is the kernel with
    ``rule.kernel_settings(lr_t, alpha, wd)``. ``None`` gives the generic class ``Kernel<Name>`` whose constructor
    takes ``rule=`` (keyword), like :class:`~lightning_decay.optim.adam.KernelAdam`. The constructor is the
    kernel's, plus the rule's group keys (AdamC's ``normalized`` / ``lr_max``). The same arguments give the same
    class.

    ValueError naming the variant and the kernel for a rule the kernel cannot run (elementwise rules; an L2 rule on
    a decoupled kernel or the reverse); errors naming ``kernel`` for a path that does not import or a class that
    is not an ``Optimizer``.
    """
    kernel = resolve_kernel(kernel)
    if variant is None:
        return _class_for(kernel, None)
    rule, name = _resolve_rule(variant)
    check_kernel_variant(kernel, rule, name)
    assert isinstance(rule, KernelDecayRule)
    return _class_for(kernel, rule)


def _rule_key(rule: KernelDecayRule | None) -> Any:
    return None if rule is None else (type(rule), repr(rule))


def _class_name(kernel: type[Optimizer], rule: KernelDecayRule | None) -> str:
    kernel_name = kernel.__name__.lstrip("_")
    if rule is None:
        return f"Kernel{kernel_name}"
    rule_name = type(rule).__name__.removesuffix("Rule").removesuffix("Torch")
    return f"{rule_name}On{kernel_name}"


def _class_for(kernel: type[Optimizer], rule: KernelDecayRule | None) -> type[Optimizer]:
    key = (kernel, _rule_key(rule))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _make_class(kernel, rule)
        return _CACHE[key]


def _make_class(kernel: type[Optimizer], rule: KernelDecayRule | None) -> type[Optimizer]:
    """The generic class ``Kernel<Name>`` (constructor: the kernel's, plus ``rule=``), or for a rule its subclass
    with the rule fixed, made as every variant's class is (:meth:`DecayOptimizer.__init_subclass__`)."""
    name = _class_name(kernel, rule)
    if rule is not None:
        namespace = {
            "__module__": __name__, "__qualname__": name, "fixed_rule": rule, "decay_rule": rule,
            "__doc__": f"{kernel.__module__}.{kernel.__qualname__}'s step run with the rule {rule!r}'s per-step "
                       "``(lr', wd')`` (see :func:`lightning_decay.optim.kernels.on_kernel`).",
        }
        return type(name, (_class_for(kernel, None),), namespace, rule=rule)
    signature = _signature(kernel)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        KernelRuleOptimizer.__init__(self, *args, **kwargs)

    __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *signature.parameters.values()]
    )
    __init__.__qualname__ = f"{name}.__init__"
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"{kernel.__module__}.{kernel.__qualname__}'s step run with the decay rule given as ``rule=``'s "
                   "per-step ``(lr', wd')`` (see :func:`lightning_decay.optim.kernels.on_kernel`).",
        "__init__": __init__,
        "kernel": kernel,
        "tensor_settings": _takes_tensor_settings(kernel),
        "compiles_first_step": _is_torchao(kernel),
    }
    return type(name, (KernelRuleOptimizer, kernel), namespace)


def _signature(kernel: type[Optimizer]) -> inspect.Signature:
    """The kernel's constructor signature (without ``self``), ``weight_decay`` defaulting to None (the kernel's
    default, scaled for ``eta_t * wd`` rules), plus the keyword ``rule``."""
    parameters = []
    for parameter in _kernel_parameters(kernel).values():
        if parameter.name == "weight_decay":
            parameter = parameter.replace(default=None, annotation="float | None")
        if parameter.name == "decoupled_weight_decay":  # None: the rule's (another value is refused)
            parameter = parameter.replace(default=None, annotation="bool | None")
        parameters.append(parameter)
    extra = [inspect.Parameter("rule", inspect.Parameter.KEYWORD_ONLY, annotation="KernelDecayRule")]
    variadic = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
    parameters = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return inspect.Signature(parameters + extra + variadic)
