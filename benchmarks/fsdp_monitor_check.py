"""GPU check: the monitors under Lightning's FSDP strategies log what a single-GPU run logs.

    python benchmarks/fsdp_monitor_check.py                  # needs >= 2 CUDA GPUs; runs all three modes
    python benchmarks/fsdp_monitor_check.py --devices 4

Lightning's ``strategy="fsdp"`` (torch FSDP1, flat-parameter shards; ``use_orig_params=True``) refuses the CPU, so
the test suite checks the CPU-capable paths instead (DDP and FSDP2 through ``ModelParallelStrategy`` in real
2-process runs, and the flat-shard reduction on raw torch FSDP1); this script covers FSDP1 under Lightning on GPUs:

1. ``single``: one GPU, the reference;
2. ``fsdp``: ``FSDPStrategy`` on ``--devices`` GPUs (parameters are this rank's 1-D slices; norms are the square
   root of the all-reduced sum of squared slices; per-neuron statistics and the numerical scale check are not
   available there, so ``ScaleInvarianceMonitor`` gets explicit ``layers=`` and ``check_every_n_steps=0``);
3. ``fsdp2``: ``ModelParallelStrategy`` (torch ``fully_shard``, DTensor parameters) on ``--devices`` GPUs.

Each mode runs in its own process (Lightning re-launches the script for the other ranks), then every value the
sharded runs logged is compared with the reference (relative tolerance 2e-4, TF32 off). Prints one line per mode
and exits non-zero on any mismatch or missing key.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

BATCH, STEPS = 16, 8
LAYERS = ["net.0.weight", "net.3.weight"]
# Depends on each rank's own batch (the scale check uses the rank's first batch).
RANK_LOCAL = ("scale_invariance/loss_change/", "train_loss", "epoch")
# Keys every mode must log (FSDP1 has no neuron norms: flattened shards).
REQUIRED = [
    "weight_norm/total",
    "weight_norm/net.0.weight",
    "decay_factor/decay",
    "lr/decay",
    "scale_invariance/cos/net.0.weight",
    "scale_invariance/angular_update/net.3.weight",
]


def train(mode: str, root: Path, devices: int, accelerator: str) -> None:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
    from torch import nn
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from lightning_decay.callbacks import EffectiveDecayMonitor, ScaleInvarianceMonitor, WeightNormMonitor
    from lightning_decay.optim import AdamW

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(6, 32, bias=False), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 3))

        def configure_model(self) -> None:
            if self.device_mesh is None:
                return
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(self.net, mesh=mesh)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            # By name: FSDP1's flat parameters are 1-D, so ndim cannot tell weights from biases there.
            named = [(n.replace("_fsdp_wrapped_module.", ""), p) for n, p in self.named_parameters()]
            decay = [p for n, p in named if n in LAYERS]
            no_decay = [p for n, p in named if n not in LAYERS]
            groups = [{"params": decay, "name": "decay"}, {"params": no_decay, "name": "no_decay", "weight_decay": 0.0}]
            optimizer = AdamW(groups, lr=0.05, weight_decay=0.2)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + 0.5 * step))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

        def train_dataloader(self) -> DataLoader:
            generator = torch.Generator().manual_seed(1)
            x = torch.randn(BATCH * STEPS, 6, generator=generator)
            y = (x @ torch.randn(6, 3, generator=generator)).argmax(1)
            data = TensorDataset(x, y)
            world, rank = self.trainer.world_size, self.trainer.global_rank
            sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
            return DataLoader(data, batch_size=BATCH // world, sampler=sampler)

    if mode == "single":
        strategy: Any = "auto"
        devices = 1
    elif mode == "fsdp":
        strategy = FSDPStrategy(sharding_strategy="FULL_SHARD")
    else:
        strategy = ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1)
    # The FSDP1 reference must monitor the same layers: its parameters are flat, so the default (ndim >= 2) and the
    # numerical check do not apply there.
    invariance = ScaleInvarianceMonitor(layers=LAYERS, check_every_n_steps=0)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        max_epochs=1,
        log_every_n_steps=1,
        logger=CSVLogger(root, name="csv"),
        callbacks=[WeightNormMonitor(per_module=True), EffectiveDecayMonitor(), invariance],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    trainer.fit(Net())


def read_metrics(root: Path) -> dict[int, dict[str, float]]:
    (path,) = root.rglob("metrics.csv")
    merged: dict[int, dict[str, float]] = defaultdict(dict)
    with open(path) as handle:
        for row in csv.DictReader(handle):
            step = int(row.pop("step"))
            merged[step].update({k: float(v) for k, v in row.items() if v != ""})
    return dict(merged)


def compare(reference: dict[int, dict[str, float]], sharded: dict[int, dict[str, float]]) -> list[str]:
    problems = []
    if sorted(reference) != sorted(sharded):
        problems.append(f"steps differ: {sorted(reference)} vs {sorted(sharded)}")
    for step, row in sharded.items():
        for key in REQUIRED:
            if key not in row:
                problems.append(f"step {step}: {key} missing")
        for key, value in row.items():
            if key.startswith(RANK_LOCAL):
                continue
            expected = reference.get(step, {}).get(key)
            if expected is None:
                problems.append(f"step {step}: {key} not in the single-GPU run")
            elif abs(value - expected) > 2e-4 * abs(expected) + 2e-6:
                problems.append(f"step {step}: {key} = {value!r}, single GPU {expected!r}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument(
        "--accelerator", default="cuda", help="cpu: a smoke test of the single and fsdp2 modes (FSDP1 needs CUDA)"
    )
    parser.add_argument("--mode", choices=["single", "fsdp", "fsdp2"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # a child run (and the ranks Lightning launches from it)
        train(args.mode, args.root, args.devices, args.accelerator)
        return 0

    import torch

    modes = ["single", "fsdp", "fsdp2"]
    if args.accelerator == "cpu":
        modes.remove("fsdp")
    elif torch.cuda.device_count() < 2:
        print(f"needs >= 2 CUDA GPUs, found {torch.cuda.device_count()}")
        return 2
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for mode in modes:
            root = Path(tmp) / mode
            command = [sys.executable, __file__, "--mode", mode, "--root", str(root), "--devices", str(args.devices)]
            command += ["--accelerator", args.accelerator]
            env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")}
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                print(f"{mode}: FAILED to run\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
                failed = True
                continue
            runs[mode] = read_metrics(root)
        for mode in ("fsdp", "fsdp2"):
            if mode not in runs or "single" not in runs:
                continue
            problems = compare(runs["single"], runs[mode])
            values = sum(len(row) for row in runs[mode].values())
            if problems:
                failed = True
                print(f"{mode}: {len(problems)} mismatches of {values} values:\n  " + "\n  ".join(problems[:30]))
            else:
                devices = f"{args.devices} {args.accelerator} devices"
                print(f"{mode}: OK, {values} logged values match the single-device run ({devices})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
