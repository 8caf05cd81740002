"""Muon + Adam through Lightning: one optimizer to the Trainer, with every part of a fit that touches it.

SmallCNN without batch norm, ``optimizer: proxmuon`` with ``others: {optimizer: adamw-paper, ...,
flatten_convolutions: true}``: Muon steps the second convolution (flattened), AdamW the first convolution (the input
layer), the head and the biases. Checked in real fits: automatic optimization with gradient clipping,
``LearningRateMonitor``'s names for each part's groups, the monitors' decay factor per Muon group, the startup summary
(who went where, and why), a checkpoint resumed mid-epoch to the bitwise same end, and 2-process DDP (gloo).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_decay.callbacks import EffectiveDecayMonitor, ScaleInvarianceMonitor
from lightning_decay.experiments import CIFAR10DataModule, ImageClassifier
from lightning_decay.integration import DecaySettings
from lightning_decay.optim.combined import CombinedOptimizer
from tests.process_exit import SpawnDDP
from tests.test_ddp import SaveWeights, load_ranks
from tests.test_resume import (
    assert_identical,
    checkpoint_at,
    datamodule,
    final_state,
    fit_quietly,
    quiet_trainer,
    read_rows,
    single_thread,  # noqa: F401 - autouse fixture
)

OTHERS = {"optimizer": "adamw-paper", "lr": 3e-3, "weight_decay": 1e-4, "flatten_convolutions": True}
STOP = 7


def muon_classifier(**changes: Any) -> ImageClassifier:
    torch.manual_seed(0)
    settings = DecaySettings(optimizer="proxmuon", lr=0.02, weight_decay=2e-4, warmup_steps=2, min_lr_ratio=0.1,
                             others=OTHERS)
    return ImageClassifier(architecture="small_cnn", batch_norm=False, decay=settings.replace(**changes))


def fit(root: Path, data_dir: Path, ckpt_path: Path | None = None, world: int = 1, **options: Any):
    root.mkdir(parents=True, exist_ok=True)
    trainer = quiet_trainer(
        max_epochs=2, deterministic=True, logger=CSVLogger(root, name="csv", version=0), log_every_n_steps=1,
        limit_val_batches=1, enable_checkpointing=True, gradient_clip_val=0.5,
        callbacks=[
            LearningRateMonitor(logging_interval="step"), EffectiveDecayMonitor(),
            ScaleInvarianceMonitor(check_every_n_steps=4),
            ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=STOP, save_top_k=-1), SaveWeights(root),
        ],
        **({"devices": world} if world > 1 else {}),
        **options,
    )
    model = muon_classifier()
    data = CIFAR10DataModule(data_dir=str(data_dir), batch_size=8 // world, eval_batch_size=20 // (2 * world),
                             augment=False, seed=3)
    fit_quietly(trainer, model, datamodule=data, ckpt_path=ckpt_path)
    return trainer, model


def test_muon_with_adam_is_one_optimizer_to_lightning_and_resumes_exactly(tmp_path: Path, cifar_jpeg_dir: Path):
    full, model = fit(tmp_path / "full", cifar_jpeg_dir)
    (optimizer,) = full.optimizers
    assert isinstance(optimizer, CombinedOptimizer) and len(full.lr_scheduler_configs) == 1
    names = [group["name"] for group in optimizer.param_groups]
    assert names == ["muon/decay", "others/decay", "others/no_decay"]
    muon_params = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert muon_params == {id(model.network.features[4].weight)}  # the second convolution only
    # who went where and why, in the startup summary
    summary = model.decay_summary
    for reason in ("convolution filter (flattened): 1", "input layer (the first layer, on the raw input): 1",
                   "output head (the last nn.Linear): 1"):
        assert reason in summary, summary
    assert "proxmuon steps 1 tensors" in summary and "adamw-paper steps" in summary
    # each part's groups by name in the lr monitor; the Muon group's decay factor from its rule
    rows = read_rows(tmp_path / "full")
    logged = set().union(*rows.values())
    for name in names:
        assert f"lr-CombinedOptimizer/{name}" in logged
    eta = float(rows[4]["lr-CombinedOptimizer/muon/decay"]) / 0.02
    assert float(rows[4]["decay_factor/muon/decay"]) == pytest.approx(1 / (1 + eta * 2e-4), rel=1e-6)
    assert "scale_invariance/angular_update/network.features.4.weight" in logged
    # a fit resumed from the mid-epoch checkpoint ends bitwise where the uninterrupted one ends
    resumed, _ = fit(tmp_path / "resumed", cifar_jpeg_dir, ckpt_path=checkpoint_at(tmp_path / "full", STOP))
    assert_identical(final_state(full), final_state(resumed), "proxmuon + adamw-paper")


def test_a_conv_net_without_flattened_filters_is_an_error_before_training(cifar_jpeg_dir: Path):
    model = muon_classifier(others=None)
    trainer = quiet_trainer(max_steps=2)
    with pytest.raises(ValueError, match=r"no hidden weight matrix for Muon \(.*others.flatten_convolutions"):
        fit_quietly(trainer, model, datamodule=datamodule(cifar_jpeg_dir))
    assert trainer.global_step == 0


@pytest.mark.slow
def test_muon_with_adam_under_ddp_keeps_replicas_identical(tmp_path: Path, cifar_jpeg_dir: Path):
    """2 processes (gloo) against one with the same global batch (2 x 4 = 8): both ranks end bitwise identical, close
    to the single process (Muon orthogonalizes in bfloat16, so all-reduce rounding may move a coordinate by an ulp
    of bfloat16 now and then)."""
    fit(tmp_path / "single", cifar_jpeg_dir)
    fit(tmp_path / "ddp", cifar_jpeg_dir, world=2, accelerator="cpu", strategy=SpawnDDP())
    (reference,) = load_ranks(tmp_path / "single", 1)
    ranks = load_ranks(tmp_path / "ddp", 2)
    assert reference["step"] == ranks[0]["step"] == ranks[1]["step"] == 10
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
        torch.testing.assert_close(weight, reference["weights"][name], rtol=0.02, atol=2e-3, msg=name)
