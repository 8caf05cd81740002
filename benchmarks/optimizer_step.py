"""Step time of every variant against torch's AdamW, measured in the same run.

    python benchmarks/optimizer_step.py                      # 25M float32 params in 50 tensors (the issue's goal)
    python benchmarks/optimizer_step.py --sizes 1e6 1e7 1e8  # scaling table
    python benchmarks/optimizer_step.py --dtype bfloat16 --device cuda

The lr changes every step (as under a scheduler). Rounds interleave the optimizers so that noise from other
processes hits all of them alike; the reported step time is the median over rounds. Goals (issue 2): <= 1.05x
torch fused AdamW for AdamL2, AdamW (both conventions) and ProxAdam, <= 1.2x for AdamP. Adam moves 28 bytes per
float32 parameter per step (read p, g, m, v; write p, m, v); GB/s below counts those bytes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lightning_decay import VARIANTS

BYTES_PER_ELEMENT_TOUCHED = 7  # Adam touches 7 tensor-elements per parameter per step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stream_bandwidth(device: torch.device, elements: int = 50_000_000, repeats: int = 10) -> float:
    """GB/s of ``x.add_(y)`` (3 tensor-passes of float32), the machine's streaming floor."""
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


def make_params(total: int, tensors: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    size = total // tensors
    params = []
    for _ in range(tensors):
        p = torch.randn(size, dtype=dtype, device=device) * 0.1
        p.requires_grad_(True)
        p.grad = torch.randn_like(p) * 1e-3
        params.append(p)
    return params


def optimizer_factories(names: list[str]) -> dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]:
    factories: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
        "torch AdamW fused": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, fused=True),
        "torch AdamW default": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2),
    }
    for name in names:
        cls, fixed = VARIANTS[name]
        weight_decay = 1e-5 if name in {"adamw-paper", "proxadam"} else 1e-2

        def factory(p, cls=cls, fixed=fixed, weight_decay=weight_decay):
            return cls(p, lr=1e-3, weight_decay=weight_decay, **fixed)

        factories[name] = factory
    if "adamp" in names:
        factories["adamp (eager fallback)"] = lambda p: VARIANTS["adamp"][0](p, lr=1e-3, weight_decay=1e-2, fused=False)
    return factories


def run_size(args: argparse.Namespace, total: int, device: torch.device, bandwidth: float) -> None:
    dtype = getattr(torch, args.dtype)
    params = make_params(total, args.tensors, dtype, device)
    numel = sum(p.numel() for p in params)
    bytes_per_step = BYTES_PER_ELEMENT_TOUCHED * params[0].element_size() * numel
    optimizers: dict[str, torch.optim.Optimizer] = {}
    first_step: dict[str, float] = {}
    for name, factory in optimizer_factories(args.variants).items():
        optimizer = factory(params)
        synchronize(device)
        start = time.perf_counter()
        optimizer.step()  # creates the state (and compiles, for AdamP)
        synchronize(device)
        first_step[name] = time.perf_counter() - start
        optimizers[name] = optimizer
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    step = 0
    for _ in range(args.rounds):
        for name, optimizer in optimizers.items():
            for _ in range(args.warmup):
                optimizer.step()
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step += 1
                for group in optimizer.param_groups:  # a scheduler's work: a new lr every step
                    group["lr"] = 1e-3 * (1.0 - 1e-6 * step)
                optimizer.step()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / args.steps)
    baseline = statistics.median(times["torch AdamW fused"])
    default = statistics.median(times["torch AdamW default"])
    print(
        f"\n{numel / 1e6:.0f}M {args.dtype} params in {args.tensors} tensors on {device}, "
        f"{bytes_per_step / 1e6:.0f} MB moved per step; streaming bandwidth {bandwidth:.1f} GB/s"
    )
    print(f"{'optimizer':<24} {'ms/step':>8} {'vs fused':>9} {'vs default':>10} {'first step ms':>14} "
          f"{'GB/s':>7} {'of floor':>8}")
    for name, samples in times.items():
        seconds = statistics.median(samples)
        rate = bytes_per_step / seconds / 1e9
        print(
            f"{name:<24} {seconds * 1e3:8.2f} {seconds / baseline:8.3f}x {seconds / default:9.3f}x "
            f"{first_step[name] * 1e3:14.1f} {rate:7.1f} {rate / bandwidth:7.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[25e6], help="total parameter counts")
    parser.add_argument("--tensors", type=int, default=50)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bandwidth = stream_bandwidth(device)
    for size in args.sizes:
        run_size(args, int(size), device, bandwidth)


if __name__ == "__main__":
    main()
