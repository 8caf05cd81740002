"""End-to-end training throughput: ResNet20 without batch norm on in-memory CIFAR-shaped tensors.

    python benchmarks/train_throughput.py                                  # CPU, batch 128, all variants
    python benchmarks/train_throughput.py --variants adamw adamp --rounds 3
    python benchmarks/train_throughput.py --device cuda --batch-size 128 --steps 100 --warmup 20

Configurations (issue 8), each measured in every round, in a rotating order so that load from other processes
hits all of them alike:

* (a) ``plain``: a plain PyTorch loop (forward, cross-entropy, backward, ``torch.optim.AdamW(fused=True)``,
  ``zero_grad``) on the same network as the Lightning module (``ImageClassifier(batch_norm=False)``'s ResNet20,
  channels-last like it);
* (b) ``lightning adamw``: ``ImageClassifier`` with this package's AdamW (decay / no-decay groups, cosine
  schedule) in a ``Trainer`` with no callbacks and no logger;
* (c) ``lightning <variant> + monitors``: each variant with ``WeightNormMonitor``, ``EffectiveDecayMonitor`` and
  ``ScaleInvarianceMonitor`` at their default interval (the trainer's ``log_every_n_steps``, 50) and a CSVLogger
  in a temporary directory, so they do log.

Images/s counts the ``--steps`` steps after ``--warmup`` untimed ones (allocator and thread-pool warm-up, the
compiled kernels' first-step compilation, the scale check's one-time start-up run), between the ends of two
training steps (CUDA: synchronized). The default window of 50 steps holds one logging step of the monitors.
Batches come from a tensor already in memory (one index per batch, no workers), so data loading is not the limit.
Batch 128 is the batch of ``configs/quickstart.yaml`` and ``configs/blog/``. Each configuration's rate is its best
round (``--statistic best``, the default: on a shared machine, load from other processes only ever slows a run down,
so the fastest of several rounds is the least disturbed one) or the median over rounds (``--statistic median``);
the ratio to (a) divides those rates. Goal: (c) >= 0.95 x (a).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from lightning_decay import VARIANTS, DecaySettings
from lightning_decay.callbacks import EffectiveDecayMonitor, ScaleInvarianceMonitor, WeightNormMonitor
from lightning_decay.classifier import ImageClassifier

GOAL = 0.95


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(count: int, seed: int = 0) -> TensorDataset:
    """Random uint8 CIFAR-shaped images, normalized to float once, and labels: all in memory."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    images = (images.float() / 255.0 - 0.5) / 0.25
    return TensorDataset(images, torch.randint(0, 10, (count,), generator=generator))


def loader(data: TensorDataset, batch_size: int) -> DataLoader:
    """Whole batches by one tensor index each (``batch_size=None``: the dataset returns the batch)."""
    sampler = BatchSampler(SequentialSampler(data), batch_size, drop_last=True)
    return DataLoader(data, sampler=sampler, batch_size=None)


def make_module(optimizer: str, total_steps: int) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(
        architecture="resnet20", batch_norm=False, decay=DecaySettings(optimizer=optimizer, total_steps=total_steps)
    )


class StepClock(Callback):
    """Time at the end of step ``warmup`` and at the end of the last step (after every other callback)."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup = warmup
        self.device = device
        self.start: float | None = None
        self.end: float | None = None
        self.steps = 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step < self.warmup:
            return
        synchronize(self.device)
        now = time.perf_counter()
        if trainer.global_step == self.warmup:
            self.start = now
        else:
            self.end, self.steps = now, trainer.global_step - self.warmup


def run_plain(data: TensorDataset, args: argparse.Namespace, device: torch.device) -> float:
    """(a): images/s of a plain PyTorch loop with torch's fused AdamW."""
    network = make_module("adamw", args.warmup + args.steps).network.to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-2, fused=True)
    network.train()
    start = None
    step = 0
    for images, labels in loader(data, args.batch_size):
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        loss = F.cross_entropy(network(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step == args.warmup:
            synchronize(device)
            start = time.perf_counter()
        elif step == args.warmup + args.steps:
            synchronize(device)
            break
    assert start is not None
    return args.steps * args.batch_size / (time.perf_counter() - start)


def run_lightning(
    data: TensorDataset, args: argparse.Namespace, device: torch.device, optimizer: str, monitors: bool, root: str
) -> float:
    """(b) without callbacks and logger, (c) with the three monitors and a CSVLogger: images/s."""
    total = args.warmup + args.steps
    clock = StepClock(args.warmup, device)
    callbacks: list[Callback] = []
    if monitors:
        callbacks = [WeightNormMonitor(), EffectiveDecayMonitor(), ScaleInvarianceMonitor()]
    trainer = pl.Trainer(
        max_steps=total,
        max_epochs=1,
        accelerator=device.type,
        devices=1,
        logger=CSVLogger(root, name=optimizer) if monitors else False,
        log_every_n_steps=50,
        callbacks=[*callbacks, clock],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(make_module(optimizer, total), train_dataloaders=loader(data, args.batch_size))
    assert clock.start is not None and clock.end is not None, "the run ended before the timed window"
    return clock.steps * args.batch_size / (clock.end - clock.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="variants of (c)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before the window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--statistic", choices=["best", "median"], default="best",
                        help="each configuration's rate over rounds: the fastest round, or the median")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = make_data((args.warmup + args.steps) * args.batch_size)
    if device.type == "cuda":
        data = TensorDataset(*(t.to(device) for t in data.tensors))  # already on the device: no copies per step
    configs: list[tuple[str, Any]] = [("(a) plain torch, fused AdamW", None), ("(b) lightning adamw", ("adamw", False))]
    configs += [(f"(c) lightning {name} + monitors", (name, True)) for name in args.variants]
    rates: dict[str, list[float]] = {label: [] for label, _ in configs}
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning_decay"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as root:
        for round_index in range(args.rounds):
            shift = round_index % len(configs)
            for label, spec in configs[shift:] + configs[:shift]:
                if spec is None:
                    rate = run_plain(data, args, device)
                else:
                    rate = run_lightning(data, args, device, spec[0], spec[1], root)
                rates[label].append(rate)
                print(f"round {round_index}: {label:<44} {rate:8.1f} images/s", flush=True)
    summarize = max if args.statistic == "best" else statistics.median
    print(
        f"\nResNet20 (no BN), batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, "
        f"{args.rounds} rounds, {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
           else f", {torch.get_num_threads()} threads")
    )
    print(f"{'configuration':<44} {'images/s':>9} {'epoch s':>8} {'vs (a)':>7}  goal")
    plain = summarize(rates[configs[0][0]])
    for label, _ in configs:
        rate = summarize(rates[label])
        ratio = rate / plain
        goal = f">= {GOAL} {'ok' if ratio >= GOAL else 'BELOW'}" if label.startswith("(c)") else ""
        print(f"{label:<44} {rate:9.1f} {50_000 / rate:8.1f} {ratio:6.3f}x  {goal}")
    print(f"(images/s: {'best round' if args.statistic == 'best' else 'median over rounds'}; epoch s: 50,000 "
          "CIFAR-10 training images at that rate; vs (a): ratio of those rates)")

if __name__ == "__main__":
    main()
