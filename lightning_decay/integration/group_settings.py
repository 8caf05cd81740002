"""The settings of the parameter groups (``decay.groups``): which rules decide decay, named overrides, transposed
layers. Plain, validated data; :mod:`lightning_decay.integration.param_groups` applies them to a model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lightning_decay.integration.settings_record import SettingsRecord
from lightning_decay.validation import check_bool, check_flags, check_optional_real

__all__ = ["DECAY", "NO_DECAY", "NO_DECAY_SUFFIX", "GROUP_RULES", "GroupOverride", "ParamGroupSettings"]

#: Name of the group that gets the optimizer's weight decay.
DECAY = "decay"
#: Name of the group with ``weight_decay = 0``.
NO_DECAY = "no_decay"
#: Suffix of the no-decay part of an override that sets no ``weight_decay`` (``"head"`` -> ``"head_no_decay"``).
NO_DECAY_SUFFIX = "_no_decay"
#: The no-decay rules ``ParamGroupSettings.rule`` chooses from: this package's (biases by name, normalization layers,
#: ``ndim <= 1``, every submodule's ``no_weight_decay()``) or timm's exactly (``ndim <= 1``, a name ending in
#: ``.bias``, the names the root module's ``no_weight_decay()`` lists).
GROUP_RULES = ("default", "timm")


def strings(value: Any, what: str) -> tuple[str, ...]:
    """A tuple of non-empty strings from a string, a class or a sequence of them (classes become dotted paths)."""
    if isinstance(value, (str, type)):
        value = (value,)
    if not isinstance(value, Iterable):
        raise TypeError(f"{what} must be a list of strings, got {type(value).__name__} {value!r}")
    items = []
    for item in value:
        if isinstance(item, type):
            item = f"{item.__module__}.{item.__qualname__}"
        if not isinstance(item, str) or not item.strip():
            raise TypeError(f"{what} must hold non-empty strings, got {item!r}")
        items.append(item.strip())
    return tuple(items)


@dataclass(frozen=True)
class GroupOverride(SettingsRecord):
    """A named parameter group for the parameters matched by name ``patterns`` or by ``modules`` type.

    The names "decay" / "no_decay" add the matches to the built-in groups and then take no settings.

    Args:
        name: the group's name (LearningRateMonitor shows lr-<Optimizer>/<name>).
        patterns: fnmatch patterns of parameter names (a module path matches everything under it).
        modules: module types by class or dotted class path; their parameters join the group.
        weight_decay: the group's weight decay, absolute, in the optimizer's convention (0: none); null keeps the
            optimizer's.
        lr: the group's lr, absolute (>= 0); null keeps the optimizer's.
        lr_scale: the group's lr as a multiple of the base lr (instead of lr).
        normalized: AdamC only: false for layers whose output no normalization follows (their decay keeps AdamW's
            lr_t * wd); null leaves the optimizer's default.
    """

    config_key = "decay.groups.overrides"

    name: str
    patterns: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    weight_decay: float | None = None
    lr: float | None = None
    lr_scale: float | None = None
    normalized: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TypeError(f"GroupOverride.name must be a non-empty string, got {self.name!r}")
        where = f"GroupOverride {self.name!r}"
        object.__setattr__(self, "name", self.name.strip())
        object.__setattr__(self, "patterns", strings(self.patterns, f"{where}: patterns"))
        object.__setattr__(self, "modules", strings(self.modules, f"{where}: modules"))
        object.__setattr__(self, "weight_decay", check_optional_real(f"{where}: weight_decay", self.weight_decay))
        object.__setattr__(self, "lr", check_optional_real(f"{where}: lr", self.lr))  # lr >= 0, as torch
        object.__setattr__(self, "lr_scale", check_optional_real(f"{where}: lr_scale", self.lr_scale, positive=True))
        check_bool(f"{where}: normalized", self.normalized, allow_none=True)
        if not self.patterns and not self.modules:
            raise ValueError(f"{where}: give patterns or modules (it matches nothing)")
        if self.lr is not None and self.lr_scale is not None:
            raise ValueError(f"{where}: lr and lr_scale are exclusive, got lr={self.lr} and lr_scale={self.lr_scale}")
        if self.name in (DECAY, NO_DECAY) and self.settings():
            raise ValueError(
                f"{where}: the built-in group {self.name!r} takes no weight_decay/lr/lr_scale/normalized; give the "
                f"override another name to change them (got {self.settings()})"
            )

    @property
    def splits(self) -> bool:
        """True when the matches are split by the no-decay rules into ``name`` and ``name + "_no_decay"``
        (overrides that set no ``weight_decay``, other than the built-in group names)."""
        return self.weight_decay is None and self.name not in (DECAY, NO_DECAY)

    @property
    def no_decay_name(self) -> str:
        """Name of the no-decay part of a splitting override: ``name + "_no_decay"``."""
        return f"{self.name}{NO_DECAY_SUFFIX}"

    def settings(self) -> dict[str, float | bool]:
        """The group settings this override sets (``weight_decay``, ``lr``, ``lr_scale``, ``normalized``), without
        the ``None``s."""
        values = {"weight_decay": self.weight_decay, "lr": self.lr, "lr_scale": self.lr_scale}
        values["normalized"] = self.normalized
        return {key: value for key, value in values.items() if value is not None}

    @classmethod
    def _from_other(cls, value: Any) -> GroupOverride:
        raise TypeError(f"an override must be a GroupOverride or a mapping, got {type(value).__name__}")


@dataclass(frozen=True)
class ParamGroupSettings(SettingsRecord):
    """How the parameters are split into groups (model.decay.groups). For each parameter the first matching rule
    decides: overrides, no_decay patterns, the model's no_weight_decay(), the default no-decay set, else "decay".
    With every rule off there is one "decay" group.

    Args:
        no_decay_bias: biases (named bias or *_bias) get no weight decay.
        no_decay_norm: parameters of normalization layers (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm,
            any class named ...Norm) get no weight decay.
        no_decay_1d: every other parameter with ndim <= 1 gets no weight decay.
        no_decay_embeddings: nn.Embedding / nn.EmbeddingBag weights get no weight decay.
        no_decay: more parameters without decay, by fnmatch name pattern (a module path matches everything under
            it).
        overrides: named groups (name, patterns or modules, weight_decay / lr / lr_scale / normalized).
        model_no_weight_decay: honour the model's no_weight_decay() / no_weight_decay_keywords() (timm).
        rule: the no-decay rule: default (the rules above) or timm (exactly timm's: ndim <= 1, a name ending in
            .bias, or a name the root module's no_weight_decay() lists; no_decay patterns and overrides still
            apply first). The startup summary lists the tensors where the default departs from timm's.
        transposed: name patterns of weights stored in x out and applied as x @ W (transformers' Conv1D is
            recognised by class): Muon's shape scaling and filter flattening, its equilibrium prediction and the
            per-neuron norms see them as the out x in map they are.
    """

    config_key = "decay.groups"

    no_decay_bias: bool = True
    no_decay_norm: bool = True
    no_decay_1d: bool = True
    no_decay_embeddings: bool = False
    no_decay: tuple[str, ...] = ()
    overrides: tuple[GroupOverride, ...] = ()
    model_no_weight_decay: bool = True
    rule: str = "default"
    transposed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_flags(vars(self), ("no_decay_bias", "no_decay_norm", "no_decay_1d", "no_decay_embeddings",
                                 "model_no_weight_decay"), prefix="groups.")
        if self.rule not in GROUP_RULES:
            raise ValueError(f"groups.rule must be one of {list(GROUP_RULES)}, got {self.rule!r}")
        object.__setattr__(self, "no_decay", strings(self.no_decay, "ParamGroupSettings.no_decay"))
        object.__setattr__(self, "transposed", strings(self.transposed, "groups.transposed"))
        overrides = self.overrides
        if isinstance(overrides, (GroupOverride, Mapping)):
            overrides = (overrides,)
        overrides = tuple(GroupOverride.coerce(item) for item in overrides)
        object.__setattr__(self, "overrides", overrides)
        seen: dict[str, dict[str, float | bool]] = {}
        for override in overrides:
            if override.name in seen and seen[override.name] != override.settings():
                raise ValueError(
                    f"ParamGroupSettings.overrides: group {override.name!r} is given twice with different settings "
                    f"({seen[override.name]} and {override.settings()})"
                )
            seen[override.name] = override.settings()
        names = [override.name for override in overrides]
        for override in overrides:
            if override.splits and override.no_decay_name in names:
                raise ValueError(
                    f"ParamGroupSettings.overrides: {override.no_decay_name!r} is the no-decay part of override "
                    f"{override.name!r} (which sets no weight_decay); use another name"
                )

    @property
    def group_names(self) -> list[str]:
        """Group names in the order the groups are built: ``decay``, ``no_decay``, then the overrides'."""
        names = [DECAY, NO_DECAY]
        for override in self.overrides:
            for name in (override.name, override.no_decay_name) if override.splits else (override.name,):
                if name not in names:
                    names.append(name)
        return names


