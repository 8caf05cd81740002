"""The compiled multi-tensor step shared by the optimizers whose rule no torch kernel runs (AdamP, cautious decay,
decoupled SGD with momentum): ``torch.compile`` with one eager fallback, and Adam's per-step scalars.

Per-step scalars (lr, bias corrections) are passed as float64 tensors, never Python floats, so a changing lr does
not recompile the kernel; a tensor lr enters them by tensor operations (:func:`scalar_table`), unread.

A complex parameter is stepped as its real pair, as torch's Adam does: the optimizers hand the kernel
``torch.view_as_real`` views of the parameter, its gradient and its state (:func:`real_view`), so the state stays
torch's (complex buffers) and real parameters take no extra work.

A step happens once or not at all: the first compiled call (the one that compiles, and may fail) saves what the
step mutates and restores it if the call fails, before the eager step runs instead.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_decay.optim.base import DecayOptimizer

__all__ = [
    "CompiledStep",
    "CompiledKernelOptimizer",
    "compute_dtype",
    "compute_dtype_of",
    "adam_step_scalars",
    "real_view",
    "scalar_table",
    "announce_compiling_step",
]

log = logging.getLogger(__name__)

#: The kernels whose compiling first step was announced (:func:`announce_compiling_step`): once per process.
_ANNOUNCED: set[Any] = set()


def announce_compiling_step(label: str, kernel: Any) -> None:
    """Say, once per ``kernel`` and process, that this first step compiles and that the steps after it are fast.

    A WARNING on this module's logger (Python shows it on stderr without any logging setup, and so does Lightning):
    a first step that takes seconds (a compiled multi-tensor step on a CPU: ~15 s) or minutes (torchao's 8-bit
    AdamW on a CPU: ~78 s) should not look like a hang.
    """
    if kernel in _ANNOUNCED:
        return
    _ANNOUNCED.add(kernel)
    log.warning(
        "%s: the first step compiles its kernel with torch.compile (seconds to minutes, once per process); "
        "the steps after it run the compiled kernel and are fast",
        label,
    )


def compute_dtype(param: Tensor) -> torch.dtype:
    """float64 parameters compute in float64, every other dtype in float32 (bf16/fp16 upcast in the kernel); a
    complex one as its real pairs (complex128: float64)."""
    return compute_dtype_of(param.dtype)


_FLOAT64_PARAMETERS = {torch.float64: torch.float64, torch.complex128: torch.float64}


def compute_dtype_of(dtype: torch.dtype) -> torch.dtype:
    """:func:`compute_dtype` of a parameter dtype."""
    return _FLOAT64_PARAMETERS.get(dtype, torch.float32)


def real_view(tensor: Tensor) -> Tensor:
    """A complex tensor as its real pairs (a view: in-place updates reach it; a conjugate bit is resolved first,
    as for a gradient); a real tensor as it is. A parameter's view requires grad as the parameter does, also inside
    the optimizer's ``no_grad`` step, so that the compiled kernel sees the tensors of a real parameter (one graph
    for real and complex parameters)."""
    if not tensor.is_complex():
        return tensor
    with torch.set_grad_enabled(tensor.requires_grad):
        return torch.view_as_real(tensor.resolve_conj())


def scalar_table(rows: list[list[Any]], device: torch.device) -> Tensor:
    """The float64 ``(groups, columns)`` table of per-group scalars on ``device``. Rows of Python floats are one
    ``torch.tensor`` call; a tensor entry (from a tensor lr) is stacked in by tensor operations, never read (no
    device sync, no graph break where the step is traced)."""
    if not any(isinstance(value, Tensor) for row in rows for value in row):
        return torch.tensor(rows, dtype=torch.float64, device=device)
    return torch.stack([
        torch.stack([torch.as_tensor(value, dtype=torch.float64, device=device).reshape(()) for value in row])
        for row in rows
    ])


def adam_step_scalars(steps: list[Tensor], group_index: Tensor, hyperparameters: Tensor, dtype: torch.dtype) -> Tensor:
    """Advance the step counters and return each parameter's scalars as one ``(n, 7)`` tensor of ``dtype``.

    ``hyperparameters`` holds one float64 row per group: ``lr_t``, the rule's decay scalar, ``beta1``, ``beta2``,
    ``eps``; ``group_index[i]`` is tensor i's group. Columns: ``lr_t / (1 - beta1^t)``, ``sqrt(1 - beta2^t)``,
    ``lr_t``, decay scalar, ``beta1``, ``beta2``, ``eps``. Computed in float64 once per tensor, at the top of the
    (compiled) step, so the elementwise loops only load them.
    """
    torch._foreach_add_(steps, 1)
    step = torch.stack(steps).to(torch.float64)
    lr, decay, beta1, beta2, eps = hyperparameters[group_index].unbind(1)
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step).sqrt()
    return torch.stack([step_size, bias_correction2_sqrt, lr, decay, beta1, beta2, eps], dim=1).to(dtype)


class CompiledStep:
    """``torch.compile`` of a multi-tensor step, falling back (with one warning per kernel) to eager when compiling
    or the first compiled call fails.

    ``mutated`` are the positions of the tensor-list arguments the step updates in place. The first compiled call
    compiles the kernel and is the one that may fail (no C++ compiler, an unsupported platform, a kernel failing at
    run time): it runs on saved copies of those tensors' values, which are written back if it raises, so the eager
    step that follows runs the step once (an extra copy of the mutated state, on the first step only). Later calls
    run the compiled kernel unguarded: no copies, no overhead.
    """

    #: The kernels (step functions) whose compile failure was reported: one warning per kernel, not per process.
    _warned: set[Callable[..., None]] = set()

    def __init__(self, function: Callable[..., None], label: str = "AdamP", mutated: tuple[int, ...] = ()) -> None:
        self.function = function
        self.label = label
        self.mutated = mutated
        self.compiled: Callable[..., None] | None = None
        self.failed = False
        self.compile_seconds: float | None = None

    def __call__(self, *args: Any, use_compile: bool) -> None:
        if not use_compile or self.failed or torch.compiler.is_compiling():
            self.function(*args)
            return
        if self.compiled is None:
            self._first_call(args)
            return
        self.compiled(*args)

    def _first_call(self, args: tuple[Any, ...]) -> None:
        """Compile and run, or undo the attempt and run eagerly (warning once for this kernel)."""
        saved = [(tensor, tensor.clone()) for index in self.mutated for tensor in args[index]]
        announce_compiling_step(self.label, self.function)
        self.compiled = torch.compile(self.function, fullgraph=True, dynamic=False)
        started = time.perf_counter()
        try:
            self.compiled(*args)
        except Exception as error:  # no C++ compiler, unsupported platform, a failing kernel, ...
            for tensor, value in saved:  # whatever the attempt changed: the eager step starts where it did
                tensor.copy_(value)
            del saved
            self.failed = True
            if self.function not in CompiledStep._warned:
                CompiledStep._warned.add(self.function)
                warnings.warn(
                    f"{self.label}: torch.compile of the fused step failed ({type(error).__name__}: {error}); "
                    "using the slower eager multi-tensor step.",
                    stacklevel=4,
                )
            self.function(*args)
            return
        self.compile_seconds = time.perf_counter() - started
        log.info("%s: first step (compiling the fused kernel) took %.1f s", self.label, self.compile_seconds)


class CompiledKernelOptimizer(DecayOptimizer):
    """A :class:`DecayOptimizer` whose step runs :attr:`_step_function` through a :class:`CompiledStep`."""

    _step_function: Callable[..., None]
    #: Positions of the tensor-list arguments :attr:`_step_function` updates in place (weights, state).
    _mutated_arguments: tuple[int, ...]
    _kernel: CompiledStep

    def _new_kernel(self) -> CompiledStep:
        return CompiledStep(type(self)._step_function, type(self).__name__, type(self)._mutated_arguments)

    @property
    def compile_seconds(self) -> float | None:
        """Seconds the first compiled step took (compilation included); None before it or without compiling."""
        return self._kernel.compile_seconds

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if not hasattr(self, "_kernel"):  # unpickled or deep-copied; load_state_dict keeps the compiled kernel
            self._kernel = self._new_kernel()
