"""The compiled multi-tensor step shared by the optimizers whose rule no torch kernel runs (AdamP, cautious decay,
decoupled SGD with momentum): ``torch.compile`` with one eager fallback, and Adam's per-step scalars.

Per-step scalars (lr, bias corrections) are passed as float64 tensors, never Python floats, so a changing lr does
not recompile the kernel.
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

__all__ = ["CompiledStep", "CompiledKernelOptimizer", "compute_dtype", "adam_step_scalars"]

log = logging.getLogger(__name__)


def compute_dtype(param: Tensor) -> torch.dtype:
    """float64 parameters compute in float64, every other dtype in float32 (bf16/fp16 upcast in the kernel)."""
    return torch.float64 if param.dtype == torch.float64 else torch.float32


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
    """``torch.compile`` of a multi-tensor step, falling back (with one warning) to eager when compiling fails."""

    _warned = False

    def __init__(self, function: Callable[..., None], label: str = "AdamP") -> None:
        self.function = function
        self.label = label
        self.compiled: Callable[..., None] | None = None
        self.failed = False
        self.compile_seconds: float | None = None

    def __call__(self, *args: Any, use_compile: bool) -> None:
        if not use_compile or self.failed or torch.compiler.is_compiling():
            self.function(*args)
            return
        if self.compiled is None:
            self.compiled = torch.compile(self.function, fullgraph=True, dynamic=False)
            started = time.perf_counter()
            try:
                self.compiled(*args)
            except Exception as error:  # no C++ compiler, unsupported platform, ...
                self.failed = True
                if not CompiledStep._warned:
                    CompiledStep._warned = True
                    warnings.warn(
                        f"{self.label}: torch.compile of the fused step failed ({type(error).__name__}: {error}); "
                        "using the slower eager multi-tensor step.",
                        stacklevel=3,
                    )
                self.function(*args)
                return
            self.compile_seconds = time.perf_counter() - started
            log.info("%s: first step (compiling the fused kernel) took %.1f s", self.label, self.compile_seconds)
            return
        self.compiled(*args)


class CompiledKernelOptimizer(DecayOptimizer):
    """A :class:`DecayOptimizer` whose step runs :attr:`_step_function` through a :class:`CompiledStep`."""

    _step_function: Callable[..., None]
    _kernel: CompiledStep

    def _new_kernel(self) -> CompiledStep:
        return CompiledStep(type(self)._step_function, type(self).__name__)

    @property
    def compile_seconds(self) -> float | None:
        """Seconds the first compiled step took (compilation included); None before it or without compiling."""
        return self._kernel.compile_seconds

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if not hasattr(self, "_kernel"):  # unpickled or deep-copied; load_state_dict keeps the compiled kernel
            self._kernel = self._new_kernel()
