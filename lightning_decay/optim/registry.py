"""The variant registry: one record per decay variant, the single list that everything reads.

The factory and ``DecaySettings`` resolve names here, the CLI validates them here, the monitors ask a record what
they can log, the conventions take its rule, the benchmarks and the docs tables iterate over it, and the tests are
parametrized over it. Adding a scalar variant is its rule (:mod:`lightning_decay.optim.rules`), one
:class:`VariantInfo` below (``optimizer=KernelAdam`` or ``KernelSGD``, which run any scalar rule they are given) and
its float64 reference formula in ``tests/reference.py`` (see ``docs/contributing.md``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch.optim import Optimizer

from lightning_decay.optim.adam import AdamC, AdamL2, AdamW, ProxAdam
from lightning_decay.optim.base import DecayOptimizer
from lightning_decay.optim.elementwise import AdamP, CautiousAdamW
from lightning_decay.optim.rules import (
    AdamCRule,
    AdamL2Rule,
    AdamPRule,
    AdamWPaperRule,
    AdamWTorchRule,
    CautiousRule,
    DecayRule,
    MuonCRule,
    MuonPaperRule,
    MuonTorchRule,
    ProxAdamRule,
    ProxMuonRule,
    ProxSGDRule,
    SGDL2Rule,
    SGDWPaperRule,
    SGDWTorchRule,
)
from lightning_decay.optim.sgd import SGDL2, SGDW, ProxSGD

__all__ = [
    "VariantInfo",
    "REGISTRY",
    "VARIANTS",
    "FAMILIES",
    "KERNELS",
    "DECAY_METRICS",
    "variant_names",
    "variants_markdown",
    "get_variant",
    "resolve_variant",
    "record_of_class",
    "rule_of",
]

#: Optimizer families: the update ``u_t`` the decay acts next to (Adam's ``m_hat / D``, SGD's momentum direction,
#: Muon's orthogonalized momentum ``adjust(lr_t) O_t``; Muon steps only 2-D matrices).
FAMILIES = ("adam", "sgd", "muon")
#: How a variant's step runs: torch's own kernel with per-step ``(lr', wd')``, or a compiled multi-tensor step.
KERNELS = ("torch", "compiled")
#: What ``EffectiveDecayMonitor`` logs for a variant besides ``lr/<group>`` and ``eta/<group>``, and the keys:
#: ``decay_factor`` (one factor per group and step): ``decay_factor/<group>``, ``decay_timescale_steps/<group>``,
#: ``decay_timescale_epochs/<group>``; ``elementwise_factor`` (AdamP, ``1 / (1 + lr_t * wd / D)``):
#: ``decay_factor_min|mean|max/<layer>`` and the group mean ``decay_factor/<group>``; ``decayed_fraction`` (cautious
#: decay: the share of coordinates the mask decays): ``decayed_fraction/<group>`` and ``decayed_fraction/<layer>``;
#: ``preconditioned_decay`` (Adam + L2, ``lr_t * wd / D``): ``preconditioned_decay_min|mean|max/<layer>`` and
#: ``preconditioned_decay/<group>``; ``l2_grad_ratio`` (L2 rules, ``wd |w| / |g|``): ``l2_grad_ratio/<layer>``.
#: ``tests/test_callbacks.py`` trains every variant and checks that its record lists exactly what is logged.
DECAY_METRICS = ("decay_factor", "elementwise_factor", "decayed_fraction", "preconditioned_decay", "l2_grad_ratio")


@dataclass(frozen=True, eq=False)
class VariantInfo:
    """One decay variant: how to build it and what it is.

    ``optimizer(params, **kwargs, **user_kwargs)`` builds it (an optimizer that takes ``rule=``, such as
    ``KernelAdam`` and ``KernelSGD``, gets ``rule`` there); ``rule`` is the decay rule it applies (AdamC: to its
    normalized groups); ``step`` the one-step formula in the blog's notation (docs tables); ``source`` whom it is from.
    """

    name: str
    optimizer: type[Optimizer]
    rule: DecayRule
    family: str
    kernel: str
    step: str
    decay_metrics: tuple[str, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"{self.name}: kernel must be one of {KERNELS}, got {self.kernel!r}")
        unknown = set(self.decay_metrics) - set(DECAY_METRICS)
        if unknown:
            raise ValueError(f"{self.name}: unknown decay_metrics {sorted(unknown)}; known: {DECAY_METRICS}")
        kwargs = dict(self.kwargs)
        if "rule" in inspect.signature(self.optimizer).parameters:  # KernelAdam / KernelSGD: any scalar rule
            kwargs.setdefault("rule", self.rule)
        object.__setattr__(self, "kwargs", MappingProxyType(kwargs))

    @property
    def scale_free(self) -> bool:
        """Multiplying the loss by ``c > 0`` leaves the trajectory unchanged (eps = 0)."""
        return self.rule.scale_free

    @property
    def elementwise(self) -> bool:
        """The decay factor differs between coordinates (Adam's denominator, or a mask)."""
        return self.rule.elementwise

    @property
    def decoupled(self) -> bool:
        """The decay acts on the weights, not through the gradient (everything but the L2 variants)."""
        return self.rule.decoupled

    @property
    def class_path(self) -> str:
        """The optimizer class's import path (for ``optimizer_callable`` / ``class_path`` in YAML)."""
        return f"{self.optimizer.__module__}.{self.optimizer.__qualname__}"

    def build(self, params: Iterable[Any], **kwargs: Any) -> Optimizer:
        """The optimizer over ``params`` with the record's fixed keyword arguments and ``kwargs``."""
        clash = sorted(set(kwargs) & set(self.kwargs))
        if clash:
            raise ValueError(f"variant {self.name!r} fixes {clash}: pick another variant instead of passing them")
        return self.optimizer(params, **self.kwargs, **kwargs)


_SCALAR = ("decay_factor",)
_L2 = ("preconditioned_decay", "l2_grad_ratio")


def _muon_records() -> tuple[VariantInfo, ...]:
    """The Muon variants: torch's ``torch.optim.Muon`` kernel with each rule (none on a torch without Muon)."""
    if not hasattr(torch.optim, "Muon"):
        return ()
    from lightning_decay.optim.muon import CautiousMuon, KernelMuon

    return (
        VariantInfo("muon", KernelMuon, MuonTorchRule(), "muon", "torch", "w <- (1 - lr_t*wd) w - adjust(lr_t) O_t",
                    _SCALAR, source="torch.optim.Muon (Jordan et al. 2024)"),
        VariantInfo("muon-paper", KernelMuon, MuonPaperRule(), "muon", "torch",
                    "w <- (1 - eta_t*wd) w - adjust(lr_t) O_t", _SCALAR, source="Muon, Loshchilov & Hutter's decay"),
        VariantInfo("proxmuon", KernelMuon, ProxMuonRule(), "muon", "torch",
                    "w <- (w - adjust(lr_t) O_t) / (1 + eta_t*wd)", _SCALAR, source="Muon, ProxAdam's proximal decay"),
        VariantInfo("muonc", KernelMuon, MuonCRule(), "muon", "torch",
                    "w <- (1 - lr_t^2/lr_max*wd) w - adjust(lr_t) O_t", _SCALAR,
                    source="Muon, AdamC's correction (Defazio et al. 2025)"),
        VariantInfo("muon-cautious", CautiousMuon, CautiousRule(MuonTorchRule()), "muon", "torch",
                    "w <- w - adjust(lr_t) O_t - lr_t*wd 1[O_t*w >= 0] w", ("decay_factor", "decayed_fraction"),
                    {"convention": "torch"},
                    "Muon, Chen et al. 2025's cautious decay"),
    )

#: Every variant, by name.
REGISTRY: Mapping[str, VariantInfo] = MappingProxyType({info.name: info for info in (
    VariantInfo("adaml2", AdamL2, AdamL2Rule(), "adam", "torch", "g <- g + wd*w, then Adam", _L2,
                source="torch.optim.Adam(weight_decay=wd)"),
    VariantInfo("adamw", AdamW, AdamWTorchRule(), "adam", "torch", "w <- (1 - lr_t*wd) w - lr_t u_t", _SCALAR,
                {"convention": "torch"}, "torch.optim.AdamW"),
    VariantInfo("adamw-paper", AdamW, AdamWPaperRule(), "adam", "torch", "w <- (1 - eta_t*wd) w - lr_t u_t", _SCALAR,
                {"convention": "paper"}, "Loshchilov & Hutter 2019"),
    VariantInfo("proxadam", ProxAdam, ProxAdamRule(), "adam", "torch", "w <- (w - lr_t u_t) / (1 + eta_t*wd)",
                _SCALAR, source="Zhuang et al. 2022"),
    VariantInfo("adamp", AdamP, AdamPRule(), "adam", "compiled", "w <- (w - lr_t u_t) / (1 + lr_t*wd/D), elementwise",
                ("elementwise_factor",), source="Decay No More (ICLR 2023 blog track)"),
    VariantInfo("adamc", AdamC, AdamCRule(), "adam", "torch",
                "normalized groups: w <- (1 - lr_t^2/lr_max*wd) w - lr_t u_t; others as adamw", _SCALAR,
                source="Defazio et al. 2025"),
    VariantInfo("adamw-cautious", CautiousAdamW, CautiousRule(AdamWTorchRule()), "adam", "compiled",
                "w <- w - lr_t u_t - lr_t*wd 1[u_t*w >= 0] w", ("decay_factor", "decayed_fraction"),
                {"convention": "torch"}, "Chen et al. 2025"),
    VariantInfo("adamw-paper-cautious", CautiousAdamW, CautiousRule(AdamWPaperRule()), "adam", "compiled",
                "w <- w - lr_t u_t - eta_t*wd 1[u_t*w >= 0] w", ("decay_factor", "decayed_fraction"),
                {"convention": "paper"}, "Chen et al. 2025, paper convention"),
    VariantInfo("sgd-l2", SGDL2, SGDL2Rule(), "sgd", "torch", "g <- g + wd*w, then SGD",
                ("decay_factor", "l2_grad_ratio"), source="torch.optim.SGD(weight_decay=wd)"),
    VariantInfo("sgdw", SGDW, SGDWTorchRule(), "sgd", "compiled", "w <- (1 - lr_t*wd) w - lr_t d_t", _SCALAR,
                {"convention": "torch"}, "Loshchilov & Hutter 2019, torch convention"),
    VariantInfo("sgdw-paper", SGDW, SGDWPaperRule(), "sgd", "compiled", "w <- (1 - eta_t*wd) w - lr_t d_t", _SCALAR,
                {"convention": "paper"}, "Loshchilov & Hutter 2019"),
    VariantInfo("proxsgd", ProxSGD, ProxSGDRule(), "sgd", "compiled", "w <- (w - lr_t d_t) / (1 + eta_t*wd)",
                _SCALAR, source="the SGD counterpart of ProxAdam"),
    *_muon_records(),
)})

#: ``name -> (optimizer class, fixed keyword arguments)``: the registry's build recipes (read-only view).
VARIANTS: Mapping[str, tuple[type[Optimizer], dict[str, Any]]] = MappingProxyType(
    {name: (info.optimizer, dict(info.kwargs)) for name, info in REGISTRY.items()}
)


def variants_markdown(family: str | None = None) -> str:
    """The registry as a markdown table (README and ``docs/variants.md`` embed it; a test keeps them current)."""
    lines = ["| name | class | one step | kernel | scale-free | source |", "|---|---|---|---|---|---|"]
    for info in REGISTRY.values():
        if family is not None and info.family != family:
            continue
        arguments = ", ".join(f"{key}={value!r}" for key, value in info.kwargs.items())
        cls = f"{info.optimizer.__name__}({arguments})" if arguments else info.optimizer.__name__
        kernel = "torch's kernel" if info.kernel == "torch" else "compiled"
        scale_free = "yes" if info.scale_free else "no"
        lines.append(f"| `{info.name}` | `{cls}` | `{info.step}` | {kernel} | {scale_free} | {info.source} |")
    return "\n".join(lines) + "\n"


def variant_names(family: str | None = None) -> list[str]:
    """The registered names, in registry order (only ``family``'s when given)."""
    return [name for name, info in REGISTRY.items() if family is None or info.family == family]


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def get_variant(name: str) -> VariantInfo:
    """The record of a variant name (case and ``_`` / ``-`` insensitive); ValueError listing the valid names."""
    if not isinstance(name, str):
        raise TypeError(f"variant name must be a string, got {type(name).__name__} {name!r}")
    key = _normalize(name)
    if key not in REGISTRY:
        raise ValueError(f"unknown variant {name!r}; valid variants: {', '.join(REGISTRY)}")
    return REGISTRY[key]


def resolve_variant(name: str) -> tuple[type[Optimizer], dict[str, Any]]:
    """``(optimizer class, fixed kwargs)`` of a variant name; ValueError listing the valid names on a typo."""
    info = get_variant(name)
    return info.optimizer, dict(info.kwargs)


def record_of_class(cls: type, kwargs: Mapping[str, Any]) -> VariantInfo | None:
    """The record that ``cls(**kwargs)`` builds, or None (kwargs beyond the record's fixed ones are ignored)."""
    matches = [
        info for info in REGISTRY.values()
        if info.optimizer is cls and all(kwargs.get(key, _default_of(cls, key)) == value
                                         for key, value in info.kwargs.items())
    ]
    return matches[0] if matches else None


def _default_of(cls: type, name: str) -> Any:
    parameter = inspect.signature(cls).parameters.get(name)
    return None if parameter is None else parameter.default


def rule_of(
    optimizer: str | DecayRule | Optimizer | type, group: Mapping[str, Any] | None = None
) -> DecayRule | None:
    """The decay rule of a variant name, a rule, an optimizer class or instance (with ``group``: the rule that
    group follows); None for an optimizer no rule describes.

    This package's optimizers answer themselves (``rule_for(group)``, else ``decay_rule``). torch's optimizers map
    to the rule they implement exactly: ``torch.optim.AdamW`` (and ``Adam(decoupled_weight_decay=True)``) to the
    torch-convention AdamW rule, ``torch.optim.Adam`` to Adam's L2 rule, ``torch.optim.SGD`` to SGD's L2 rule,
    ``torch.optim.Muon`` to torch's Muon rule.
    """
    if isinstance(optimizer, DecayRule):
        return optimizer
    if isinstance(optimizer, str):
        return get_variant(optimizer).rule
    if isinstance(optimizer, type):
        record = record_of_class(optimizer, {})
        if record is not None:
            return record.rule
        if issubclass(optimizer, DecayOptimizer):  # a class outside the registry: its instances know their rule,
            rule = getattr(optimizer, "decay_rule", None)  # a class built for one rule (on_kernel's) says it
            return rule if isinstance(rule, DecayRule) else None
        if issubclass(optimizer, torch.optim.AdamW):
            return REGISTRY["adamw"].rule
        if issubclass(optimizer, torch.optim.Adam):
            return REGISTRY["adaml2"].rule
        if issubclass(optimizer, torch.optim.SGD):
            return REGISTRY["sgd-l2"].rule
        if "muon" in REGISTRY and issubclass(optimizer, torch.optim.Muon):
            return REGISTRY["muon"].rule
        return None
    if group is not None and callable(getattr(optimizer, "rule_for", None)):
        rule = optimizer.rule_for(group)  # type: ignore[attr-defined]
        if isinstance(rule, DecayRule):
            return rule
    rule = getattr(optimizer, "decay_rule", None)
    if isinstance(rule, DecayRule):
        return rule
    if isinstance(optimizer, torch.optim.AdamW):
        return REGISTRY["adamw"].rule
    if isinstance(optimizer, torch.optim.Adam):
        decoupled = bool((group or optimizer.defaults).get("decoupled_weight_decay", False))
        return REGISTRY["adamw" if decoupled else "adaml2"].rule
    if isinstance(optimizer, torch.optim.SGD):
        return REGISTRY["sgd-l2"].rule
    if "muon" in REGISTRY and isinstance(optimizer, torch.optim.Muon):
        return REGISTRY["muon"].rule
    return None
