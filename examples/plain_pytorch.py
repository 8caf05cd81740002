"""The drop-in optimizers in a plain PyTorch loop: AdamW (paper convention), ProxAdam and AdamP side by side.

The same small MLP, from the same initial weights, is trained on the same synthetic classification data with each
optimizer (and once without weight decay, for reference); the script prints every run's final loss and weight norms.
No Lightning anywhere: the optimizers are ordinary ``torch.optim.Optimizer``s, built on two parameter groups
(weights decay, biases do not).

Run (under a minute on 2 CPU cores, ~15 s of it the compilation of AdamP's kernel at its first step):

    python examples/plain_pytorch.py
    python examples/plain_pytorch.py --tiny      # 30 steps, AdamP run eagerly (no compilation): ~10 s

``LIGHTNING_DECAY_EXAMPLE_TINY=1`` has the effect of ``--tiny``.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_decay import AdamP, AdamW, ProxAdam

ParameterGroups = list[dict[str, object]]


def make_data(samples: int, features: int = 32, classes: int = 4) -> tuple[Tensor, Tensor]:
    """Gaussian inputs labelled by a random linear teacher: a learnable task made on the spot."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, features, generator=generator)
    teacher = torch.randn(features, classes, generator=generator)
    return inputs, (inputs @ teacher).argmax(dim=1)


def make_model(features: int = 32, hidden: int = 64, classes: int = 4) -> nn.Sequential:
    """A two-hidden-layer MLP (seeded: every optimizer starts from the same weights)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )


def parameter_groups(model: nn.Module) -> ParameterGroups:
    """Weights decay, biases do not (the usual split; the Lightning tools of the package make it for you)."""
    weights = [parameter for name, parameter in model.named_parameters() if not name.endswith("bias")]
    biases = [parameter for name, parameter in model.named_parameters() if name.endswith("bias")]
    return [{"params": weights}, {"params": biases, "weight_decay": 0.0}]


def train(model: nn.Module, optimizer: Optimizer, inputs: Tensor, labels: Tensor, steps: int) -> float:
    """``steps`` minibatch steps of cross-entropy; returns the final loss on the whole data set."""
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = torch.randint(0, len(inputs), (64,), generator=generator)
        loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return nn.functional.cross_entropy(model(inputs), labels).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("LIGHTNING_DECAY_EXAMPLE_TINY") == "1")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 300, tiny 30)")
    arguments = parser.parse_args()
    steps = arguments.steps or (30 if arguments.tiny else 300)
    lr = 1e-2
    # The paper convention and ProxAdam decay by about eta_t * wd per step: wd = 1e-3 is a timescale of
    # 1000 steps. AdamP's decay lr_t * wd / D is elementwise and depends on the gradients' size D.
    optimizers: dict[str, Callable[[ParameterGroups], Optimizer]] = {
        "no decay (reference)": lambda groups: AdamW(groups, lr=lr, weight_decay=0.0),
        "AdamW, paper convention": lambda groups: AdamW(groups, lr=lr, weight_decay=1e-3, convention="paper"),
        "ProxAdam": lambda groups: ProxAdam(groups, lr=lr, weight_decay=1e-3),
        # fused=False: the same step eagerly, skipping the first step's ~15 s compilation (fine for small models).
        "AdamP": lambda groups: AdamP(groups, lr=lr, weight_decay=1e-2, fused=not arguments.tiny),
    }
    inputs, labels = make_data(samples=2048)
    initial = make_model()
    print(f"{steps} steps at lr {lr:g}; weight norms |w| of the three Linear layers, then all parameters:")
    print(f"{'optimizer':<26} {'loss':>7} {'layer 0':>8} {'layer 2':>8} {'layer 4':>8} {'total':>8}")
    for name, build in optimizers.items():
        model = copy.deepcopy(initial)
        loss = train(model, build(parameter_groups(model)), inputs, labels, steps)
        norms = [model[index].weight.norm().item() for index in (0, 2, 4)]
        total = torch.cat([parameter.flatten() for parameter in model.parameters()]).norm().item()
        print(f"{name:<26} {loss:>7.4f} " + " ".join(f"{norm:>8.3f}" for norm in norms) + f" {total:>8.3f}")


if __name__ == "__main__":
    main()
