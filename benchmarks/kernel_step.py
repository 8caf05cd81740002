"""``python benchmarks/optimizer_step.py --kernels``: every scalar Adam rule on every AdamW kernel that runs here.

For each kernel (torch's fused AdamW; torchao's ``_AdamW`` in float32 and with bf16 stochastic rounding,
``AdamW8bit``, ``AdamW4bit``, ``AdamWFp8``; bitsandbytes' ``AdamW8bit``, ``PagedAdamW8bit`` and 32-bit ``AdamW``) the
bare kernel and each rule on it (``lightning_decay.on_kernel(kernel, rule)``): the optimizer-state bytes per
parameter (inner tensors of quantized states: codes, block scales, quantization maps; step counters), the step
time, the ratio to the bare kernel (goal <= 1.05x: a rule adds only its scalar setup) and to torch's fused float32
AdamW. A kernel that does not import or does not step on the device is skipped with the reason.

Steps of each rule alternate with its bare kernel's (order alternating), the lr changes every step (a scheduler's
work), and the ratio to the kernel is the median of the paired ratios (``--statistic min``: the ratio of the minima,
for a loaded machine); "vs fused f32" is the same statistic's ratio to torch's fused float32 AdamW, timed in the same
rounds. "first ms" is the first step (torchao compiles its step:
the bare kernel and the rules, which get the weight decay as a tensor, compile once each).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from lightning_decay.optim.kernels import on_kernel
from lightning_decay.optim.registry import REGISTRY

#: (label, class path, constructor options, parameter dtype).
KERNELS = [
    ("torch AdamW fused", "torch.optim.AdamW", {"fused": True}, torch.float32),
    ("torchao _AdamW f32", "torchao.optim._AdamW", {}, torch.float32),
    ("torchao _AdamW bf16 SR", "torchao.optim._AdamW", {"bf16_stochastic_round": True}, torch.bfloat16),
    ("torchao AdamW8bit", "torchao.optim.AdamW8bit", {}, torch.float32),
    ("torchao AdamW4bit", "torchao.optim.AdamW4bit", {}, torch.float32),
    ("torchao AdamWFp8", "torchao.optim.AdamWFp8", {}, torch.float32),
    ("bnb AdamW8bit", "bitsandbytes.optim.AdamW8bit", {}, torch.float32),
    ("bnb PagedAdamW8bit", "bitsandbytes.optim.PagedAdamW8bit", {}, torch.float32),
    ("bnb AdamW 32-bit", "bitsandbytes.optim.AdamW", {}, torch.float32),
]
BASELINE = "torch AdamW fused"
#: The scalar decoupled Adam rules (the ones an AdamW kernel runs), from the registry.
RULES = [name for name, info in REGISTRY.items() if info.family == "adam" and info.decoupled and not info.elementwise]


def tensor_bytes(value: Any) -> int:
    """Bytes a state value holds: a plain tensor's storage; a tensor subclass's inner tensors (its
    ``__tensor_flatten__``: torchao's codes, scales and quantization map), not its float appearance."""
    if not isinstance(value, torch.Tensor):
        return 0
    if type(value) not in (torch.Tensor, torch.nn.Parameter) and hasattr(type(value), "__tensor_flatten__"):
        names, _ = value.__tensor_flatten__()
        return sum(tensor_bytes(getattr(value, name)) for name in names)
    return value.numel() * value.element_size()


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(tensor_bytes(value) for entry in optimizer.state.values() for value in entry.values())


def _kernel_class(path: str) -> type[torch.optim.Optimizer]:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """A scheduler's work: torchao keeps the lr as a tensor (filled in place), the others as a float."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def available_kernels(
    only: list[str] | None = None,
) -> tuple[list[tuple[str, type, dict[str, Any], torch.dtype]], list[str]]:
    """The kernels that import (those whose label contains one of ``only``, if given; always the baseline), and why
    the others do not."""
    found, skipped = [], []
    for label, path, options, dtype in KERNELS:
        if only and label != BASELINE and not any(part in label for part in only):
            continue
        try:
            found.append((label, _kernel_class(path), options, dtype))
        except (ImportError, AttributeError) as error:
            skipped.append(f"{label} ({path}): {type(error).__name__}: {error}")
    return found, skipped


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:100]}" if text else type(error).__name__


def run_kernels(args: argparse.Namespace, total: int, device: torch.device) -> None:
    """The table for ``total`` parameters in ``args.tensors`` tensors (see the module docstring)."""
    kernels, skipped = available_kernels(args.kernel_filter)
    size = max(4096, total // args.tensors // 4096 * 4096)  # whole quantization blocks (torchao: 128, 256 values)
    params_of: dict[torch.dtype, list[torch.Tensor]] = {}

    def params(dtype: torch.dtype) -> list[torch.Tensor]:
        if dtype not in params_of:
            generator = torch.Generator(device=device).manual_seed(0)
            made = []
            for _ in range(args.tensors):
                p = (torch.randn(size, device=device, generator=generator) * 0.1).to(dtype).requires_grad_()
                p.grad = (torch.randn(size, device=device, generator=generator) * 1e-3).to(dtype)
                made.append(p)
            params_of[dtype] = made
        return params_of[dtype]

    rows: dict[str, tuple[str, Callable[[], torch.optim.Optimizer]]] = {}  # name -> (bare kernel row, factory)
    for label, kernel, options, dtype in kernels:
        rows[label] = (label, lambda k=kernel, o=options, d=dtype: k(params(d), lr=1e-3, weight_decay=1e-2, **o))
        for rule in RULES:
            weight_decay = 1e-2 * (1e-3 if REGISTRY[rule].rule.per_unit_lr else 1.0)  # the same decay at alpha
            rows[f"{label} + {rule}"] = (label, lambda k=kernel, o=options, d=dtype, r=rule, w=weight_decay: on_kernel(
                k, r)(params(d), lr=1e-3, weight_decay=w, **o))
    optimizers: dict[str, torch.optim.Optimizer] = {}
    first: dict[str, float] = {}
    memory: dict[str, int] = {}
    times: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    paired: dict[str, list[float]] = {}
    step = 0

    def get(name: str) -> torch.optim.Optimizer:
        if name not in optimizers:
            optimizer = rows[name][1]()
            start = time.perf_counter()
            optimizer.step()  # creates the state (and compiles torchao's step)
            _synchronize(device)
            first[name] = time.perf_counter() - start
            optimizer.step()
            memory[name] = state_bytes(optimizer)
            optimizers[name] = optimizer
        return optimizers[name]

    def timed(optimizer: torch.optim.Optimizer) -> float:
        nonlocal step
        step += 1
        _set_lr(optimizer, 1e-3 * (1.0 - 1e-6 * step))
        _synchronize(device)
        start = time.perf_counter()
        optimizer.step()
        _synchronize(device)
        return time.perf_counter() - start

    for name in list(rows):  # first steps (state, compiles); a kernel that fails on this device is skipped
        if name not in rows:
            continue
        try:
            get(name)
        except Exception as error:  # noqa: BLE001 - any failure means: not on this machine
            bare_name = rows[name][0]
            skipped.append(f"{name}: {_reason(error)}")
            for other in [other for other, (bare, _) in rows.items() if bare == bare_name]:
                rows.pop(other)
                optimizers.pop(other, None)
    times = {name: [] for name in rows}
    ratios = {name: [] for name in rows}
    paired = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, (bare_name, _) in rows.items():
            ours, bare = get(name), get(bare_name)
            for index in range(args.steps):
                if name == bare_name:
                    times[name].append(timed(ours))
                    continue
                if index % 2:
                    mine, theirs = timed(ours), timed(bare)
                else:
                    theirs, mine = timed(bare), timed(ours)
                times[name].append(mine)
                paired[name].append(theirs)
                ratios[name].append(mine / theirs)
    numel = size * args.tensors
    summary = statistics.median if args.statistic == "median" else min
    medians = {name: summary(samples) for name, samples in times.items()}
    print(f"\nkernels: {numel / 1e6:.1f}M params in {args.tensors} tensors on {device}; torch fused float32 AdamW "
          f"holds {memory.get(BASELINE, 0) / numel:.2f} B/param of state")
    print(f"{'kernel + rule':<40} {'state B/param':>13} {'ms/step':>8} {'vs kernel':>9} {'goal':>6} {'':>4} "
          f"{'vs fused f32':>12} {'first ms':>9}")
    for name, (bare_name, _) in rows.items():
        if name == bare_name:
            ratio = 1.0
        elif args.statistic == "median":
            ratio = statistics.median(ratios[name])
        else:  # minima: robust when other processes load the machine
            ratio = min(times[name]) / min(paired[name])
        goal, verdict = ("", "") if name == bare_name else ("1.05x", "ok" if ratio <= 1.05 else "SLOW")
        versus = medians[name] / medians[BASELINE] if BASELINE in medians else float("nan")
        print(f"{name:<40} {memory[name] / numel:13.3f} {medians[name] * 1e3:8.2f} {ratio:8.3f}x {goal:>6} "
              f"{verdict:>4} {versus:11.2f}x {first[name] * 1e3:9.1f}", flush=True)
    for reason in skipped:
        print(f"skipped {reason}")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
