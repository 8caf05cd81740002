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
Batch 128 is the batch of ``configs/quickstart.yaml`` and ``configs/blog/``.

``--cell-options`` (issue 17) measures instead what could make a sweep cell on CPU faster, each against the cells'
setting in the same run (``baseline``: channels-last float32, one thread, torch's fused AdamW, as ``lightning-decay
sweep --jobs 2`` runs cells on a 2-core machine): ``contiguous`` (no channels-last), ``bf16-autocast``
(``torch.autocast("cpu", bfloat16)`` around forward and loss), ``compile`` (``torch.compile`` of the network; its
first-call compilation is printed apart), ``threads-2`` (two torch threads: what one job of ``--jobs 1`` gets), for
SmallCNN and ResNet20, and the data start-up of a cell: decoding the JPEGs (the embedded 12,000-image sample) vs
reading the decoded-data cache (``LIGHTNING_DECAY_DATA_CACHE``, which the sweep sets for its cells). Ratios > 1 are
faster than the baseline.

Goal: (c) >= 0.95 x (a), measured paired: every Lightning run also runs one plain step (a) on the same batch,
on its own copy of the network and optimizer, right after each Lightning step and timed apart from it (the
Lightning step is timed from the end of that plain step to the end of the next Lightning step, so it holds
everything Lightning, the module and the callbacks do per step); "paired" is the median over rounds of the
ratio of the two rates in the same run, which cancels load that drifts between runs. A run's rate
(``--timing robust``, the default): the median duration of the steps without periodic work, plus the excess over
that median of the steps with it (global step divisible by ``log_every_n_steps``: the monitors, Lightning's
logging, the CSV writes), spread over all steps; ``--timing wall``: the window's wall time. "images/s" is the best
round (``--statistic best``) or the median one; "vs (a)" divides it by (a)'s own runs.
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
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from lightning_decay import VARIANTS, DecaySettings
from lightning_decay.callbacks import EffectiveDecayMonitor, ScaleInvarianceMonitor, WeightNormMonitor
from lightning_decay.experiments import ImageClassifier

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


class PlainStep:
    """One step of (a): forward, cross-entropy, backward, ``torch.optim.AdamW(fused=True)``, ``zero_grad``, on its
    own copy of the network."""

    def __init__(self, total_steps: int, device: torch.device) -> None:
        self.network = make_module("adamw", total_steps).network.to(device)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=1e-3, weight_decay=1e-2, fused=True)
        self.network.train()
        self.device = device

    def __call__(self, images: Tensor, labels: Tensor) -> None:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        F.cross_entropy(self.network(images), labels).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)


class StepClock(Callback):
    """Times every Lightning step from step ``warmup`` on (measured last, after every other callback) and which
    steps did periodic work (Lightning's logging and the monitors': global step divisible by
    ``log_every_n_steps``). With ``plain``, runs and times one plain step on the same batch right after each
    Lightning step, outside the Lightning step's time: the pair sees the same machine state."""

    def __init__(self, warmup: int, device: torch.device, plain: PlainStep | None = None) -> None:
        self.warmup = warmup
        self.device = device
        self.plain = plain
        self.resumed: float | None = None  # when Lightning got control back after the last plain step
        self.durations: list[float] = []
        self.plain_durations: list[float] = []
        self.periodic: list[bool] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step < self.warmup:
            return
        synchronize(self.device)
        now = time.perf_counter()
        if self.resumed is not None:
            self.durations.append(now - self.resumed)
            self.periodic.append(trainer.global_step % trainer.log_every_n_steps == 0)
        if self.plain is not None:
            self.plain(*batch)
            self.plain_durations.append(time.perf_counter() - now)
        self.resumed = time.perf_counter()


def images_per_second(durations: list[float], periodic: list[bool], batch_size: int, timing: str) -> float:
    """``wall``: all steps over their total time. ``robust``: the median step (of the steps without periodic work)
    plus the periodic steps' excess over it, spread over all steps: a time slice lost to another process lands on
    a random step and leaves the median alone, while the monitors' and loggers' work is counted in full."""
    if timing == "wall" or all(periodic):
        return len(durations) * batch_size / sum(durations)
    typical = statistics.median([d for d, p in zip(durations, periodic) if not p])
    excess = sum(d - typical for d, p in zip(durations, periodic) if p)
    return batch_size / (typical + excess / len(durations))


def run_plain(data: TensorDataset, args: argparse.Namespace, device: torch.device) -> float:
    """(a) alone: images/s of a plain PyTorch loop with torch's fused AdamW."""
    step = PlainStep(args.warmup + args.steps, device)
    ends: list[float] = []
    for index, (images, labels) in enumerate(loader(data, args.batch_size), start=1):
        step(images, labels)
        if index >= args.warmup:
            ends.append(time.perf_counter())
        if index == args.warmup + args.steps:
            break
    durations = [b - a for a, b in zip(ends, ends[1:])]
    return images_per_second(durations, [False] * len(durations), args.batch_size, args.timing)


def run_lightning(
    data: TensorDataset, args: argparse.Namespace, device: torch.device, optimizer: str, monitors: bool, root: str
) -> tuple[float, float]:
    """(b) without callbacks and logger, (c) with the three monitors and a CSVLogger: images/s, and images/s of
    the plain steps interleaved with its steps."""
    total = args.warmup + args.steps
    clock = StepClock(args.warmup, device, PlainStep(total, device))
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
    assert clock.durations, "the run ended before the timed window"
    rate = images_per_second(clock.durations, clock.periodic, args.batch_size, args.timing)
    plain = clock.plain_durations
    return rate, images_per_second(plain, [False] * len(plain), args.batch_size, args.timing)


CELL_OPTIONS = ("baseline", "contiguous", "bf16-autocast", "compile", "threads-2")


def time_cell_option(architecture: str, option: str, steps: int, warmup: int, batch_size: int) -> tuple[float, float]:
    """``(images/s, seconds of the first step)`` of plain training steps of ``architecture`` (no BN) with ``option``
    (one of :data:`CELL_OPTIONS`); the rate is the median step after ``warmup`` untimed ones."""
    from lightning_decay.experiments import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(2 if option == "threads-2" else 1)
    try:
        torch.manual_seed(0)
        network = build_model(architecture, num_classes=10, batch_norm=False)
        layout = torch.contiguous_format if option == "contiguous" else torch.channels_last
        network = network.to(memory_format=layout)
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-2, fused=True)
        model = torch.compile(network) if option == "compile" else network
        images = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=layout)
        labels = torch.randint(0, 10, (batch_size,))
        durations = []
        for _ in range(warmup + steps):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=option == "bf16-autocast"):
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            durations.append(time.perf_counter() - start)
        return batch_size / statistics.median(durations[warmup:]), durations[0]
    finally:
        torch.set_num_threads(threads)


def time_data_startup() -> tuple[float, float]:
    """``(decode s, cache read s)`` of the embedded CIFAR-10 sample in this process."""
    import os

    from lightning_decay.experiments import cifar10

    source = cifar10.resolve_source(None)
    with tempfile.TemporaryDirectory() as folder:
        old = os.environ.get(cifar10.DISK_CACHE_ENV)
        os.environ[cifar10.DISK_CACHE_ENV] = folder
        try:
            cifar10.clear_cache()
            start = time.perf_counter()
            cifar10.load_source(source)  # decodes, then writes the cache file (not timed below)
            decode = time.perf_counter() - start
            cifar10.clear_cache()
            start = time.perf_counter()
            cifar10.load_source(source)
            cached = time.perf_counter() - start
        finally:
            cifar10.clear_cache()
            if old is None:
                os.environ.pop(cifar10.DISK_CACHE_ENV, None)
            else:
                os.environ[cifar10.DISK_CACHE_ENV] = old
    return decode, cached


def cell_options(args: argparse.Namespace) -> None:
    """The ``--cell-options`` table: every option against the baseline, per architecture; then the data start-up."""
    steps = {"small_cnn": args.steps, "resnet20": max(2, args.steps // 5)}
    print(f"cell options: batch {args.batch_size}, median of the timed steps after {args.warmup} untimed, "
          f"1 thread unless threads-2 ({torch.get_num_threads()} available), {args.device}")
    for architecture in args.architectures:
        base = None
        for option in CELL_OPTIONS:
            rate, first = time_cell_option(architecture, option, steps[architecture], args.warmup, args.batch_size)
            base = base or rate
            once = f"  first step {first:6.1f} s" + (" (compilation)" if option == "compile" else "")
            print(f"{architecture:<10} {option:<14} {rate:8.1f} images/s  x{rate / base:5.2f}{once}", flush=True)
    decode, cached = time_data_startup()
    print(f"data start-up (embedded 12,000-image sample): JPEG decode {decode:.2f} s, decoded cache {cached:.2f} s "
          f"(x{decode / max(cached, 1e-9):.0f}); the full 60,000-image archive scales the decode by 5")


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
    parser.add_argument("--timing", choices=["robust", "wall"], default="robust",
                        help="a run's rate: median step plus the periodic steps' excess, or plain wall time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--cell-options", action="store_true",
                        help="measure channels-last, bf16 autocast, torch.compile, threads and the data cache instead")
    parser.add_argument("--architectures", nargs="+", default=["small_cnn", "resnet20"],
                        choices=["small_cnn", "resnet20"], help="networks of --cell-options")
    args = parser.parse_args()
    if args.cell_options:
        if args.device != "cpu":
            parser.error("--cell-options measures the CPU cells: use --device cpu")
        cell_options(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = make_data((args.warmup + args.steps) * args.batch_size)
    if device.type == "cuda":
        data = TensorDataset(*(t.to(device) for t in data.tensors))  # already on the device: no copies per step
    configs: list[tuple[str, Any]] = [("(a) plain torch, fused AdamW", None), ("(b) lightning adamw", ("adamw", False))]
    configs += [(f"(c) lightning {name} + monitors", (name, True)) for name in args.variants]
    rates: dict[str, list[float]] = {label: [] for label, _ in configs}
    paired: dict[str, list[float]] = {label: [] for label, _ in configs}  # rate / interleaved plain rate
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning_decay"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as root:
        for round_index in range(args.rounds):
            shift = round_index % len(configs)
            for label, spec in configs[shift:] + configs[:shift]:
                if spec is None:
                    rate = run_plain(data, args, device)
                    paired[label].append(1.0)
                    extra = ""
                else:
                    rate, plain_rate = run_lightning(data, args, device, spec[0], spec[1], root)
                    paired[label].append(rate / plain_rate)
                    extra = f"  interleaved plain {plain_rate:8.1f} images/s, ratio {rate / plain_rate:.3f}"
                rates[label].append(rate)
                print(f"round {round_index}: {label:<44} {rate:8.1f} images/s{extra}", flush=True)
    summarize = max if args.statistic == "best" else statistics.median
    print(
        f"\nResNet20 (no BN), batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, "
        f"{args.rounds} rounds, {args.timing} timing, {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
           else f", {torch.get_num_threads()} threads")
    )
    print(f"{'configuration':<44} {'images/s':>9} {'epoch s':>8} {'vs (a)':>7} {'paired':>7}  goal")
    plain = summarize(rates[configs[0][0]])
    for label, _ in configs:
        rate = summarize(rates[label])
        ratio = statistics.median(paired[label])
        goal = f">= {GOAL} {'ok' if ratio >= GOAL else 'BELOW'}" if label.startswith("(c)") else ""
        print(f"{label:<44} {rate:9.1f} {50_000 / rate:8.1f} {rate / plain:6.3f}x {ratio:6.3f}x  {goal}")
    print(f"(images/s: {'best round' if args.statistic == 'best' else 'median over rounds'}; epoch s: 50,000 "
          "CIFAR-10 training images at that rate; vs (a): ratio to (a)'s own runs; paired: median over rounds of "
          "the ratio to the plain steps interleaved in the same run, the goal's measure)")

if __name__ == "__main__":
    main()
