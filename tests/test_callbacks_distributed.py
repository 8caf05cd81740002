"""The monitors under real 2-process training on CPU (gloo): DDP and FSDP2 against a single-process run.

* DDP (``ddp_spawn``): replicated parameters, no collective in the monitors; rank 0 writes the same numbers a
  single process with the same global batch writes.
* FSDP2 through Lightning's ``ModelParallelStrategy`` (``fully_shard``, DTensor parameters), launched as a script
  (Lightning re-executes it for rank 1): per-layer squares summed across ranks, then the square root.
* The norm code itself (:class:`~lightning_decay.diagnostics.sharded_norms.ShardedTensors`) on raw torch FSDP2 and FSDP1
  (flat shards) in 2 spawned processes, including uneven shards, empty shards and a tensor split along dim 1.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from lightning_decay.callbacks import EffectiveDecayMonitor, ScaleInvarianceMonitor, WeightNormMonitor
from lightning_decay.diagnostics.sharded_norms import ShardedTensors
from tests.process_exit import SpawnDDP, exit_now
from tests.test_callbacks import BATCH, STEPS, Net, classification_data, read_metrics

REPO = Path(__file__).resolve().parents[1]
# Numbers that depend on each rank's own data (the scale check uses the rank's first batch) are not compared.
RANK_LOCAL = ("scale_invariance/loss_change/", "train_loss")


class DataParallelNet(Net):
    """:class:`Net` whose rank r trains on samples r, r + world, ... of each global batch (Lightning's automatic
    sampler would shuffle), and which shards its Linear layers with FSDP2 under ``ModelParallelStrategy``."""

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        data = classification_data()
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        return DataLoader(data, batch_size=BATCH // world, sampler=sampler)

    def configure_model(self) -> None:
        if self.device_mesh is None:
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)


def monitors() -> list[pl.Callback]:
    return [WeightNormMonitor(per_module=True), EffectiveDecayMonitor(), ScaleInvarianceMonitor()]


def run_fit(root: Path, **trainer_options: Any) -> dict[int, dict[str, float]]:
    train(root, **trainer_options)
    return read_metrics(root / "csv")


def train(root: Path, **trainer_options: Any) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=1,
        log_every_n_steps=1,
        logger=CSVLogger(root, name="csv"),
        callbacks=monitors(),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        **trainer_options,
    )
    trainer.fit(DataParallelNet("adamw"))
    return trainer


def assert_same_metrics(single: dict[int, dict[str, float]], sharded: dict[int, dict[str, float]]) -> int:
    """Every monitored key of the single-process run is in the distributed run with the same value."""
    assert sorted(single) == sorted(sharded)
    compared = 0
    for step, row in single.items():
        for key, value in row.items():
            if key.startswith(RANK_LOCAL) or key in ("epoch",):
                continue
            assert key in sharded[step], (step, key)
            assert sharded[step][key] == pytest.approx(value, rel=2e-4, abs=2e-6), (step, key)
            compared += 1
    return compared


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, float]]:
    """The single-process reference run (one global batch of BATCH samples per step)."""
    return run_fit(tmp_path_factory.mktemp("single"))


def monitor_rows_per_step(root: Path) -> dict[int, int]:
    """``step -> number of metrics.csv rows holding any monitor key`` (rank 0's file, as written)."""
    (path,) = root.rglob("metrics.csv")
    counts: dict[int, int] = {}
    with open(path) as handle:
        for row in csv.DictReader(handle):
            if any(value and key.startswith(("weight_norm", "decay_factor", "scale_invariance/")) for key, value
                   in row.items()):
                counts[int(row["step"])] = counts.get(int(row["step"]), 0) + 1
    return counts


def test_ddp_matches_single_process(tmp_path: Path, single: dict[int, dict[str, float]]) -> None:
    ddp = run_fit(tmp_path / "ddp", accelerator="cpu", devices=2, strategy=SpawnDDP())
    compared = assert_same_metrics(single, ddp)
    assert compared > 30 * STEPS
    assert ddp[0]["scale_invariance/invariant/net.0.weight"] == 1.0
    # Rank 0 writes each step's values of the three monitors as one row (rank 1 writes nothing).
    assert monitor_rows_per_step(tmp_path / "ddp") == dict.fromkeys(range(STEPS), 1)


FSDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from lightning.pytorch.strategies import ModelParallelStrategy

    from tests.process_exit import exit_now
    from tests.test_callbacks_distributed import train

    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    trainer = train(Path(sys.argv[1]), accelerator="cpu", devices=2, strategy=strategy)
    if trainer.is_global_zero:
        types = sorted({type(p).__name__ for p in trainer.lightning_module.parameters()})
        print("PARAM_TYPES", ",".join(types))
    exit_now()
    """
)


def test_lightning_fsdp2_matches_single_process(tmp_path: Path, single: dict[int, dict[str, float]]) -> None:
    """Lightning's ModelParallelStrategy (torch FSDP2) on CPU: DTensor parameters, same logged numbers."""
    script = tmp_path / "fsdp_run.py"
    script.write_text(FSDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("LOCAL_RANK", None)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "fsdp")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PARAM_TYPES DTensor" in result.stdout  # the parameters really were sharded
    compared = assert_same_metrics(single, read_metrics(tmp_path / "fsdp" / "csv"))
    assert compared > 30 * STEPS


# ----------------------------------------------------------------------------------------------------------------
# ShardedTensors on raw torch FSDP2 / FSDP1 / DTensor in two spawned processes
# ----------------------------------------------------------------------------------------------------------------


def _model() -> nn.Module:
    torch.manual_seed(0)
    # 7 rows split 4 / 3 over two ranks; a 1-row layer leaves rank 1 an empty shard; a conv for 4-D filters.
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 1), nn.Conv2d(1, 3, 2))


def _reference(model: nn.Module) -> dict[str, torch.Tensor]:
    params = [p.detach().double() for p in model.parameters()]
    other = [torch.sin(3 * p) for p in params]
    matrices = [i for i, p in enumerate(params) if p.ndim >= 2]
    rows = [p.reshape(p.shape[0], -1).norm(dim=1) for p in params if p.ndim >= 2]
    return {
        "norms": torch.stack([p.norm() for p in params]),
        "dots": torch.stack([(p * q).sum() for p, q in zip(params, other)]),
        "rows": torch.stack([torch.stack([r.min(), r.mean(), r.max()]) for r in rows]),
        "elementwise": torch.stack([torch.stack([q.min(), q.mean(), q.max()]) for q in other]),
        "matrices": torch.tensor(matrices),
    }


def _check(tensors: ShardedTensors, reference: dict[str, torch.Tensor], rows: bool) -> None:
    local = tensors.local()
    other = [torch.sin(3 * w) for w in local]
    close = dict(rtol=1e-5, atol=1e-6, check_dtype=False)
    torch.testing.assert_close(tensors.norms(), reference["norms"], **close)
    torch.testing.assert_close(tensors.dots(local, other), reference["dots"], **close)
    indices = list(range(len(tensors)))
    torch.testing.assert_close(tensors.elementwise_stats(other, indices), reference["elementwise"], **close)
    stats = tensors.row_norm_stats(reference["matrices"].tolist())
    if rows:
        torch.testing.assert_close(stats, reference["rows"], **close)
    else:
        assert stats is None


def _worker(rank: int, init_file: str) -> None:
    # A file rendezvous (no fixed port to collide with other jobs); gloo's own connections use ephemeral ports.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
        from torch.distributed.tensor import DTensor, Shard, distribute_tensor

        reference = _reference(_model())

        # FSDP2: DTensor parameters sharded along dim 0.
        model = _model()
        for layer in model:
            if any(True for _ in layer.parameters()):
                fully_shard(layer)
        fully_shard(model)
        params = list(model.parameters())
        assert all(isinstance(p, DTensor) for p in params)
        empty = torch.tensor(sum(p.to_local().numel() == 0 for p in params))
        dist.all_reduce(empty)
        assert int(empty) > 0  # some rank holds an empty shard
        fsdp2 = ShardedTensors(params)
        assert fsdp2.sharded
        _check(fsdp2, reference, rows=True)

        # A DTensor split along dim 1: row statistics gather it first.
        mesh = init_device_mesh("cpu", (2,))
        full = _model()[0].weight.detach()
        split = distribute_tensor(full, mesh, [Shard(1)])
        stats = ShardedTensors([split]).row_norm_stats([0])
        rows = full.norm(dim=1)
        torch.testing.assert_close(stats, torch.stack([rows.min(), rows.mean(), rows.max()]).reshape(1, 3))

        # FSDP1 with use_orig_params: flat 1-D local slices, summed over the FSDP process group.
        wrapped = FullyShardedDataParallel(_model(), device_id=torch.device("cpu"), use_orig_params=True)
        flat = [p for p in wrapped.parameters()]
        assert all(p.ndim == 1 for p in flat)
        _check(ShardedTensors(flat, flat_shard_group=wrapped.process_group), reference, rows=False)

        # Replicated tensors (DDP): no collective, plain local values.
        replicated = ShardedTensors(list(_model().parameters()))
        assert not replicated.sharded
        _check(replicated, reference, rows=True)
        # Without it a rank that finished its last collective first may close its connections while the other
        # still reads from them (gloo then aborts that process).
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    exit_now()  # see tests/process_exit.py


def test_sharded_norms_on_raw_fsdp2_fsdp1_and_dtensor(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"),), nprocs=2, join=True)
