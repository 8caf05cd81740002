"""N cells' models trained one after another vs as one vmapped ensemble, per training step (issue 27's GPU lever).

    python benchmarks/ensemble_step.py                                   # ResNet20 without BN, 8 copies, CPU
    python benchmarks/ensemble_step.py --device cuda --copies 24 --steps 30   # the blog grid's 24 cells on a GPU
    python benchmarks/ensemble_step.py --model small_cnn --copies 6 --variant adamw-paper

The measurement issue 27 asks for before the sweep trains a batch of cells as one ensemble: N copies of one
architecture (each its own initial weights from its own seed, its own lr and weight decay, its own batch of random
CIFAR-shaped images, as N cells of a grid), trained two ways on the same device in the same run:

(a) **separate**: N ``nn.Module``\\ s, each step: forward, cross-entropy, backward, its own optimizer step;
(b) **ensemble**: the same N sets of parameters (each still its own tensors and its own optimizer of the variant, so
    every decay rule runs unchanged), stacked for the step and run through one ``torch.func.vmap`` of
    ``torch.func.functional_call`` over an ``N x batch`` input; the loss is the sum of the copies' mean losses, so
    each copy's gradient is its own.

Prints images per second of each way (after ``--warmup`` steps; CUDA synchronized), their ratio (goal: > 1, or the
ensemble does not pay on this device), the hours issue 27's GPU target (the blog's 24-cell grid x 3 seeds, 100
epochs of 50,000 images: 3.6e8 training images in one GPU-hour) takes at each rate (training steps only), and how
far the ensemble is from the separate models: the first step's gradients and the weights after it, as the largest
norm-wise relative difference over the copies' tensors (``||ensemble - separate|| / ||separate||``), and the weights
after the last step. In float32 the two ways sum in other orders (a vmapped convolution is a grouped one), ~1e-6 to
1e-5 on this CPU, and Adam's first step turns a gradient near ``eps`` into a different update, so the weights differ
more than the gradients; the same first step in float64, where reassociation is ~1e-15, shows whether the ensemble
computes the same thing (issue 27: within 1e-6).
Models without batch norm only: vmap cannot update running statistics in place.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lightning_decay.experiments.models import ResNet20, SmallCNN  # noqa: E402
from lightning_decay.optim import resolve_variant  # noqa: E402

#: Goal of issue 27's item 1 for the first step: the ensemble equals the separate models up to reassociation.
FIRST_STEP_GOAL = 1e-6
#: Issue 27's GPU target: the blog's 24-cell grid x 3 seeds, 100 epochs of 50,000 images each, in one GPU-hour.
TARGET_IMAGES = 24 * 3 * 100 * 50_000


def build_model(name: str) -> nn.Module:
    if name == "resnet20":
        return ResNet20(batch_norm=False)
    if name == "small_cnn":
        return SmallCNN(batch_norm=False)
    raise SystemExit(f"--model must be resnet20 or small_cnn, got {name!r}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(variant: str, params: list[Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    optimizer_class, fixed = resolve_variant(variant)
    return optimizer_class(params, lr=lr, weight_decay=weight_decay, **fixed)


def cell_settings(copies: int) -> list[tuple[float, float]]:
    """(lr, weight decay) of each copy: a small grid, as a sweep's cells differ."""
    lrs, decays = (1e-3, 3e-3, 1e-2), (1e-3, 1e-2, 1e-1, 1.0)
    return [(lrs[i % len(lrs)], decays[(i // len(lrs)) % len(decays)]) for i in range(copies)]


class Separate:
    """(a): N modules, one optimizer each, stepped one after another."""

    def __init__(self, models: list[nn.Module], variant: str, settings: list[tuple[float, float]]) -> None:
        self.models = models
        self.optimizers = [
            make_optimizer(variant, list(model.parameters()), lr, wd) for model, (lr, wd) in zip(models, settings)
        ]

    def step(self, images: Tensor, labels: Tensor, keep_grad: bool = False) -> None:
        for index, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            F.cross_entropy(model(images[index]), labels[index]).backward()
            optimizer.step()
            if not keep_grad:
                optimizer.zero_grad(set_to_none=True)

    def parameters(self, index: int) -> list[Tensor]:
        return list(self.models[index].parameters())


class Ensemble:
    """(b): the N copies' parameters (their own leaf tensors and optimizers) stacked per step into one vmapped
    forward and backward over a ``meta``-device skeleton of the architecture."""

    def __init__(self, models: list[nn.Module], variant: str, settings: list[tuple[float, float]]) -> None:
        self.names = [name for name, _ in models[0].named_parameters()]
        self.params = [[param.detach().clone().requires_grad_() for param in model.parameters()] for model in models]
        self.optimizers = [make_optimizer(variant, params, lr, wd) for params, (lr, wd) in zip(self.params, settings)]
        self.skeleton = copy.deepcopy(models[0]).to("meta")

        def loss_of_one(params: dict[str, Tensor], images: Tensor, labels: Tensor) -> Tensor:
            return F.cross_entropy(functional_call(self.skeleton, params, (images,)), labels)

        self.losses = vmap(loss_of_one)

    def step(self, images: Tensor, labels: Tensor, keep_grad: bool = False) -> None:
        stacked = {
            name: torch.stack([params[position] for params in self.params])
            for position, name in enumerate(self.names)
        }
        self.losses(stacked, images, labels).sum().backward()
        for optimizer in self.optimizers:
            optimizer.step()
            if not keep_grad:
                optimizer.zero_grad(set_to_none=True)

    def parameters(self, index: int) -> list[Tensor]:
        return self.params[index]


def largest_relative_difference(pairs: list[tuple[Tensor, Tensor]]) -> float:
    """max over ``(a, b)`` of ``||a - b|| / ||b||`` (0 where both are 0)."""
    worst = 0.0
    for a, b in pairs:
        difference = (a - b).norm().item()
        worst = max(worst, difference / b.norm().item() if difference > 0 else 0.0)
    return worst


def first_step(models: list[nn.Module], args: argparse.Namespace, dtype: torch.dtype, device: torch.device
               ) -> tuple[Separate, Ensemble]:
    """Both ways after one step in ``dtype`` from the same weights and batch, gradients kept."""
    copies = [copy.deepcopy(model).to(device=device, dtype=dtype) for model in models]
    settings = cell_settings(len(models))
    separate = Separate([copy.deepcopy(model) for model in copies], args.variant, settings)
    ensemble = Ensemble(copies, args.variant, settings)
    generator = torch.Generator().manual_seed(99)
    images = torch.randn(len(models), args.batch, 3, 32, 32, generator=generator).to(device=device, dtype=dtype)
    labels = torch.randint(0, 10, (len(models), args.batch), generator=generator).to(device)
    separate.step(images, labels, keep_grad=True)
    ensemble.step(images, labels, keep_grad=True)
    return separate, ensemble


def grads(runner: Separate | Ensemble, copies: int) -> list[Tensor]:
    return [param.grad.double() for index in range(copies) for param in runner.parameters(index)]


def weights(runner: Separate | Ensemble, copies: int) -> list[Tensor]:
    return [param.detach().double() for index in range(copies) for param in runner.parameters(index)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", help="resnet20 (the blog's, without BN) or small_cnn")
    parser.add_argument("--copies", type=int, default=8, help="models trained together (cells of a batch)")
    parser.add_argument("--batch", type=int, default=128, help="images per copy per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per way")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per way before the timed ones")
    parser.add_argument("--variant", default="adamw", help="the optimizer variant of every copy (registry name)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads on CPU (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = cell_settings(args.copies)
    models = []
    for seed in range(args.copies):
        torch.manual_seed(seed)
        models.append(build_model(args.model).to(device))
    generator = torch.Generator().manual_seed(1234)
    steps = args.warmup + args.steps
    batches = [
        (
            torch.randn(args.copies, args.batch, 3, 32, 32, generator=generator).to(device),
            torch.randint(0, 10, (args.copies, args.batch), generator=generator).to(device),
        )
        for _ in range(min(steps, 4))
    ]
    separate = Separate([copy.deepcopy(model) for model in models], args.variant, settings)
    ensemble = Ensemble(models, args.variant, settings)

    load = os.getloadavg()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{platform.node()}: {name}; torch {torch.__version__}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    params = sum(p.numel() for p in models[0].parameters())
    print(f"{args.model} without BN ({params:,} parameters) x {args.copies} copies, batch {args.batch} per copy, "
          f"{args.variant}, {args.steps} timed steps after {args.warmup}")

    seconds = {"separate": 0.0, "ensemble": 0.0}
    for step in range(steps):
        images, labels = batches[step % len(batches)]
        for way, runner in (("separate", separate), ("ensemble", ensemble)):  # interleaved: same machine state
            synchronize(device)
            started = time.perf_counter()
            runner.step(images, labels)
            synchronize(device)
            if step >= args.warmup:
                seconds[way] += time.perf_counter() - started
    last = largest_relative_difference(list(zip(weights(ensemble, args.copies), weights(separate, args.copies))))
    rate = {way: args.copies * args.batch * args.steps / value for way, value in seconds.items()}
    print(f"separate models, one after another: {rate['separate']:10.0f} images/s")
    print(f"one vmapped ensemble:               {rate['ensemble']:10.0f} images/s")
    print(f"ratio ensemble / separate: {rate['ensemble'] / rate['separate']:.2f}x (> 1: the ensemble pays here)")
    hours = {way: TARGET_IMAGES / value / 3600 for way, value in rate.items()}
    print(f"issue 27's target at these rates ({TARGET_IMAGES:.1e} training images, goal 1 GPU-hour; training steps "
          f"only): separate {hours['separate']:.2f} h, ensemble {hours['ensemble']:.2f} h")
    print("after the first step, largest ||difference|| / ||reference|| over the copies' tensors (gradients, weights):")
    separate64, ensemble64 = first_step(models, args, torch.float64, device)
    separate32, ensemble32 = first_step(models, args, torch.float32, device)
    count = args.copies

    def distance(get: Any, a: Separate | Ensemble, b: Separate | Ensemble) -> str:
        return f"{largest_relative_difference(list(zip(get(a, count), get(b, count)))):.1e}"

    exact = largest_relative_difference(list(zip(weights(ensemble64, count), weights(separate64, count))))
    print(f"  float64, ensemble vs separate: {distance(grads, ensemble64, separate64)}, {exact:.1e} "
          f"(goal <= {FIRST_STEP_GOAL:.0e}: {'ok' if exact <= FIRST_STEP_GOAL else 'ABOVE'})")
    for label, runner in (("separate", separate32), ("ensemble", ensemble32)):
        print(f"  float32 {label} vs float64 separate: {distance(grads, runner, separate64)}, "
              f"{distance(weights, runner, separate64)}")
    print(f"  float32, ensemble vs separate: {distance(grads, ensemble32, separate32)}, "
          f"{distance(weights, ensemble32, separate32)}")
    print(f"  weights after {steps} float32 steps: {last:.1e}")


if __name__ == "__main__":
    main()
