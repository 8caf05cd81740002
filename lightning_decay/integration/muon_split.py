"""Muon + Adam in one model: which parameters Muon steps, the optimizer of the others, and the one optimizer of both.

Muon orthogonalizes a matrix's update, which suits the hidden layers' weight matrices only (Jordan et al. 2024):
the input embedding, the output head, biases, normalization gains and convolution filters go to another optimizer
(an Adam variant, with its own rule, lr and weight decay). :func:`route_for_muon` decides, with the reason, per
parameter:

* ``hidden matrix`` (Muon): a 2-D parameter that is not one of the following;
* ``embedding``: the weight of an ``nn.Embedding`` / ``nn.EmbeddingBag``;
* ``output head``: the weight of the model's last ``nn.Linear`` (in module order), which produces the outputs;
* ``input layer``: in a model without an embedding, the first linear or convolution layer (on the raw input);
* ``N-D (not a matrix)``: biases and norms (1-D), convolution filters (3-D and more) - torch's Muon takes matrices;
  with ``flatten_convolutions`` Muon steps every filter but the input layer's as the matrix ``out x (in k k)``.

``muon_include`` / ``muon_exclude`` (name patterns) override the rule. The two parts run as one
:class:`~lightning_decay.optim.combined.CombinedOptimizer`, so Lightning sees one optimizer.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from lightning_decay.integration.construction import NamesOptimizer
from lightning_decay.integration.settings_record import SettingsRecord
from lightning_decay.integration.transposed import is_transposed_layer
from lightning_decay.validation import check_bool

__all__ = ["OthersSettings", "MuonRoute", "route_for_muon", "check_muon_routes", "split_groups", "routing_summary"]

HIDDEN = "hidden matrix"
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class OthersSettings(NamesOptimizer, SettingsRecord):
    """The optimizer of the parameters Muon does not step (``decay.others`` in YAML).

    Args:
        optimizer: a non-Muon variant name (e.g. adamw-paper), or a dotted torch.optim.Optimizer class path.
        lr: its peak learning rate (the schedule's multiplier is shared with Muon's).
        weight_decay: in that variant's own convention; null: its default.
        betas: Adam's (beta1, beta2); null: the optimizer's default.
        eps: Adam's eps; null: the optimizer's default.
        optimizer_kwargs: further constructor arguments, e.g. {fused: false}.
        kernel: run the variant's rule on another AdamW implementation (a class path), as decay.kernel.
        muon_exclude: name patterns (fnmatch) of 2-D parameters to send here instead of to Muon.
        muon_include: name patterns of parameters Muon steps although the rule would not (the output head, an
            embedding); they must be matrices.
        flatten_convolutions: Muon also steps convolution filters (but the input layer's) as out x (in*k*k)
            matrices.
    """

    config_key = "decay.others"
    compact = True

    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    eps: float | None = None
    optimizer_kwargs: Mapping[str, Any] | None = None
    kernel: str | None = None
    muon_exclude: tuple[str, ...] = ()
    muon_include: tuple[str, ...] = ()
    flatten_convolutions: bool = False

    def __post_init__(self) -> None:
        check_bool("flatten_convolutions", self.flatten_convolutions)
        for key in ("muon_exclude", "muon_include"):
            patterns = getattr(self, key)
            patterns = (patterns,) if isinstance(patterns, str) else patterns
            if not all(isinstance(p, str) for p in patterns):
                raise TypeError(f"others.{key} must be a list of name patterns, got {patterns!r}")
            object.__setattr__(self, key, tuple(patterns))
        if self.betas is not None and not isinstance(self.betas, (str, bytes)):
            object.__setattr__(self, "betas", tuple(self.betas))

    @classmethod
    def coerce(cls, value: Any) -> OthersSettings | None:  # type: ignore[override]
        """None stays None (no separate optimizer); otherwise as :meth:`SettingsRecord.coerce`."""
        return None if value is None else super().coerce(value)

    @classmethod
    def _from_other(cls, value: Any) -> OthersSettings:
        raise TypeError(f"others must be a mapping such as {{optimizer: adamw, lr: 0.001}}, got {value!r}")


@dataclass(frozen=True)
class MuonRoute:
    """Where one parameter goes: ``muon`` (True: Muon steps it) and the ``reason``."""

    name: str
    muon: bool
    reason: str


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in patterns)


def route_for_muon(model: nn.Module, others: OthersSettings | None = None) -> list[MuonRoute]:
    """The route of every trainable parameter of ``model`` (in ``named_parameters`` order), with the reason."""
    exclude = others.muon_exclude if others else ()
    include = others.muon_include if others else ()
    flatten = bool(others and others.flatten_convolutions)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) or is_transposed_layer(m)]  # Conv1D too
    head = linears[-1].weight if linears else None
    layers = [m for m in model.modules()
              if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *_EMBEDDINGS)) or is_transposed_layer(m)]
    stem = layers[0].weight if layers and not isinstance(layers[0], _EMBEDDINGS) else None
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, _EMBEDDINGS)}
    routes = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param is stem and not _matches(name, include) and (param.ndim == 2 or flatten):
            routes.append(MuonRoute(name, False, "input layer (the first layer, on the raw input)"))
        elif param.ndim > 2 and flatten and not _matches(name, exclude):
            routes.append(MuonRoute(name, True, "convolution filter (flattened)"))
        elif param.ndim != 2:
            reason = f"{param.ndim}-D (not a matrix: {'bias or norm' if param.ndim <= 1 else 'convolution filter'})"
            if _matches(name, include):
                raise ValueError(f"others.muon_include matches {name!r}, a {param.ndim}-D parameter (Muon: matrices)")
            routes.append(MuonRoute(name, False, reason))
        elif _matches(name, include):
            routes.append(MuonRoute(name, True, "muon_include"))
        elif _matches(name, exclude):
            routes.append(MuonRoute(name, False, "muon_exclude"))
        elif id(param) in embeddings:
            routes.append(MuonRoute(name, False, "embedding"))
        elif param is head:
            routes.append(MuonRoute(name, False, "output head (the last nn.Linear)"))
        else:
            routes.append(MuonRoute(name, True, HIDDEN))
    return routes


def check_muon_routes(model: nn.Module, settings: Any, routes: Sequence[MuonRoute]) -> None:
    """The Muon variant ``settings.optimizer`` can train ``model`` with ``settings.others``: it has a hidden matrix,
    every other parameter has an optimizer (``others``), and ``others`` has something to step. ValueErrors name
    the setting."""
    name = settings.optimizer
    rest = [route.name for route in routes if not route.muon]
    if not any(route.muon for route in routes):
        filters = any(route.reason.endswith("convolution filter)") for route in routes)
        hint = " (its convolution filters go to others unless others.flatten_convolutions is true)" if filters else ""
        raise ValueError(f"optimizer {name!r}: {type(model).__name__} has no hidden weight matrix for Muon{hint}")
    if rest and settings.others is None:
        shown = ", ".join(rest[:4]) + (", ..." if len(rest) > 4 else "")
        raise ValueError(
            f"others: {name!r} steps only hidden weight matrices; {len(rest)} parameters ({shown}) need another "
            "optimizer: set decay.others, e.g. {optimizer: adamw, lr: 0.001}"
        )
    if settings.others is not None and not rest:
        raise ValueError(f"others: every trainable parameter of {type(model).__name__} is a hidden matrix that "
                         f"{name!r} steps; others would step nothing (drop it)")


def split_groups(
    model: nn.Module, muon_groups: list[dict[str, Any]], other_groups: list[dict[str, Any]], routes: list[MuonRoute]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The parameter groups of each part: Muon's routed parameters from ``muon_groups`` (groups built at Muon's lr),
    the others from ``other_groups`` (the same grouping at the other optimizer's lr); names prefixed ``muon/`` and
    ``others/``, empty groups left out."""
    parameters = dict(model.named_parameters())
    to_muon = {id(parameters[route.name]) for route in routes if route.muon}

    def keep(groups: list[dict[str, Any]], muon: bool, prefix: str) -> list[dict[str, Any]]:
        kept = []
        for group in groups:
            params = [p for p in group["params"] if (id(p) in to_muon) == muon]
            if params:
                kept.append({**group, "params": params, "name": f"{prefix}/{group.get('name', len(kept))}"})
        return kept

    return keep(muon_groups, True, "muon"), keep(other_groups, False, "others")


def routing_summary(routes: list[MuonRoute], muon_variant: str, others_variant: str, verbose: bool = False) -> str:
    """Which parameters went where and why: counts by reason (with every name when ``verbose``)."""
    check_bool("verbose", verbose)
    lines = []
    for muon, variant in ((True, muon_variant), (False, others_variant)):
        chosen = [route for route in routes if route.muon == muon]
        reasons: dict[str, list[str]] = {}
        for route in chosen:
            reasons.setdefault(route.reason, []).append(route.name)
        detail = "; ".join(
            f"{reason}: {len(names)}" + (f" ({', '.join(names)})" if verbose or len(names) <= 3 else "")
            for reason, names in reasons.items()
        )
        lines.append(f"{variant} steps {len(chosen)} tensors" + (f" - {detail}" if detail else ""))
    return "\n".join(lines)
