"""Calls into the validators and the registry during one optimizer step with two param groups, per scalar variant.

    python benchmarks/validation_calls.py                # every scalar variant, 3 steps (the lr changes at the 3rd)
    python benchmarks/validation_calls.py --variants adamw proxadam
    python benchmarks/validation_calls.py --overhead     # also each step's fixed cost against torch's fused AdamW
    python benchmarks/validation_calls.py --cold 4000    # ... and with cold caches, as at 1M parameters

A step should pay only for what changed (issue 26): the validators (every function of
``lightning_decay/validation.py``) run when a group's lr or weight decay changed since the last check, and the
registry (``get_variant``, ``resolve_variant``, ``rule_of``, ``record_of_class``, ``decay_rule_of``) is not asked
at all. The calls are counted with ``sys.setprofile``: every call into ``validation.py`` from outside it (a check
and the checks it calls inside ``validation.py`` count once), every call of a registry lookup; for the first step
(the optimizer's state is built), a second step with nothing changed, and a third step after a scheduler-like
change of both groups' lr. Goal: at most 4 validator calls per step.

``--cold PAIRS``: the same fixed cost where a large model's step has left the caches cold (32 MB written before
each step): every Python call of the step then costs ~1-2 us, several times what it costs in a tight loop, which is
what the step pays at 1M parameters. Median over step pairs alternating with torch's fused AdamW.

``--overhead``: the fixed cost of a step, what it costs besides the arithmetic: the minimum over many steps (the
lr changing every step, as under a scheduler) of each variant's step on two groups of tiny tensors, against torch's
fused AdamW (Adam variants) or fused SGD (SGD variants) on the same tensors; the difference is what a variant adds
to every step at any size (at 1M parameters a fused AdamW step takes ~1 ms on a quiet CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch

import lightning_decay.validation as validation
from lightning_decay.optim import conventions, registry
from lightning_decay.optim.registry import REGISTRY

#: Functions counted as registry lookups (module, names).
REGISTRY_LOOKUPS = {
    registry.__file__: {"get_variant", "resolve_variant", "rule_of", "record_of_class", "_default_of"},
    conventions.__file__: {"decay_rule_of"},
}
SCALAR_VARIANTS = [name for name, info in REGISTRY.items() if not info.elementwise and info.family != "muon"]


def count_calls(action: Callable[[], Any]) -> tuple[Counter[str], Counter[str]]:
    """``(validator calls, registry lookups)`` by function name while ``action`` runs."""
    validators: Counter[str] = Counter()
    lookups: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        if code.co_filename == validation.__file__:
            caller = frame.f_back
            if caller is None or caller.f_code.co_filename != validation.__file__:  # entries, not nested calls
                validators[code.co_name] += 1
        elif code.co_name in REGISTRY_LOOKUPS.get(code.co_filename, ()):
            lookups[code.co_name] += 1

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return validators, lookups


def two_group_optimizer(variant: str) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """The variant over two groups (a decayed matrix, an undecayed bias) with gradients set."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(64, 64))
    bias = torch.nn.Parameter(torch.randn(64))
    groups = [{"params": [weight], "weight_decay": 0.01}, {"params": [bias], "weight_decay": 0.0}]
    optimizer = REGISTRY[variant].build(groups, lr=1e-3)
    for param in (weight, bias):
        param.grad = torch.randn_like(param)
    return optimizer, [weight, bias]


def tiny_groups() -> list[dict[str, Any]]:
    """Two groups of 8 tiny tensors each (gradients set): a step that is all fixed cost."""
    torch.manual_seed(0)
    groups = []
    for weight_decay in (0.01, 0.0):
        params = [torch.nn.Parameter(torch.randn(16)) for _ in range(8)]
        for param in params:
            param.grad = torch.randn_like(param)
        groups.append({"params": params, "weight_decay": weight_decay})
    return groups


def fixed_cost_us(build: Callable[[list[dict[str, Any]]], torch.optim.Optimizer], steps: int) -> float:
    """The minimum step time in microseconds over ``steps`` steps whose lr changes every step."""
    optimizer = build(tiny_groups())
    best = float("inf")
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * (1.0 - 0.5 * step / steps)
        started = time.perf_counter()
        optimizer.step()
        best = min(best, time.perf_counter() - started)
    return best * 1e6


def overhead_table(variants: list[str], steps: int) -> None:
    baselines = {
        "adam": lambda groups: torch.optim.AdamW(groups, lr=1e-3, fused=True),
        "sgd": lambda groups: torch.optim.SGD(groups, lr=1e-3, fused=True),
    }
    print(f"\nfixed cost of a step (two groups of 8 tensors of 16 elements; min over {steps} steps, lr changing):")
    base_cost = {family: fixed_cost_us(build, steps) for family, build in baselines.items()}
    for family, cost in base_cost.items():
        print(f"{'torch fused ' + family:<16} {cost:8.1f} us")
    for variant in variants:
        info = REGISTRY[variant]
        cost = fixed_cost_us(lambda groups, info=info: info.build(groups, lr=1e-3), steps)
        base = base_cost[info.family]
        print(f"{variant:<16} {cost:8.1f} us   +{cost - base:6.1f} us over torch fused {info.family}")


def cold_cost_us(build: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
                 baseline: Callable[[list[dict[str, Any]]], torch.optim.Optimizer], pairs: int) -> float:
    """The median over ``pairs`` step pairs of (step - baseline step), in microseconds, each step after 32 MB were
    written (the caches then hold what a step over ~1M parameters leaves in them: not the optimizer's Python)."""
    flush = torch.zeros(8_000_000)
    ours, theirs = build(tiny_groups()), baseline(tiny_groups())
    differences = []
    for index in range(pairs):
        times = {}
        for name, optimizer in ((("ours", ours), ("theirs", theirs)) if index % 2 else
                                (("theirs", theirs), ("ours", ours))):
            for group in optimizer.param_groups:
                group["lr"] = 1e-3 * (1.0 - 1e-6 * index)
            flush.add_(1.0)
            started = time.perf_counter()
            optimizer.step()
            times[name] = time.perf_counter() - started
        differences.append(times["ours"] - times["theirs"])
    return statistics.median(differences) * 1e6


def cold_table(variants: list[str], pairs: int) -> None:
    adamw = lambda groups: torch.optim.AdamW(groups, lr=1e-3, fused=True)  # noqa: E731
    print(f"\nfixed cost with cold caches (two groups of 8 tiny tensors; median over {pairs} pairs, lr changing):")
    print(f"{'torch fused adam':<16} {cold_cost_us(adamw, adamw, pairs):+8.1f} us over itself (the noise floor)")
    for variant in variants:
        info = REGISTRY[variant]
        if info.family != "adam":
            continue
        cost = cold_cost_us(lambda groups, info=info: info.build(groups, lr=1e-3), adamw, pairs)
        print(f"{variant:<16} {cost:+8.1f} us over torch fused adam")


def describe(counter: Counter[str]) -> str:
    return f"{sum(counter.values()):3d}" + (f"  ({', '.join(f'{k} {v}' for k, v in sorted(counter.items()))})"
                                            if counter else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=SCALAR_VARIANTS, choices=SCALAR_VARIANTS)
    parser.add_argument("--overhead", action="store_true", help="also measure each step's fixed cost")
    parser.add_argument("--steps", type=int, default=2000, help="steps per fixed-cost measurement")
    parser.add_argument("--cold", type=int, default=0, metavar="PAIRS",
                        help="also the fixed cost with cold caches, as a large model's step leaves them (PAIRS pairs)")
    arguments = parser.parse_args()
    print(f"{'variant':<12} {'step':<16} validator calls / registry lookups")
    worst = 0
    for variant in arguments.variants:
        optimizer, _ = two_group_optimizer(variant)

        def lr_changed(optimizer: torch.optim.Optimizer = optimizer) -> None:
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * 0.5  # what a scheduler does
            optimizer.step()

        for label, action in (("first", optimizer.step), ("unchanged", optimizer.step), ("lr changed", lr_changed)):
            validators, lookups = count_calls(action)
            worst = max(worst, sum(validators.values()))
            print(f"{variant:<12} {label:<16} {describe(validators)} / {describe(lookups)}")
    print(f"most validator calls in one two-group step: {worst} (goal: at most 4)")
    if arguments.overhead:
        overhead_table(arguments.variants, arguments.steps)
    if arguments.cold:
        cold_table(arguments.variants, arguments.cold)


if __name__ == "__main__":
    main()
