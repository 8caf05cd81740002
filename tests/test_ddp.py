"""Real 2-process DDP on CPU (gloo): ``ddp_spawn`` in-process and the script-launched ``ddp`` as a subprocess.

The fit: :class:`~lightning_decay.experiments.ImageClassifier` (SmallCNN without batch norm, whose per-rank batch
statistics would differ from one process's) on :class:`~lightning_decay.experiments.CIFAR10DataModule` (tiny JPEG set,
shuffled, no augmentation: augmentation is drawn per rank), 2 epochs, with the three monitors, and a NaN loss on
rank 1 only at one step under ``nonfinite_grads="skip"`` (the DDP all-reduce spreads it, both ranks skip).
Against one process with the same global batch (2 x 4 = 8) and the same NaN step:

* the final weights are bitwise identical on both ranks and equal to the single process's to float tolerance;
* the monitors' logged values (rank 0) match the single process's;
* a script-launched ``ddp`` fit resumed mid-epoch from its checkpoint ends bitwise where the uninterrupted one ends;
* with ``nonfinite_grads="raise"`` both ranks raise at the same step (no rank left waiting in a collective).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_decay.callbacks import EffectiveDecayMonitor, ScaleInvarianceMonitor, WeightNormMonitor
from lightning_decay.experiments import CIFAR10DataModule, ImageClassifier
from tests.process_exit import SpawnDDP
from tests.test_resume import (
    decay_settings,
    fit_quietly,
    quiet_trainer,
    read_rows,
    single_thread,  # noqa: F401 - autouse fixture
)

pytestmark = pytest.mark.slow  # process start-up dominates (about 20 s per launch); CI runs slow tests too

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 8
EPOCHS = 2  # 40 images: 5 steps per epoch
NAN_STEP, NAN_RANK = 3, 1
CHECKPOINT_STEP = 7
#: Values each rank computes from its own data: the step loss (logged unsynced) and the scale check's batch.
RANK_LOCAL = ("train/loss", "scale_invariance/loss_change/", "scale_invariance/invariant/", "epoch")


class NaNOnOneRank(ImageClassifier):
    """A NaN loss on rank ``nan_rank`` (the only rank of a single process: rank 0) at step ``nan_step``."""

    def __init__(self, nan_step: int = NAN_STEP, nan_rank: int = NAN_RANK, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nan_step, self.nan_rank = nan_step, nan_rank

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.global_step == self.nan_step and self.global_rank == self.nan_rank:
            loss = loss * math.nan
        return loss


class SaveWeights(Callback):
    """Each rank writes its final parameters and skipped-step count to ``root/weights-rank<r>.pt``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = {name: p.detach().clone() for name, p in pl_module.named_parameters()}
        skipped = pl_module.gradient_guard.skipped_steps  # type: ignore[attr-defined]
        torch.save({"weights": state, "skipped": skipped, "step": trainer.global_step},
                   self.root / f"weights-rank{trainer.global_rank}.pt")


def fit_case(root: Path, data_dir: Path, world: int, policy: str = "skip", ckpt_path: str | None = None,
             **trainer_options: Any) -> Trainer:
    """The fit of this module with ``world`` processes of batch ``GLOBAL_BATCH / world`` (also run by
    ``tests/ddp_script.py``); every rank writes its weights under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = NaNOnOneRank(
        nan_rank=NAN_RANK if world > 1 else 0, architecture="small_cnn", batch_norm=False,
        decay=decay_settings("proxadam", nonfinite_grads=policy),
    )
    data = CIFAR10DataModule(
        data_dir=str(data_dir), batch_size=GLOBAL_BATCH // world, eval_batch_size=20 // (2 * world), augment=False,
        seed=4,
    )
    trainer = quiet_trainer(
        max_epochs=EPOCHS, logger=CSVLogger(root, name="csv", version=0), log_every_n_steps=1,
        enable_checkpointing=True,
        callbacks=[
            WeightNormMonitor(), EffectiveDecayMonitor(), ScaleInvarianceMonitor(check_every_n_steps=4),
            SaveWeights(root),
            ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=CHECKPOINT_STEP, save_top_k=-1),
        ],
        **({"devices": world} if world > 1 else {}),
        **trainer_options,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="skipped an optimizer step")  # counted in the weights file
        fit_quietly(trainer, model, datamodule=data, ckpt_path=ckpt_path)
    return trainer


def load_ranks(root: Path, world: int) -> list[dict[str, Any]]:
    return [torch.load(root / f"weights-rank{r}.pt") for r in range(world)]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, cifar_jpeg_dir: Path) -> Path:
    """The single-process reference run (batch 8)."""
    root = tmp_path_factory.mktemp("single")
    fit_case(root, cifar_jpeg_dir, world=1)
    return root


def assert_matches_single(single: Path, ddp: Path) -> None:
    (reference,) = load_ranks(single, 1)
    ranks = load_ranks(ddp, 2)
    assert reference["skipped"] == 1 and reference["step"] == EPOCHS * 5
    for rank in ranks:
        assert rank["skipped"] == 1 and rank["step"] == EPOCHS * 5  # the NaN of rank 1 was skipped on both
        for name, weight in rank["weights"].items():
            assert torch.equal(weight, ranks[0]["weights"][name]), name  # replicas stay identical
            torch.testing.assert_close(weight, reference["weights"][name], rtol=1e-5, atol=1e-6, msg=name)
    # the monitors (and the synced validation metrics) logged by rank 0 = the single process's
    expected, got = read_rows(single), read_rows(ddp)
    assert sorted(expected) == sorted(got)
    compared = 0
    for step, row in expected.items():
        for key, value in row.items():
            if key.startswith(RANK_LOCAL):
                continue
            assert key in got[step], (step, key)
            assert float(got[step][key]) == pytest.approx(float(value), rel=2e-4, abs=2e-6, nan_ok=True), (step, key)
            compared += 1
    assert compared > 200
    assert float(got[NAN_STEP]["nonfinite/skipped_steps"]) == 1.0


def test_ddp_spawn_matches_single_process(single: Path, tmp_path: Path, cifar_jpeg_dir: Path) -> None:
    fit_case(tmp_path, cifar_jpeg_dir, world=2, accelerator="cpu", strategy=SpawnDDP())
    assert_matches_single(single, tmp_path)


@pytest.fixture(scope="module")
def script_run(tmp_path_factory: pytest.TempPathFactory, cifar_jpeg_dir: Path) -> tuple[Path, str]:
    """``tests/ddp_script.py`` run once: the full fit, its resume, and the ``raise`` fit (see the script)."""
    root = tmp_path_factory.mktemp("script_ddp")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "ddp_script.py"), str(root), str(cifar_jpeg_dir)],
        env=env, cwd=root, capture_output=True, text=True, timeout=400,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return root, output


def test_script_launched_ddp_matches_single_process(single: Path, script_run: tuple[Path, str]) -> None:
    root, output = script_run
    assert "STRATEGY DDPStrategy WORLD 2" in output
    assert_matches_single(single, root / "full")


def test_script_launched_ddp_resumes_mid_epoch_exactly(script_run: tuple[Path, str]) -> None:
    root, _ = script_run
    for uninterrupted, after_resume in zip(load_ranks(root / "full", 2), load_ranks(root / "resumed", 2)):
        assert after_resume["step"] == EPOCHS * 5
        for name, weight in uninterrupted["weights"].items():
            assert torch.equal(weight, after_resume["weights"][name]), name


def test_ddp_raise_stops_both_ranks(script_run: tuple[Path, str]) -> None:
    """NaN on rank 1 only: after the all-reduce both ranks see it and raise at the same step (a rank left behind
    would hang in the next collective and the script would time out)."""
    _, output = script_run
    raised = re.findall(r"RAISED rank (\d): (.*?)(?=RAISED rank|$)", output, flags=re.MULTILINE)
    assert sorted(rank for rank, _ in raised) == ["0", "1"], output[-3000:]
    for _, message in raised:
        assert f"'network.features.0.weight' and 5 more parameter(s) at global step {NAN_STEP}" in message
