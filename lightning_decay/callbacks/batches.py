"""The fixed batch of ``ScaleInvarianceMonitor``'s check: cut from a training batch, kept in a checkpoint that
``torch.load(weights_only=True)`` reads, and moved back to the module's device after a resume."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["NotPortableError", "first_samples", "portable_batch", "batch_to_device"]

#: Leaf types of a fixed check batch that a ``weights_only`` checkpoint holds as they are.
_PORTABLE_LEAVES = (bool, int, float, complex, str, bytes, type(None))


class NotPortableError(Exception):
    """A fixed check batch holds a value ``torch.load(weights_only=True)`` cannot read back (named in the message)."""


def first_samples(batch: Any, size: int | None) -> Any:
    """A detached copy of ``batch`` with every tensor that has a batch dimension cut to its first ``size`` samples
    (all of them when ``size`` is None); mappings, named tuples, lists and tuples keep their type."""
    if isinstance(batch, Tensor):
        batch = batch.detach()
        return (batch[:size] if size and batch.ndim else batch).clone()
    if isinstance(batch, Mapping):
        return type(batch)({k: first_samples(v, size) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*[first_samples(v, size) for v in batch])
    if isinstance(batch, list | tuple):
        return type(batch)(first_samples(v, size) for v in batch)
    return copy.copy(batch)


def portable_batch(value: Any) -> Any:
    """``value`` with every tensor copied to the CPU, for a checkpoint that ``torch.load(weights_only=True)`` reads:
    plain tensors, numbers, strings and None in lists, tuples and dicts. Raises :class:`NotPortableError` for
    anything else (named tuples, dataclasses, tensor subclasses, ...), naming it."""
    kind = type(value)
    if kind is Tensor:
        return value.detach().to("cpu", copy=True)
    if kind in _PORTABLE_LEAVES:
        return value
    if kind in (list, tuple):
        return kind(portable_batch(v) for v in value)
    if kind in (dict, OrderedDict) and all(type(k) in _PORTABLE_LEAVES for k in value):
        return kind((k, portable_batch(v)) for k, v in value.items())
    raise NotPortableError(f"{kind.__module__}.{kind.__qualname__}")


def batch_to_device(value: Any, device: torch.device) -> Any:
    """A batch from :func:`portable_batch` with its tensors on ``device`` (the same objects where already there)."""
    kind = type(value)
    if kind is Tensor:
        return value.to(device)
    if kind in (list, tuple):
        return kind(batch_to_device(v, device) for v in value)
    if kind in (dict, OrderedDict):
        return kind((k, batch_to_device(v, device)) for k, v in value.items())
    return value
