"""Step time of every variant against torch's fused kernel of its family, measured in the same run.

    python benchmarks/optimizer_step.py                      # 25M float32 params in 50 tensors (the issue's goal)
    python benchmarks/optimizer_step.py --table              # scaling table: 1M, 10M, 100M; float32 and bfloat16
    python benchmarks/optimizer_step.py --sizes 1e6 1e7 1e8  # the same table, float32 only
    python benchmarks/optimizer_step.py --dtype bfloat16 --device cuda
    python benchmarks/optimizer_step.py --memory --sizes 1e7 # state bytes and step temporaries vs torch AdamW
    python benchmarks/optimizer_step.py --variants sgdw proxsgd --momentum 0.9
    python benchmarks/optimizer_step.py --kernels --sizes 4e6  # each rule on torchao / bitsandbytes AdamW kernels

The lr changes every step (as under a scheduler). Rounds interleave the optimizers so that noise from other
processes hits all of them alike, and each row's steps alternate with its baseline's: the reported step time is
the median over steps and the ratio the median of the paired ratios (``--statistic min``: minima, for a loaded
machine). Each row is compared with its baseline: Adam variants with torch's fused
AdamW, SGD variants with torch's fused SGD with the same momentum and Nesterov setting. Goals: <= 1.03x for the
Adam variants that reuse a torch kernel exactly (AdamL2, AdamW in both conventions, ProxAdam, AdamC: issue 26, from
1M parameters up), <= 1.05x for the SGD ones (SGD-L2, and every SGD rule without momentum), <= 1.2x for compiled
kernels (AdamP, cautious AdamW, SGDW/ProxSGD with momentum). The row "torch AdamW fused (a second one)" is the
baseline timed against itself, as a variant is: how far from 1.000x noise alone puts a ratio in this run.
"sgdw via fused SGD + decay" is the alternative to SGDW's compiled kernel (torch's fused SGD, then one
multiplicative decay pass over the weights), measured to justify the choice. Adam moves 7 tensor-elements per
parameter per step (read p, g, m, v; write p, m, v), SGD with momentum 5 (read p, g, b; write p, b), SGD without
momentum 3; GB/s below counts those bytes ("MB/step": 28 bytes/param for float32 Adam, 14 for bfloat16, whose
fused kernels keep the state in the parameter dtype).

Scaling table (every size): "of floor" is the achieved GB/s over the streaming bandwidth of ``x.add_(y)`` on
tensors as large as the parameters (at least 256 MB), measured in the same run just before each table (so both see
the same load); "of base" is the fraction of the baseline's achieved rate, the median over step pairs of
``baseline time / our time`` (goal >= 0.90 for every Adam variant against torch's fused AdamW, AdamP included).
bfloat16 rows exist only where torch's fused AdamW supports the dtype on the device (CPU and CUDA: yes).

Memory (``--memory``): per variant, the bytes of its state tensors (every tensor in ``optimizer.state``, step
counters included) per parameter, against torch AdamW's; and the step's temporaries: on CUDA the peak of
``torch.cuda.max_memory_allocated`` above the allocated bytes before a steady-state step; on CPU the peak of the
running sum of the allocations and frees that torch's allocator reports to ``torch.profiler`` (``profile_memory``)
during one steady-state step (every torch allocation, inductor's buffers included; not Python objects).

To fit large sizes in memory, only the baselines keep their state for the whole run: every other optimizer's state
is dropped after its block of steps and rebuilt by the next round's (untimed) warm-up steps; compiled kernels stay
compiled (their guards check shapes and dtypes, not the tensors).

Muon (``--muon``, ``benchmarks/muon_step.py``): every Muon rule's step against bare ``torch.optim.Muon`` (goal
<= 1.05x), with torch's bfloat16 and with float32 orthogonalization.

Kernels (``--kernels``, ``benchmarks/kernel_step.py``): optimizer-state bytes per parameter and step time of every
scalar Adam rule on every AdamW kernel that runs here (torchao's 8-bit, 4-bit, fp8 and bf16 AdamWs, bitsandbytes'
8-bit AdamWs), against the bare kernel (goal <= 1.05x) and torch's fused float32 AdamW.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lightning_decay.optim.registry import REGISTRY, VARIANTS, variant_names

ADAM_BASELINE = "torch AdamW fused"
#: Variants that run a torch kernel exactly (goal 1.03x for Adam, 1.05x for SGD with momentum); the rest are
#: compiled (1.2x).
# Everything about the variants comes from the registry: which reuse a torch kernel exactly, which are SGD, and
# which rules scale the decay by eta_t (they get wd * lr: the same decay at the initial lr for every convention).
EXACT_REUSE = {name for name, info in REGISTRY.items() if info.kernel == "torch"}
SGD_VARIANTS = set(variant_names("sgd"))
PER_UNIT_LR = {name for name, info in REGISTRY.items() if info.rule.per_unit_lr}
# One variant per compiled Adam optimizer class gets an eager-fallback row (the same kernel serves its conventions).
EAGER_FALLBACK_ROWS = list({info.optimizer: name for name, info in reversed(REGISTRY.items())
                            if info.family == "adam" and info.kernel == "compiled"}.values())


@dataclass
class Row:
    factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    baseline: str
    elements: int  # tensor-elements moved per parameter per step
    goal: float | None = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stream_bandwidth(device: torch.device, elements: int = 64_000_000, repeats: int = 10) -> float:
    """GB/s of ``x.add_(y)`` (3 tensor-passes of float32), the machine's streaming floor (best of ``repeats``)."""
    x = torch.ones(elements, device=device)
    y = torch.ones(elements, device=device)
    x.add_(y)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        x.add_(y)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 3 * 4 * elements / min(times) / 1e9


def fused_adamw_supports(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether torch's fused AdamW runs on ``dtype`` parameters on ``device`` (tried on one small tensor)."""
    try:
        param = torch.zeros(8, dtype=dtype, device=device, requires_grad=True)
        param.grad = torch.zeros_like(param)
        torch.optim.AdamW([param], fused=True).step()
        return True
    except (RuntimeError, ValueError):
        return False


def make_params(total: int, tensors: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    size = total // tensors
    params = []
    for _ in range(tensors):
        p = torch.randn(size, dtype=dtype, device=device) * 0.1
        p.requires_grad_(True)
        p.grad = torch.randn_like(p) * 1e-3
        params.append(p)
    return params


def _sgd_baseline(momentum: float, nesterov: bool) -> str:
    return f"torch SGD fused m={momentum:g}{' nesterov' if nesterov else ''}"


def _torch_sgd(momentum: float, nesterov: bool, fused: bool | None = True) -> Callable:
    return lambda p: torch.optim.SGD(p, lr=1e-3, momentum=momentum, nesterov=nesterov, fused=fused)


class FusedSGDThenDecay:
    """SGDW (torch convention) as torch's fused SGD plus a separate decay pass: ``w <- (1 - lr*wd) w``, then the
    SGD step (the alternative to the compiled kernel; exact, but it reads and writes the weights twice)."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float, nesterov: bool, weight_decay: float):
        self.sgd = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, fused=True)
        self.param_groups = self.sgd.param_groups
        self.weight_decay = weight_decay

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            torch._foreach_mul_(group["params"], 1.0 - group["lr"] * self.weight_decay)
        self.sgd.step()


#: The baseline measured against itself (a second instance, timed as a variant is): the method's own noise floor.
NULL_ROW = "torch AdamW fused (a second one)"


def optimizer_rows(names: list[str], momentum: float) -> dict[str, Row]:
    """Baselines first (each is its own baseline), then every requested variant."""
    rows: dict[str, Row] = {}
    adam = [name for name in names if name not in SGD_VARIANTS]
    sgd = [name for name in names if name in SGD_VARIANTS]
    if adam:
        rows[ADAM_BASELINE] = Row(lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, fused=True),
                                  ADAM_BASELINE, 7)
        rows["torch AdamW default"] = Row(lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2), ADAM_BASELINE, 7)
        rows[NULL_ROW] = Row(lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, fused=True), ADAM_BASELINE, 7)
    if sgd:
        elements = 5 if momentum else 3
        base = _sgd_baseline(momentum, False)
        rows[base] = Row(_torch_sgd(momentum, False), base, elements)
        rows[f"torch SGD default m={momentum:g}"] = Row(_torch_sgd(momentum, False, None), base, elements)
        if momentum and "sgdw" in sgd:
            rows[_sgd_baseline(momentum, True)] = Row(_torch_sgd(momentum, True), _sgd_baseline(momentum, True), 5)
            rows[_sgd_baseline(0.0, False)] = Row(_torch_sgd(0.0, False), _sgd_baseline(0.0, False), 3)

    def variant(name: str, **options) -> Callable:
        cls, fixed = VARIANTS[name]
        weight_decay = (5e-4 if name in SGD_VARIANTS else 1e-2) * (1e-3 if name in PER_UNIT_LR else 1.0)
        return lambda p: cls(p, lr=1e-3, weight_decay=weight_decay, **fixed, **options)

    for name in adam:
        rows[name] = Row(variant(name), ADAM_BASELINE, 7, 1.03 if name in EXACT_REUSE else 1.2)
    for name in EAGER_FALLBACK_ROWS:
        if name in adam:
            rows[f"{name} (eager fallback)"] = Row(variant(name, fused=False), ADAM_BASELINE, 7)
    for name in sgd:
        exact = name in EXACT_REUSE or not momentum
        rows[f"{name} m={momentum:g}"] = Row(
            variant(name, momentum=momentum), _sgd_baseline(momentum, False), 5 if momentum else 3,
            1.05 if exact else 1.2,
        )
    if momentum and "sgdw" in sgd:
        rows[f"sgdw m={momentum:g} nesterov"] = Row(
            variant("sgdw", momentum=momentum, nesterov=True), _sgd_baseline(momentum, True), 5, 1.2
        )
        rows["sgdw m=0"] = Row(variant("sgdw", momentum=0.0), _sgd_baseline(0.0, False), 3, 1.05)
        rows[f"sgdw m={momentum:g} (eager fallback)"] = Row(
            variant("sgdw", momentum=momentum, fused=False), _sgd_baseline(momentum, False), 5
        )
        rows[f"sgdw via fused SGD + decay m={momentum:g}"] = Row(
            lambda p: FusedSGDThenDecay(p, 1e-3, momentum, False, 5e-4), _sgd_baseline(momentum, False), 5
        )
    return rows


def state_bytes(optimizer: Any) -> int:
    """Bytes of every tensor in the optimizer's state (moments, step counters, ...)."""
    state = getattr(optimizer, "sgd", optimizer).state
    return sum(
        value.numel() * value.element_size()
        for entry in state.values()
        for value in entry.values()
        if isinstance(value, torch.Tensor)
    )


def release_state(optimizer: Any) -> None:
    getattr(optimizer, "sgd", optimizer).state.clear()


def step_temporaries(optimizer: Any, device: torch.device) -> int:
    """Peak bytes allocated above the pre-step level during one (steady-state) step; see the module docstring."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        optimizer.step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        optimizer.step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def memory_report(args: argparse.Namespace, total: int, dtype: torch.dtype, device: torch.device) -> None:
    params = make_params(total, args.tensors, dtype, device)
    numel = sum(p.numel() for p in params)
    element_size = params[0].element_size()
    rows = optimizer_rows(args.variants, args.momentum)
    print(f"\nmemory: {numel / 1e6:.0f}M {str(dtype).removeprefix('torch.')} params in {args.tensors} tensors on "
          f"{device} ({element_size} B/param; params and grads not counted)")
    print(f"{'optimizer':<44} {'state B/param':>13} {'vs base':>8} {'step temp B/param':>17}  note")
    reference: dict[str, int] = {}
    for name, row in rows.items():
        optimizer = row.factory(params)
        optimizer.step()  # creates the state (and compiles)
        optimizer.step()
        held = state_bytes(optimizer)
        temporary = step_temporaries(optimizer, device)
        reference.setdefault(row.baseline, held)
        ratio = held / reference[row.baseline] if reference.get(row.baseline) else float("nan")
        buffers = held / (numel * element_size)
        note = f"{buffers:.2f} param-sized buffers"
        if temporary > 0.01 * numel * element_size:
            note += f"; temporaries {temporary / (numel * element_size):.2f} param-sized"
        print(f"{name:<44} {held / numel:13.3f} {ratio:7.3f}x {temporary / numel:17.3f}  {note}")
        del optimizer


def run_size(args: argparse.Namespace, total: int, dtype: torch.dtype, device: torch.device) -> None:
    params = make_params(total, args.tensors, dtype, device)
    numel = sum(p.numel() for p in params)
    element_size = params[0].element_size()
    bandwidth = stream_bandwidth(device, max(64_000_000, numel * element_size // 4))
    rows = optimizer_rows(args.variants, args.momentum)
    baselines = {row.baseline for row in rows.values()}
    optimizers: dict[str, Any] = {}
    first_step: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in rows}
    ratios: dict[str, list[float]] = {name: [] for name in rows}
    paired_baseline: dict[str, list[float]] = {name: [] for name in rows}
    step = 0

    def get(name: str) -> Any:
        if name not in optimizers:
            optimizer = rows[name].factory(params)
            synchronize(device)
            start = time.perf_counter()
            optimizer.step()  # creates the state (and compiles, for the compiled kernels)
            synchronize(device)
            first_step[name] = time.perf_counter() - start
            optimizers[name] = optimizer
        return optimizers[name]

    def timed_step(optimizer: torch.optim.Optimizer) -> float:
        nonlocal step
        step += 1
        for group in optimizer.param_groups:  # a scheduler's work: a new lr every step
            group["lr"] = 1e-3 * (1.0 - 1e-6 * step)
        synchronize(device)
        start = time.perf_counter()
        optimizer.step()
        synchronize(device)
        return time.perf_counter() - start

    # Each row's steps alternate with its baseline's (order alternating too), so that load from other processes,
    # which comes in bursts, hits both sides of each ratio alike; the ratio is a statistic of per-pair ratios.
    for _ in range(args.rounds):
        for name, row in rows.items():
            baseline = get(row.baseline)
            optimizer = get(name)
            for _ in range(args.warmup):
                optimizer.step()
                baseline.step()
            for index in range(args.steps):
                if row.baseline == name:
                    times[name].append(timed_step(optimizer))
                    continue
                if index % 2:
                    ours, theirs = timed_step(optimizer), timed_step(baseline)
                else:
                    theirs, ours = timed_step(baseline), timed_step(optimizer)
                times[name].append(ours)
                paired_baseline[name].append(theirs)
                ratios[name].append(ours / theirs)
            if name not in baselines:
                release_state(optimizer)  # rebuilt by the next round's warm-up steps
    summary = statistics.median if args.statistic == "median" else min
    medians = {name: summary(samples) for name, samples in times.items()}
    moved = 7 * element_size * numel
    dtype_name = str(dtype).removeprefix("torch.")
    print(
        f"\n{numel / 1e6:.0f}M {dtype_name} params in {args.tensors} tensors on {device}; "
        f"Adam moves {7 * element_size} B/param = {moved / 1e6:.0f} MB/step; "
        f"streaming bandwidth (measured now) {bandwidth:.1f} GB/s"
    )
    print(f"{'optimizer':<44} {'ms/step':>8} {'vs base':>8} {'goal':>6} {'':>4} {'of base':>7} {'first ms':>9} "
          f"{'MB/step':>8} {'GB/s':>7} {'of floor':>8}  baseline")
    for name, row in rows.items():
        seconds = medians[name]
        if row.baseline == name:
            ratio = fraction = 1.0
        elif args.statistic == "median":
            ratio = statistics.median(ratios[name])
            fraction = statistics.median(1.0 / r for r in ratios[name])
        else:
            ratio = seconds / min(paired_baseline[name])
            fraction = 1.0 / ratio
        bytes_moved = row.elements * element_size * numel
        rate = bytes_moved / seconds / 1e9
        goal = f"{row.goal:.2f}x" if row.goal else ""
        verdict = ""
        if row.goal:
            adam_goal = row.baseline == ADAM_BASELINE and fraction < 0.9
            verdict = "SLOW" if ratio > row.goal or adam_goal else "ok"
        baseline = "" if row.baseline == name else row.baseline
        print(
            f"{name:<44} {seconds * 1e3:8.2f} {ratio:7.3f}x {goal:>6} {verdict:>4} {fraction:7.0%} "
            f"{first_step[name] * 1e3:9.1f} {bytes_moved / 1e6:8.1f} {rate:7.1f} {rate / bandwidth:7.0%}  {baseline}",
            flush=True,
        )
    optimizers.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=None,
                        help="total parameter counts (default 25M; with --table 1M 10M 100M)")
    parser.add_argument("--table", action="store_true",
                        help="scaling table: --sizes 1e6 1e7 1e8 and --dtype float32 bfloat16 unless given")
    parser.add_argument("--tensors", type=int, default=50)
    parser.add_argument("--dtype", nargs="+", default=None, choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--memory", action="store_true",
                        help="also report state bytes and step temporaries per parameter (vs torch AdamW)")
    parser.add_argument("--memory-only", action="store_true", help="only the memory report")
    parser.add_argument("--kernels", action="store_true",
                        help="each scalar rule on each AdamW kernel that runs here (torchao, bitsandbytes): state "
                             "bytes per parameter, step time vs the bare kernel and torch's fused AdamW")
    parser.add_argument("--kernel-filter", nargs="+", default=None,
                        help="with --kernels: only the kernels whose label contains one of these (e.g. 8bit 4bit)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", default=[n for n in VARIANTS if REGISTRY[n].family != "muon"],
                        choices=[n for n in VARIANTS if REGISTRY[n].family != "muon"])
    parser.add_argument("--muon", action="store_true",
                        help="each Muon rule's step vs bare torch.optim.Muon (benchmarks/muon_step.py)")
    parser.add_argument("--muon-shape", type=int, nargs=2, default=[128, 128], help="--muon: the matrices' shape")
    parser.add_argument("--muon-matrices", type=int, default=16, help="--muon: how many matrices")
    parser.add_argument("--momentum", type=float, default=0.9, help="momentum of the SGD rows (and baselines)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--statistic", choices=["median", "min"], default="median",
                        help="per-round step times -> one number (min is robust when other processes load the CPU)")
    args = parser.parse_args()
    if args.sizes is None:
        args.sizes = [1e6, 1e7, 1e8] if args.table else [25e6]
    if args.dtype is None:
        args.dtype = ["float32", "bfloat16"] if args.table else ["float32"]
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    if args.muon:
        from muon_step import run_muon  # benchmarks/ is the script's folder

        run_muon(tuple(args.muon_shape), args.muon_matrices, args.steps, args.rounds, device)
        return
    if args.kernels:
        from kernel_step import run_kernels  # benchmarks/ is the script's folder

        for size in args.sizes:
            run_kernels(args, int(size), device)
        return
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        if not fused_adamw_supports(dtype, device):
            print(f"\nskipping {dtype_name}: torch's fused AdamW does not support it on {device}")
            continue
        for size in args.sizes:
            if args.memory or args.memory_only:
                memory_report(args, int(size), dtype, device)
            if not args.memory_only:
                run_size(args, int(size), dtype, device)

if __name__ == "__main__":
    main()
