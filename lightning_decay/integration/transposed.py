"""Transposed layers: weights stored ``in x out`` and applied as ``y = x @ W`` (transformers' ``Conv1D`` in GPT-2
style models), where ``nn.Linear`` stores ``out x in``.

Everything that reads a weight's shape as ``out x in`` must see such a weight transposed: Muon's lr scaling
``sqrt(max(1, out/in))`` and its flattening of filters, Muon's equilibrium prediction, the per-neuron (per output
unit) norms of the monitors. transformers' ``Conv1D`` is recognised by its class path (transformers is not imported);
users declare other layers with name patterns (``decay.groups.transposed``).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence

from torch import nn

__all__ = ["TRANSPOSED_LAYER_CLASSES", "is_transposed_layer", "transposed_weights"]

#: Layer classes (dotted paths) whose ``weight`` is stored ``in x out``; subclasses count too.
TRANSPOSED_LAYER_CLASSES = ("transformers.pytorch_utils.Conv1D",)


def is_transposed_layer(module: nn.Module) -> bool:
    """True for a module of one of :data:`TRANSPOSED_LAYER_CLASSES` (by class path, no import)."""
    return any(f"{cls.__module__}.{cls.__qualname__}" in TRANSPOSED_LAYER_CLASSES for cls in type(module).__mro__)


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def transposed_weights(model: nn.Module, patterns: Sequence[str] = ()) -> dict[str, str]:
    """``{parameter name: reason}`` of the weights of ``model`` stored ``in x out``, in ``named_parameters`` order:
    the ``weight`` of every :func:`is_transposed_layer` module, and the parameters matching ``patterns``
    (``groups.transposed``; a match with fewer than 2 dimensions is a ValueError, a pattern matching nothing a
    warning)."""
    layers = {
        id(module.weight): f"{type(module).__name__} layer (weight stored in x out, y = x @ W)"
        for module in model.modules()
        if is_transposed_layer(module) and isinstance(getattr(module, "weight", None), nn.Parameter)
    }
    found: dict[str, str] = {}
    used: set[str] = set()
    for name, param in model.named_parameters():
        pattern = next((p for p in patterns if _matches(name, p)), None)
        if pattern is not None:
            used.add(pattern)
            if param.ndim < 2:
                raise ValueError(f"groups.transposed: pattern {pattern!r} matches {name!r}, a {param.ndim}-D "
                                 "parameter; only weights of 2 or more dimensions are stored in x out")
            found[name] = f"groups.transposed pattern {pattern!r}"
        elif id(param) in layers:
            found[name] = layers[id(param)]
    unused = [pattern for pattern in patterns if pattern not in used]
    if unused:
        warnings.warn(f"groups.transposed: pattern(s) {unused} match no parameter of {type(model).__name__}",
                      stacklevel=2)
    return found
