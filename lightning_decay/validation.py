"""Checks of real, integer and boolean settings: one place, one message format, used by the whole package.

Every check returns the value (as ``float`` / ``int`` / ``bool``) or raises ``TypeError`` (wrong type) or
``ValueError`` (out of range), naming the setting — ``name`` plus ``where`` (e.g. ``" (param group 1 'decay')"``).

Learning rates follow torch: ``lr >= 0`` (an lr of 0 freezes a group), a real number or, as torch's optimizers take
it, a 0-dim floating-point tensor (capturable and compiled training loops fill it in place; :func:`check_lr` returns
it as is). Every real setting is at most
:data:`MAX_SETTING`, float32's largest value, since the kernels compute in float32 (an lr of 1e40 would be inf there
and turn every weight it touches into inf in one step).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = [
    "MAX_SETTING",
    "is_real",
    "check_real",
    "check_nonnegative",
    "check_positive",
    "check_optional_real",
    "check_int",
    "check_bool",
    "check_flags",
    "check_lr",
    "check_betas",
    "tensor_value_readable",
]

#: The largest value a real setting (lr, weight decay, eps, ...) may take: float32's largest.
MAX_SETTING = float(torch.finfo(torch.float32).max)


def is_real(value: Any) -> bool:
    """True for a real number that is not a bool (``True`` is an ``int`` to Python, never a setting here)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def check_real(
    name: str,
    value: Any,
    *,
    low: float = -MAX_SETTING,
    low_open: bool = False,
    high: float = MAX_SETTING,
    high_open: bool = False,
    allow_inf: bool = False,
    where: str = "",
) -> float:
    """``value`` as a float in ``[low, high]`` (``low_open`` / ``high_open`` exclude the bound); finite unless
    ``allow_inf`` (then ``+inf`` passes an upper bound)."""
    if type(value) is float and low <= value <= high and not (low_open or high_open):
        return value  # the common case, decided without the number-type checks (NaN and inf fail the comparison)
    if not is_real(value):
        raise TypeError(f"{name}{where} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if allow_inf and value == math.inf:
        return value
    above_low = value > low if low_open else value >= low
    below_high = value < high if high_open else value <= high
    if not (math.isfinite(value) and above_low and below_high):
        lower = f"{'>' if low_open else '>='} {low:g}" if low > -MAX_SETTING else ""
        upper = f"{'<' if high_open else '<='} {high:g}" if high < MAX_SETTING else f"at most {MAX_SETTING:.4g}"
        bound = " and ".join(part for part in (lower, upper) if part)
        raise ValueError(f"{name}{where} must be a {'' if allow_inf else 'finite '}number {bound}, got {value!r}")
    return value


def check_nonnegative(name: str, value: Any, where: str = "") -> float:
    """A finite real ``>= 0`` (weight decay, eps, momentum, ...)."""
    return check_real(name, value, low=0.0, where=where)


def check_positive(name: str, value: Any, where: str = "", allow_inf: bool = False) -> float:
    """A real ``> 0`` (finite unless ``allow_inf``): a divisor, a timescale, a peak lr."""
    return check_real(name, value, low=0.0, low_open=True, allow_inf=allow_inf, where=where)


def check_optional_real(name: str, value: Any, *, positive: bool = False, where: str = "") -> float | None:
    """None, or a finite real ``>= 0`` (``> 0`` when ``positive``)."""
    if value is None:
        return None
    if not is_real(value):
        raise TypeError(f"{name}{where} must be a real number or None, got {type(value).__name__} {value!r}")
    return check_positive(name, value, where) if positive else check_nonnegative(name, value, where)


def tensor_value_readable(tensor: torch.Tensor) -> bool:
    """False where reading a tensor's value is impossible: while torch.compile traces, during a CUDA graph capture
    (no device sync allowed), on the meta device. Checks of a tensor's value are skipped there."""
    if tensor.device.type == "meta" or torch.compiler.is_compiling():
        return False
    return not (tensor.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def check_lr(name: str, value: Any, where: str = "") -> float | torch.Tensor:
    """A learning rate: as torch, a finite real ``>= 0``, or a 0-dim real floating-point tensor holding one (returned
    as is, not copied: schedulers fill it in place). Its value is checked where it can be read
    (:func:`tensor_value_readable`)."""
    if type(value) is float and 0.0 <= value <= MAX_SETTING:
        return value  # the common case (a scheduler's new lr), decided at once (NaN fails the comparison)
    if not isinstance(value, torch.Tensor):
        return check_nonnegative(name, value, where)
    kind = "a real number or a 0-dim real floating-point tensor"
    if value.dim() != 0:
        raise TypeError(f"{name}{where} must be {kind}, got a tensor of shape {tuple(value.shape)}")
    if not torch.is_floating_point(value):
        raise TypeError(f"{name}{where} must be {kind}, got a tensor of dtype {value.dtype}")
    if tensor_value_readable(value):
        check_nonnegative(name, value.item(), where)
    return value


def check_int(name: str, value: Any, *, low: int | None = None, where: str = "") -> int:
    """An ``int`` (not a bool), ``>= low`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}{where} must be an integer, got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name}{where} must be >= {low}, got {value!r}")
    return int(value)


def check_bool(name: str, value: Any, where: str = "", allow_none: bool = False) -> bool | None:
    """``True`` or ``False`` (or None when ``allow_none``); ``1`` and ``"yes"`` are refused."""
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        accepted = "True, False or None" if allow_none else "True or False"
        raise TypeError(f"{name}{where} must be {accepted}, got {type(value).__name__} {value!r}")
    return value


def check_flags(values: Mapping[str, Any], names: Iterable[str], where: str = "", allow_none: bool = False,
                prefix: str = "") -> None:
    """Each of ``names`` in ``values`` (a missing one reads as None) is a :func:`check_bool` flag; errors name
    ``prefix + name``."""
    for name in names:
        check_bool(prefix + name, values.get(name), where, allow_none)


def check_betas(value: Any, where: str = "", name: str = "betas") -> tuple[float, float]:
    """Adam's ``(beta1, beta2)``, each in ``[0, 1)``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name}{where} must be a pair (beta1, beta2), got {value!r}")
    betas = tuple(check_real(f"{name}[{index}]", beta, low=0.0, high=1.0, high_open=True, where=where)
                  for index, beta in enumerate(value))
    return betas  # type: ignore[return-value]
