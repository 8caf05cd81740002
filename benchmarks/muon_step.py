"""Each Muon decay rule's step against torch's bare ``torch.optim.Muon``, measured in the same run.

    python benchmarks/optimizer_step.py --muon           # the same, from the main benchmark (16 x 128 x 128)
    python benchmarks/muon_step.py --shape 1024 1024 --matrices 24 --device cuda

A rule is torch's Muon kernel run with per-step ``(lr', wd')`` (``lightning_decay.optim.muon``): its cost over the
bare kernel is the scalar setup per group (goal <= 1.05x). Rows: every Muon variant with torch's bfloat16
Newton-Schulz iteration, against ``torch.optim.Muon``; and with ``orthogonalize_dtype="float32"`` against the same
kernel without a rule (``MatrixMuon``), where the iteration is cheaper and the setup weighs more. Prints
``ms/step`` (median of rounds) and the ratio to the row's baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lightning_decay.optim import REGISTRY
from lightning_decay.optim.muon import MatrixMuon


def timed(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], params: list[torch.Tensor], steps: int,
          rounds: int, device: torch.device) -> float:
    """Median over ``rounds`` of the mean time of ``steps`` steps (after one untimed step), in ms."""
    optimizer = make(params)
    generator = torch.Generator(device=device).manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, device=device)
    optimizer.step()
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(times)


def run_muon(shape: tuple[int, int], matrices: int, steps: int, rounds: int, device: torch.device) -> None:
    """Print the table: every Muon rule against the bare kernel, with bfloat16 and float32 orthogonalization."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*shape, device=device)) for _ in range(matrices)]
    names = [name for name, info in REGISTRY.items() if info.family == "muon"]
    print(f"\n# Muon rules: {matrices} matrices {shape[0]} x {shape[1]} on {device}; ms/step (median of {rounds} "
          f"rounds of {steps} steps)")
    for dtype in ("bfloat16", "float32"):
        if dtype == "bfloat16":
            baseline_name = "torch.optim.Muon"
            baseline = timed(lambda p: torch.optim.Muon(p, lr=0.02, weight_decay=0.1), params, steps, rounds, device)
        else:
            baseline_name = "MatrixMuon(orthogonalize_dtype='float32'), no rule"
            baseline = timed(lambda p: MatrixMuon(p, lr=0.02, weight_decay=0.1, orthogonalize_dtype="float32"),
                             params, steps, rounds, device)
        print(f"{'Newton-Schulz in ' + dtype:<24} {baseline_name:<52} {baseline:9.2f} ms  1.00x")
        for name in names:
            options = {} if dtype == "bfloat16" else {"orthogonalize_dtype": "float32"}
            ms = timed(lambda p, n=name, o=options: REGISTRY[n].build(p, lr=0.02, weight_decay=0.1, **o), params,
                       steps, rounds, device)
            print(f"{'':<24} {name:<52} {ms:9.2f} ms  {ms / baseline:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=2, default=[128, 128])
    parser.add_argument("--matrices", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    run_muon(tuple(args.shape), args.matrices, args.steps, args.rounds, torch.device(args.device))


if __name__ == "__main__":
    main()
