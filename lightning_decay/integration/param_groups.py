"""Parameter groups for weight decay: which parameters decay, which do not, each group with a readable name.

Every trainable parameter lands in exactly one group (a parameter shared by several modules, e.g. tied
input/output embeddings, once; frozen parameters nowhere). For each parameter the first rule that matches decides:

1. ``overrides``, in order: a :class:`GroupOverride` puts the parameters it matches into its own named group
   (with its own ``weight_decay``, ``lr`` or ``lr_scale``). An override that sets no ``weight_decay`` keeps the
   no-decay rules below: its matches split into ``"<name>"`` (decayed) and ``"<name>_no_decay"`` (e.g. the
   head's bias), both with its lr. The names ``"decay"`` and ``"no_decay"`` are the two built-in groups, so
   ``GroupOverride("decay", ...)`` forces decay and ``GroupOverride("no_decay", ...)`` removes it.
2. ``no_decay`` name patterns (no decay).
3. The model's own lists (timm's convention, any submodule): names from ``no_weight_decay()`` (relative to the
   module that defines it) and substrings from ``no_weight_decay_keywords()`` (no decay).
4. The default no-decay set: biases (parameters named ``bias`` or ``*_bias``, like attention's
   ``in_proj_bias``), parameters of normalization layers (BatchNorm, InstanceNorm, LayerNorm,
   GroupNorm, RMSNorm, and classes named ``...Norm``/``...Norm2d``), every other parameter with ``ndim <= 1``,
   and, when ``no_decay_embeddings`` is set, ``nn.Embedding``/``nn.EmbeddingBag`` weights.
5. Otherwise: the ``"decay"`` group.

A parameter with several names (shared/tied) matches a rule when any of its names or owners does. Name patterns
are ``fnmatch`` patterns (case-sensitive) on the full dotted name; a pattern also matches everything under a
module path (``"head"`` matches ``"head.weight"``). Module types in overrides are class names (``"LayerNorm"``,
matching subclasses too) or dotted paths (``"torch.nn.LayerNorm"``); a parameter matches when it lives anywhere
inside a module of that type.

The groups are plain ``torch.optim`` group dicts: ``{"params": [...], "name": ...}`` plus only the settings that
differ from the optimizer's defaults (``"weight_decay": 0.0`` for ``"no_decay"``), so the optimizer's own
``weight_decay``/``lr`` apply to the ``"decay"`` group; ``LearningRateMonitor`` shows ``lr-AdamW/decay`` etc.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parameter import UninitializedParameter

from lightning_decay.integration.group_settings import (
    DECAY,
    NO_DECAY,
    NO_DECAY_SUFFIX,
    GroupOverride,
    ParamGroupSettings,
    strings,
)

__all__ = [
    "DECAY",
    "NO_DECAY",
    "NO_DECAY_SUFFIX",
    "NORM_TYPES",
    "EMBEDDING_TYPES",
    "GroupOverride",
    "ParamGroupSettings",
    "ParamAssignment",
    "assign_param_groups",
    "build_param_groups",
    "summarize_param_groups",
    "timm_departures",
]

#: Normalization layers whose parameters do not decay by default (BatchNorm and InstanceNorm share ``_NormBase``).
NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm)
#: Embedding layers (no decay only with ``no_decay_embeddings=True``).
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)

_NORM_CLASS_NAME = re.compile(r"Norm(\d+d)?$")  # custom norms: LayerNorm2d, LlamaRMSNorm, T5LayerNorm, ...


@dataclass(frozen=True)
class ParamAssignment:
    """Where one trainable parameter goes: its ``names`` (first = ``model.named_parameters()``'s), ``group``,
    and the ``reason`` (the rule that decided)."""

    names: tuple[str, ...]
    group: str
    reason: str

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass
class _Entry:
    param: nn.Parameter
    names: list[str] = field(default_factory=list)
    owners: list[nn.Module] = field(default_factory=list)  # the module holding it, one per name
    ancestors: list[nn.Module] = field(default_factory=list)  # every module it lives in (owners included)


def _parameter_table(model: nn.Module) -> list[_Entry]:
    """Each distinct parameter once, with all its names, owners and enclosing modules, in first-name order."""
    modules = dict(model.named_modules(remove_duplicate=False))
    table: dict[int, _Entry] = {}
    for module_name, module in modules.items():
        prefix = module_name.split(".") if module_name else []
        chain = [modules[".".join(prefix[:i])] for i in range(len(prefix) + 1)]
        for local_name, param in module.named_parameters(recurse=False, remove_duplicate=False):
            entry = table.setdefault(id(param), _Entry(param))
            entry.names.append(f"{module_name}.{local_name}" if module_name else local_name)
            entry.owners.append(module)
            entry.ancestors.extend(m for m in chain if all(m is not a for a in entry.ancestors))
    return list(table.values())


def _pattern_matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _TypeMatcher:
    """Matches modules against a class name (``"LayerNorm"``) or dotted path (``"torch.nn.LayerNorm"``)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.resolved: type | None = None
        if "." in spec:
            module_path, _, attribute = spec.rpartition(".")
            try:
                candidate = getattr(importlib.import_module(module_path), attribute)
            except (ImportError, AttributeError, ValueError):
                candidate = None  # e.g. a class defined in a function (``<locals>``): matched by its path below
            if isinstance(candidate, type):
                self.resolved = candidate

    def __call__(self, module: nn.Module) -> bool:
        if self.resolved is not None and isinstance(module, self.resolved):
            return True
        return any(self.spec in (cls.__name__, _class_path(cls)) for cls in type(module).__mro__)


def _is_bias(name: str) -> bool:
    local = name.rsplit(".", 1)[-1]
    return local == "bias" or local.endswith("_bias")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES) or bool(_NORM_CLASS_NAME.search(type(module).__name__))


def _model_no_weight_decay(model: nn.Module) -> tuple[list[str], list[str]]:
    """Full-name patterns from every submodule's ``no_weight_decay()`` and substrings from
    ``no_weight_decay_keywords()`` (timm's conventions)."""
    names: list[str] = []
    keywords: list[str] = []
    for module_name, module in model.named_modules():
        for method, out, prefixed in (("no_weight_decay", names, True), ("no_weight_decay_keywords", keywords, False)):
            function = getattr(module, method, None)
            if not callable(function):
                continue
            values = function()
            what = f"{type(module).__name__}.{method}() (module {module_name or '<root>'!r})"
            for value in strings(values, f"{what}'s result"):
                out.append(f"{module_name}.{value}" if prefixed and module_name else value)
    return names, keywords


def _assign(
    model: nn.Module, settings: ParamGroupSettings, warn_unused: bool, rule: str | None = None
) -> list[tuple[nn.Parameter, ParamAssignment]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    timm = (rule or settings.rule) == "timm"
    model_names, model_keywords = _model_no_weight_decay(model) if settings.model_no_weight_decay else ([], [])
    if timm:  # timm's create_optimizer_v2: the root module's no_weight_decay() names, exactly
        root = getattr(model, "no_weight_decay", None)
        model_names, model_keywords = (list(strings(root(), "no_weight_decay()")) if callable(root) else []), []
    override_matchers: list[tuple[GroupOverride, list[_TypeMatcher]]] = [
        (override, [_TypeMatcher(spec) for spec in override.modules]) for override in settings.overrides
    ]
    used_overrides: set[int] = set()
    used_patterns: set[int] = set()

    def no_decay_reason(entry: _Entry) -> str | None:
        for index, pattern in enumerate(settings.no_decay):
            if any(_pattern_matches(name, pattern) for name in entry.names):
                used_patterns.add(index)
                return f"no_decay pattern {pattern!r}"
        if timm:
            name = entry.names[0]
            if entry.param.ndim <= 1:
                return f"{entry.param.ndim}-D parameter (timm's rule)"
            if name.endswith(".bias"):
                return "name ends in .bias (timm's rule)"
            return f"root no_weight_decay(): {name!r} (timm's rule)" if name in model_names else None
        for pattern in model_names:
            if any(_pattern_matches(name, pattern) for name in entry.names):
                return f"model's no_weight_decay(): {pattern!r}"
        for keyword in model_keywords:
            if any(keyword in name for name in entry.names):
                return f"model's no_weight_decay_keywords(): {keyword!r}"
        if settings.no_decay_bias and any(_is_bias(name) for name in entry.names):
            return "bias"
        if settings.no_decay_norm:
            norm = next((owner for owner in entry.owners if _is_norm(owner)), None)
            if norm is not None:
                return f"normalization layer ({type(norm).__name__})"
        if settings.no_decay_embeddings and any(isinstance(owner, EMBEDDING_TYPES) for owner in entry.owners):
            return "embedding"
        if settings.no_decay_1d and entry.param.ndim <= 1:
            return f"{entry.param.ndim}-D parameter"
        return None

    def override_reason(entry: _Entry, override: GroupOverride, matchers: list[_TypeMatcher]) -> str | None:
        for pattern in override.patterns:
            if any(_pattern_matches(name, pattern) for name in entry.names):
                return f"override {override.name!r}: pattern {pattern!r}"
        for matcher in matchers:
            if any(matcher(module) for module in entry.ancestors):
                return f"override {override.name!r}: inside a {matcher.spec}"
        return None

    def decide(entry: _Entry) -> tuple[str, str]:
        for index, (override, matchers) in enumerate(override_matchers):
            reason = override_reason(entry, override, matchers)
            if reason is None:
                continue
            used_overrides.add(index)
            if not override.splits:
                return override.name, reason
            no_decay = no_decay_reason(entry)
            return (override.no_decay_name, f"{reason}; {no_decay}") if no_decay else (override.name, reason)
        no_decay = no_decay_reason(entry)
        return (NO_DECAY, no_decay) if no_decay else (DECAY, "default (decay)")

    out = []
    for entry in _parameter_table(model):
        if not entry.param.requires_grad:
            continue
        if isinstance(entry.param, UninitializedParameter):
            raise ValueError(
                f"parameter {entry.names[0]!r} is uninitialized (lazy module): run a forward pass before building "
                "parameter groups"
            )
        group, reason = decide(entry)
        out.append((entry.param, ParamAssignment(tuple(entry.names), group, reason)))
    if warn_unused:
        unused = [f"no_decay pattern {p!r}" for i, p in enumerate(settings.no_decay) if i not in used_patterns]
        unused += [f"override {o.name!r}" for i, o in enumerate(settings.overrides) if i not in used_overrides]
        if unused:
            warnings.warn(
                f"{', '.join(unused)} decided the group of no trainable parameter of {type(model).__name__} (a typo, "
                "or every match was decided by an earlier rule)",
                stacklevel=3,
            )
    return out


def assign_param_groups(
    model: nn.Module, settings: ParamGroupSettings | Mapping[str, Any] | None = None, *, warn_unused: bool = True
) -> list[ParamAssignment]:
    """The group of every trainable parameter of ``model``, in ``named_parameters()`` order, with the reason.

    ``warn_unused`` warns about ``no_decay`` patterns and overrides that match no parameter (likely a typo).
    """
    return [assignment for _, assignment in _assign(model, ParamGroupSettings.coerce(settings), warn_unused)]


def timm_departures(model: nn.Module, settings: ParamGroupSettings) -> list[ParamAssignment]:
    """The assignments of ``settings`` (default rule) that timm's rule would decide the other way (decay vs no
    decay): e.g. a ``heads x 1 x 1`` tensor named ``*_bias`` or a 2-D normalization gain stays undecayed here, and
    timm decays it. Empty with ``rule="timm"``."""
    if settings.rule == "timm":
        return []
    decays = {a.name: _decays(a.group, settings) for _, a in _assign(model, settings, False, rule="timm")}
    return [a for _, a in _assign(model, settings, False) if decays.get(a.name, True) != _decays(a.group, settings)]


def _decays(group: str, settings: ParamGroupSettings) -> bool:
    if group == NO_DECAY or group.endswith(NO_DECAY_SUFFIX):
        return False
    override = next((o for o in settings.overrides if o.name == group), None)
    return override is None or override.weight_decay != 0.0


def build_param_groups(
    model: nn.Module,
    settings: ParamGroupSettings | Mapping[str, Any] | None = None,
    *,
    base_lr: float | None = None,
    warn_unused: bool = True,
) -> list[dict[str, Any]]:
    """``torch.optim`` parameter groups for ``model`` (empty groups left out), each with a ``"name"``.

    ``"no_decay"`` gets ``weight_decay = 0``; overrides get the settings they give (``normalized`` as
    ``group["normalized"]``, on both parts of a splitting override). ``lr_scale`` needs
    ``base_lr`` and becomes ``lr = lr_scale * base_lr``. ValueError when nothing is trainable.
    """
    settings = ParamGroupSettings.coerce(settings)
    assigned = _assign(model, settings, warn_unused)
    if not assigned:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (all frozen or none)")
    options: dict[str, dict[str, float | bool]] = {DECAY: {}, NO_DECAY: {"weight_decay": 0.0}}
    for override in settings.overrides:
        options.setdefault(override.name, override.settings())
        if override.splits:
            options.setdefault(override.no_decay_name, {**override.settings(), "weight_decay": 0.0})
    members: dict[str, list[nn.Parameter]] = {name: [] for name in settings.group_names}
    for param, assignment in assigned:
        members[assignment.group].append(param)
    groups = []
    for name, group_params in members.items():
        if not group_params:
            continue
        group: dict[str, Any] = {"params": group_params, "name": name, **options[name]}
        scale = group.pop("lr_scale", None)
        if scale is not None:
            if base_lr is None:
                raise ValueError(f"group {name!r} has lr_scale={scale}: pass base_lr to resolve it")
            group["lr"] = scale * base_lr
        groups.append(group)
    return groups


def summarize_param_groups(groups: Sequence[Mapping[str, Any]], numel: Callable[[Any], int] | None = None) -> str:
    """One line per group: ``name: N tensors, M parameters (weight_decay=..., lr=...)`` (the initial lr once a
    scheduler has set ``initial_lr``)."""
    lines = []
    for index, group in enumerate(groups):
        tensors = list(group["params"])
        count = sum(numel(p) if numel else p.numel() for p in tensors)
        values = {"weight_decay": group.get("weight_decay"), "lr": group.get("initial_lr", group.get("lr"))}
        extra = ", ".join(f"{key}={value:g}" for key, value in values.items() if value is not None)
        if group.get("normalized") is False:
            extra += ", not normalized"
        name = group.get("name", f"pg{index + 1}")
        lines.append(f"{name}: {len(tensors)} tensors, {count:,} parameters{f' ({extra})' if extra else ''}")
    return "\n".join(lines)
