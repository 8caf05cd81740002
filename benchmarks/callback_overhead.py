"""Training throughput with the three monitoring callbacks against the same run without them (ResNet20, CPU).

    python benchmarks/callback_overhead.py                       # batch 32, 110 steps, 3 interleaved repeats
    python benchmarks/callback_overhead.py --batch-size 128 --steps 160 --repeats 2

Goals (issue 4): throughput >= 0.97 of the run without monitors with ``WeightNormMonitor``,
``EffectiveDecayMonitor`` and ``ScaleInvarianceMonitor`` at their default interval (the trainer's
``log_every_n_steps``, 50), and >= 0.85 with all three logging every step.

Each run is a fresh ``Trainer`` (CSVLogger, ``self.log`` of the loss as in real training) on the same synthetic
CIFAR-shaped data and the same initial weights, optimizer: this package's AdamW with decay / no-decay groups. The
timed window starts after ``--warmup`` steps (allocator and thread-pool warm-up, and the scale check's start-up
run after the first step) and ends at the last step, so it holds the logging steps of the interval; the periodic
scale check (every 1000 steps by default, longer than the window) is timed on its own and its amortized share is
subtracted from the in-run ratios. Configurations are interleaved in every repeat so that load from other processes
hits all of them alike. Two ratios are printed: "in-run", ``1 - (time in the monitors' hooks) / (window time)``
measured inside the monitored run itself (robust to load from other processes; the verdict uses it), and "A/B",
the best window without monitors over the best window with them (the direct comparison; noisy on a shared
machine, where other processes' load moves the step time by more than the 3% under test).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_decay.callbacks import EffectiveDecayMonitor, ScaleInvarianceMonitor, WeightNormMonitor
from lightning_decay.diagnostics import scale_check
from lightning_decay.experiments import ResNet20
from lightning_decay.optim import AdamW


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = ResNet20()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay = [p for p in self.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.ndim < 2]
        groups = [{"params": decay, "name": "decay"}, {"params": no_decay, "name": "no_decay", "weight_decay": 0.0}]
        return AdamW(groups, lr=1e-3, weight_decay=0.05)


class WindowTimer(Callback):
    """Wall time from the end of step ``warmup`` to the end of the last step (placed after every other callback,
    so the window holds their work)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None
        self.steps = 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        if trainer.global_step == self.warmup:
            self.start = now
        elif trainer.global_step > self.warmup:
            self.end, self.steps = now, trainer.global_step - self.warmup


HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end", "on_train_epoch_end")


class HookClock:
    """Wall time spent inside the monitors' hooks during the timed window (their hooks wrapped on the instances)."""

    def __init__(self, timer: WindowTimer) -> None:
        self.timer = timer
        self.seconds = 0.0

    def wrap(self, callback: Callback) -> Callback:
        for name in HOOKS:
            hook = getattr(callback, name)

            def timed(*args: Any, _hook: Any = hook, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return _hook(*args, **kwargs)
                finally:
                    if self.timer.start is not None:
                        self.seconds += time.perf_counter() - started

            setattr(callback, name, timed)
        return callback


def monitors(every: int | None) -> list[Callback]:
    return [
        WeightNormMonitor(log_every_n_steps=every),
        EffectiveDecayMonitor(log_every_n_steps=every),
        ScaleInvarianceMonitor(log_every_n_steps=every),
    ]


def run(config: str, data: TensorDataset, args: argparse.Namespace, root: str) -> tuple[float, float]:
    """(wall seconds per step in the timed window, share of that window spent in the monitors' hooks)."""
    timer = WindowTimer(args.warmup)
    clock = HookClock(timer)
    callbacks = {"none": [], "default": monitors(None), "every step": monitors(1)}[config]
    trainer = pl.Trainer(
        max_steps=args.steps,
        max_epochs=1,
        log_every_n_steps=50,
        logger=CSVLogger(root, name=config.replace(" ", "_")),
        callbacks=[*[clock.wrap(c) for c in callbacks], timer],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(Classifier(), DataLoader(data, batch_size=args.batch_size))
    assert timer.start is not None and timer.end is not None
    window = timer.end - timer.start
    return window / timer.steps, clock.seconds / window


def check_cost_in_steps(data: TensorDataset, check_batch: int, batch: int, rounds: int = 5) -> tuple[float, float]:
    """(seconds, training steps) of one numerical scale check on ResNet20 (one forward per weight tensor on the
    fixed batch), timed alternately with plain training steps of ``batch`` samples so that both see the same load."""
    module = Classifier().train()
    optimizer = module.configure_optimizers()
    weights = [p for p in module.parameters() if p.ndim >= 2]
    fixed = (data.tensors[0][:check_batch], data.tensors[1][:check_batch])
    x, y = data.tensors[0][:batch], data.tensors[1][:batch]

    def loss(m: nn.Module, b: Any) -> torch.Tensor:
        return nn.functional.cross_entropy(m.model(b[0]), b[1])

    checks, steps = [], []
    for _ in range(rounds + 1):  # the first round warms up
        started = time.perf_counter()
        optimizer.zero_grad()
        loss(module, (x, y)).backward()
        optimizer.step()
        steps.append(time.perf_counter() - started)
        started = time.perf_counter()
        scale_check(module, weights, loss, fixed)
        checks.append(time.perf_counter() - started)
    check, step = statistics.median(checks[1:]), statistics.median(steps[1:])
    return check, check / step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=110, help="steps per run (one epoch)")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the timed window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.steps - args.warmup < 50:
        parser.error("the timed window (steps - warmup) must hold at least one default logging step (50)")

    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    count = args.steps * args.batch_size
    data = TensorDataset(torch.randn(count, 3, 32, 32, generator=generator), torch.randint(0, 10, (count,)))
    configs = ["none", "default", "every step"]
    wall: dict[str, list[float]] = {c: [] for c in configs}
    share: dict[str, list[float]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            for config in configs:
                seconds, in_hooks = run(config, data, args, root)
                wall[config].append(seconds)
                share[config].append(in_hooks)
                print(
                    f"repeat {repeat}: {config:>10}: {1000 * seconds:.1f} ms/step, "
                    f"{100 * in_hooks:.2f}% of the window in the monitors' hooks",
                    flush=True,
                )
    defaults = ScaleInvarianceMonitor()
    check, check_steps = check_cost_in_steps(data, defaults.check_batch_size or args.batch_size, args.batch_size)
    periodic = check_steps / defaults.check_every_n_steps
    step = min(wall["none"])
    print(
        f"ResNet20, batch {args.batch_size}, {torch.get_num_threads()} threads, {args.steps - args.warmup} timed "
        f"steps, best of {args.repeats}: {1000 * step:.1f} ms/step without monitors"
    )
    for config, goal in (("default", 0.97), ("every step", 0.85)):
        in_run = 1.0 - statistics.median(share[config]) - periodic  # the window holds no periodic check: add it
        a_b = step / min(wall[config])
        verdict = "ok" if in_run >= goal else "BELOW GOAL"
        print(
            f"throughput ratio, monitors at {config} interval: {in_run:.3f} in-run (1 - median hook share - "
            f"periodic check), {a_b:.3f} A/B (best windows) (goal >= {goal}) {verdict}"
        )
    print(
        f"scale check ({defaults.check_batch_size} samples): {1000 * check:.0f} ms = {check_steps:.1f} steps, once "
        f"after the first step, then every {defaults.check_every_n_steps} steps "
        f"(+{100 * periodic:.2f}%, included above)"
    )


if __name__ == "__main__":
    main()
