"""The monitoring callbacks in real (tiny) Trainer runs, checked against independent computations.

Every logged number is read back from a CSVLogger's ``metrics.csv`` (or a W&B offline run's file) and compared with
a value computed here from weights, gradients and optimizer state recorded by a plain callback or loaded from the
checkpoint, with the formulas written out again (not taken from the package).
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_decay.callbacks import EffectiveDecayMonitor, ScaleInvarianceMonitor, TrainingReport, WeightNormMonitor
from lightning_decay.diagnostics import check_scale_freeness, param_group_names, read_metrics_csv
from lightning_decay.diagnostics.decay import infer_decay_metrics
from lightning_decay.optim import AdamL2, AdamP, AdamW, KernelAdam, ProxAdam
from lightning_decay.optim.combined import CombinedOptimizer
from lightning_decay.optim.registry import DECAY_METRICS, REGISTRY
from lightning_decay.optim.rules import AdamL2Rule, KernelDecayRule, KernelSettings, TorchConventionRule

LR0, WD = 0.05, 0.2
BATCH, STEPS = 8, 6


def schedule(step: int) -> float:
    """The LambdaLR multiplier of the tests: eta_t for optimizer step t (0-based)."""
    return 1.0 / (1.0 + 0.5 * step)


def read_metrics(directory: str | Path) -> dict[int, dict[str, float]]:
    """``step -> {key: value}`` merged over all rows of the ``metrics.csv`` under ``directory``."""
    (path,) = Path(directory).rglob("metrics.csv")
    merged: dict[int, dict[str, float]] = defaultdict(dict)
    with open(path) as handle:
        for row in csv.DictReader(handle):
            step = int(row.pop("step"))
            merged[step].update({k: float(v) for k, v in row.items() if v != ""})
    return dict(merged)


def classification_data(samples: int = BATCH * STEPS, features: int = 6, seed: int = 1) -> TensorDataset:
    """A learnable 3-class problem (labels from a fixed linear map)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=generator)
    y = (x @ torch.randn(features, 3, generator=generator)).argmax(1)
    return TensorDataset(x, y)


def make_optimizer(variant: str, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if variant == "adamw":
        return AdamW(groups, lr=LR0, weight_decay=WD)
    if variant == "adamw-paper":
        return AdamW(groups, lr=LR0, weight_decay=WD, convention="paper")
    if variant == "proxadam":
        return ProxAdam(groups, lr=LR0, weight_decay=WD)
    if variant == "torch-adamw":
        return torch.optim.AdamW(groups, lr=LR0, weight_decay=WD)
    if variant == "adamp":
        return AdamP(groups, lr=LR0, weight_decay=WD, fused=False)
    if variant == "adaml2":
        return AdamL2(groups, lr=LR0, weight_decay=WD)
    if variant == "sgd":
        return torch.optim.SGD(groups, lr=LR0, weight_decay=WD, momentum=0.9)
    if variant == "torch-adam":
        return torch.optim.Adam(groups, lr=LR0, weight_decay=WD)
    if variant == "torch-adam-decoupled":
        return torch.optim.Adam(groups, lr=LR0, weight_decay=WD, decoupled_weight_decay=True)
    if variant == "halved-decay":
        return KernelAdam(groups, lr=LR0, weight_decay=WD, rule=HalvedDecayRule())
    if variant == "adaml2-unregistered":
        return KernelAdam(groups, lr=LR0, weight_decay=WD, rule=RenamedAdamL2Rule())
    raise ValueError(variant)


class Net(pl.LightningModule):
    """Linear (no bias) -> LayerNorm -> ReLU -> Linear head: the first weight is scale-invariant, the head not."""

    def __init__(self, variant: str = "adamw", named_groups: bool = True, scheduler: bool = True, hidden: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(6, hidden, bias=False), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, 3)
        )
        self.variant, self.named_groups, self.scheduler = variant, named_groups, scheduler

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        decay = [p for p in self.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.ndim < 2]
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.named_groups:
            groups[0]["name"], groups[1]["name"] = "decay", "no_decay"
        optimizer = make_optimizer(self.variant, groups)
        if not self.scheduler:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class Recorder(Callback):
    """Plain copies of weights (before the first step and after every batch), gradients and group lrs."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.weights = [self._snapshot(pl_module)]
        self.grads: list[dict[str, torch.Tensor]] = []
        self.lrs: list[list[float]] = []

    @staticmethod
    def _snapshot(pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone().double() for n, p in pl_module.named_parameters()}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.grads.append({n: p.grad.detach().clone().double() for n, p in pl_module.named_parameters()})
        self.lrs.append([g["lr"] for g in optimizer.param_groups])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.weights.append(self._snapshot(pl_module))


def fit(
    tmp_path: Path,
    module: pl.LightningModule,
    callbacks: list[Callback],
    data: Dataset | None = None,
    loggers: list[Any] | None = None,
    **trainer_options: Any,
) -> pl.Trainer:
    options: dict[str, Any] = dict(
        max_epochs=1,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    options.update(trainer_options)
    logger = loggers if loggers is not None else CSVLogger(tmp_path, name="csv")
    trainer = pl.Trainer(logger=logger, callbacks=callbacks, **options)
    trainer.fit(module, DataLoader(data or classification_data(), batch_size=BATCH))
    return trainer


def expected_factor(variant: str, lr: float, eta: float) -> float:
    """The per-step decay factor written out from each method's definition."""
    if variant in ("adamw", "torch-adamw"):
        return 1.0 - lr * WD
    if variant == "adamw-paper":
        return 1.0 - eta * WD
    if variant == "proxadam":
        return 1.0 / (1.0 + eta * WD)
    raise ValueError(variant)


def row_norms(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).pow(2).sum(1).sqrt()


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = float((a * b).sum() / (a.norm() * b.norm()))
    return math.acos(min(1.0, cos))


PARAMS = ["net.0.weight", "net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"]
MATRICES = ["net.0.weight", "net.3.weight"]


@pytest.mark.parametrize("variant", ["adamw", "adamw-paper", "proxadam", "torch-adamw"])
def test_logged_values_match_independent_computations(tmp_path: Path, variant: str) -> None:
    recorder = Recorder()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    monitors = [WeightNormMonitor(per_module=True), EffectiveDecayMonitor(), ScaleInvarianceMonitor()]
    fit(tmp_path, Net(variant), [recorder, *monitors, checkpoint], enable_checkpointing=True)
    metrics = read_metrics(tmp_path / "csv")
    assert sorted(metrics) == list(range(STEPS))  # one logging step per optimizer step, Lightning's step numbering
    steps_per_epoch = STEPS
    for step in range(STEPS):
        row = metrics[step]
        eta = schedule(step)
        lr = LR0 * eta
        assert recorder.lrs[step][0] == pytest.approx(lr, rel=1e-12)  # the lr the step really used
        assert row["lr/decay"] == pytest.approx(lr, rel=1e-6)
        assert row["eta/decay"] == pytest.approx(eta, rel=1e-6)
        factor = expected_factor(variant, lr, eta)
        assert row["decay_factor/decay"] == pytest.approx(factor, rel=1e-9)
        assert row["decay_factor/no_decay"] == 1.0
        assert row["decay_timescale_steps/decay"] == pytest.approx(1.0 / (1.0 - factor), rel=1e-6)
        assert row["decay_timescale_epochs/decay"] == pytest.approx(1.0 / (1.0 - factor) / steps_per_epoch, rel=1e-6)
        assert "decay_timescale_steps/no_decay" not in row  # infinite: omitted

        before, after, grads = recorder.weights[step], recorder.weights[step + 1], recorder.grads[step]
        for name in PARAMS:
            assert row[f"weight_norm/{name}"] == pytest.approx(float(after[name].norm()), rel=1e-5)
        total = math.sqrt(sum(float(after[n].pow(2).sum()) for n in PARAMS))
        assert row["weight_norm/total"] == pytest.approx(total, rel=1e-5)
        layer_norm = math.sqrt(float(after["net.1.weight"].pow(2).sum() + after["net.1.bias"].pow(2).sum()))
        assert row["weight_norm_module/net.1"] == pytest.approx(layer_norm, rel=1e-5)
        for name in MATRICES:
            norms = row_norms(after[name])
            assert row[f"neuron_norm_min/{name}"] == pytest.approx(float(norms.min()), rel=1e-5)
            assert row[f"neuron_norm_mean/{name}"] == pytest.approx(float(norms.mean()), rel=1e-5)
            assert row[f"neuron_norm_max/{name}"] == pytest.approx(float(norms.max()), rel=1e-5)
            w, g = before[name], grads[name]
            cos = float((w * g).sum() / (w.norm() * g.norm()))
            assert row[f"scale_invariance/cos/{name}"] == pytest.approx(cos, abs=1e-5)
            relative = float((after[name] - w).norm() / w.norm())
            assert row[f"scale_invariance/relative_update/{name}"] == pytest.approx(relative, rel=1e-4)
            assert row[f"scale_invariance/angular_update/{name}"] == pytest.approx(angle(w, after[name]), rel=1e-3)
        assert "weight_norm/net.1.bias" in row and "scale_invariance/cos/net.1.bias" not in row  # default: ndim >= 2

    # The last logged norms against the checkpoint written at the end of training.
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    last = metrics[STEPS - 1]
    for name in PARAMS:
        assert last[f"weight_norm/{name}"] == pytest.approx(float(state[name].double().norm()), rel=1e-5)


def test_scale_invariance_labels_cosine_and_effective_lr(tmp_path: Path) -> None:
    """cos(w, g) ~ 0 for a Linear followed by LayerNorm, clearly not for the head; the numerical check agrees."""
    data = classification_data(samples=BATCH * 40)
    monitor, recorder = ScaleInvarianceMonitor(check_every_n_steps=10), Recorder()
    fit(tmp_path, Net("adamw", scheduler=False, hidden=16), [recorder, monitor], data=data, log_every_n_steps=2)
    metrics = read_metrics(tmp_path / "csv")
    steps = sorted(metrics)
    assert steps == list(range(1, 40, 2))
    invariant_cos = [abs(metrics[s]["scale_invariance/cos/net.0.weight"]) for s in steps]
    head_cos = [abs(metrics[s]["scale_invariance/cos/net.3.weight"]) for s in steps]
    assert max(invariant_cos) < 1e-3
    assert sum(head_cos[len(steps) // 2 :]) / (len(steps) - len(steps) // 2) > 0.05
    checks = [s for s in steps if "scale_invariance/invariant/net.0.weight" in metrics[s]]
    assert checks == [1, 11, 21, 31]  # first logging step, then every >= 10 steps
    for s in checks:
        assert metrics[s]["scale_invariance/invariant/net.0.weight"] == 1.0
        assert metrics[s]["scale_invariance/invariant/net.3.weight"] == 0.0
        assert metrics[s]["scale_invariance/loss_change/net.0.weight"] < 1e-4
        assert metrics[s]["scale_invariance/loss_change/net.3.weight"] > 1e-2
    assert monitor.labels == {"net.0.weight": True, "net.3.weight": False}
    # Effective lr and equilibrium predictions only for the layer labeled scale-invariant.
    last = metrics[steps[-1]]
    assert "scale_invariance/effective_lr/net.3.weight" not in last
    assert "scale_invariance/angular_update_equilibrium/net.3.weight" not in last
    effective_lr = last["scale_invariance/effective_lr/net.0.weight"]
    assert monitor.last_metrics["scale_invariance/effective_lr/net.0.weight"] == effective_lr  # same step
    assert effective_lr == pytest.approx(LR0 / float(recorder.weights[-1]["net.0.weight"].norm()), rel=1e-5)
    k = (1 - 0.9) / (1 + 0.9)
    assert last["scale_invariance/angular_update_equilibrium/net.0.weight"] == pytest.approx(
        math.atan(math.sqrt(k * (1 - (1 - LR0 * WD) ** 2)) / (1 - LR0 * WD)), rel=1e-9
    )
    assert last["scale_invariance/angular_update_equilibrium/net.0.weight"] == pytest.approx(
        math.sqrt(2 * LR0 * WD * k), rel=0.01
    )


class NoiseModule(pl.LightningModule):
    """A scale-invariant toy: loss = <LayerNorm(W x), xi> with fresh random x and xi every step (pure noise)."""

    def __init__(self, variant: str, lr: float, weight_decay: float, inputs: int = 32, outputs: int = 64):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(inputs, outputs, bias=False)
        self.variant, self.lr, self.weight_decay = variant, lr, weight_decay

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, xi = batch
        return (nn.functional.layer_norm(self.linear(x), (self.linear.out_features,)) * xi).sum() / x.shape[0]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.variant == "proxadam":
            return ProxAdam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay, convention=self.variant)


class NoiseData(Dataset):
    def __init__(self, steps: int, batch: int = 64, inputs: int = 32, outputs: int = 64) -> None:
        generator = torch.Generator().manual_seed(3)
        self.x = torch.randn(steps * batch, inputs, generator=generator)
        self.xi = torch.randn(steps * batch, outputs, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.xi[index]


@pytest.mark.parametrize(
    ("variant", "weight_decay"), [("torch", 1.0), ("proxadam", 0.01)], ids=["adamw", "proxadam"]
)
def test_angular_update_reaches_rotational_equilibrium(tmp_path: Path, variant: str, weight_decay: float) -> None:
    """After one decay timescale (1 / (lr wd) = 100 steps), the mean angular update over the last 200 of 300 steps
    is within 10% of the prediction (and of Kosson et al.'s sqrt(2 lr wd (1 - beta1) / (1 + beta1)) for AdamW)."""
    lr, steps, beta1 = 0.01, 300, 0.9
    monitor = ScaleInvarianceMonitor(check_every_n_steps=0)
    trainer = pl.Trainer(
        max_epochs=1,
        log_every_n_steps=5,
        logger=CSVLogger(tmp_path, name="csv"),
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(NoiseModule(variant, lr, weight_decay), DataLoader(NoiseData(steps), batch_size=64))
    metrics = read_metrics(tmp_path / "csv")
    late = [metrics[s] for s in sorted(metrics) if s >= 100]
    measured = sum(r["scale_invariance/angular_update/linear.weight"] for r in late) / len(late)
    predicted = late[-1]["scale_invariance/angular_update_equilibrium/linear.weight"]
    eta_wd = lr * weight_decay if variant == "torch" else weight_decay  # per-step shrink, to first order
    closed_form = math.sqrt(2 * eta_wd * (1 - beta1) / (1 + beta1))
    assert predicted == pytest.approx(closed_form, rel=0.01)
    print(f"{variant}: measured {measured:.5f} rad/step, predicted {predicted:.5f} ({measured / predicted:.3f}x)")
    assert measured == pytest.approx(predicted, rel=0.10)
    # The equilibrium norm: its closed form sqrt(lr C / (2 wd)) for AdamW, and the trained weights' norm within 10%.
    predicted_norm = late[-1]["scale_invariance/weight_norm_equilibrium/linear.weight"]
    if variant == "torch":
        assert predicted_norm == pytest.approx(math.sqrt(lr * 32 * 64 / (2 * weight_decay)), rel=0.01)
    norms = [float(p.detach().norm()) for p in trainer.lightning_module.parameters()]
    assert norms[0] == pytest.approx(predicted_norm, rel=0.10)


def test_adamp_elementwise_factor_against_checkpoint_state(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    fit(tmp_path, Net("adamp"), [EffectiveDecayMonitor(), checkpoint], enable_checkpointing=True)
    last = read_metrics(tmp_path / "csv")[STEPS - 1]
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    optimizer_state = saved["optimizer_states"][0]
    lr = LR0 * schedule(STEPS - 1)
    beta2, eps = 0.999, 1e-8
    params = [n for n, p in Net().named_parameters() if p.ndim >= 2]  # the decay group, in order
    all_factors = []
    for index, name in enumerate(params):
        state = optimizer_state["state"][index]
        step = float(state["step"])
        denominator = state["exp_avg_sq"].double().sqrt() / math.sqrt(1 - beta2**step) + eps
        factor = 1.0 / (1.0 + lr * WD / denominator)
        all_factors.append(factor.reshape(-1))
        assert last[f"decay_factor_min/{name}"] == pytest.approx(float(factor.min()), rel=1e-6)
        assert last[f"decay_factor_mean/{name}"] == pytest.approx(float(factor.mean()), rel=1e-6)
        assert last[f"decay_factor_max/{name}"] == pytest.approx(float(factor.max()), rel=1e-6)
    assert last["decay_factor/decay"] == pytest.approx(float(torch.cat(all_factors).mean()), rel=1e-6)
    assert float(torch.cat(all_factors).min()) < 0.999  # a real decay, not a trivial 1
    assert "decay_factor_mean/net.1.bias" not in last  # the no-decay group: nothing to report
    assert "decay_timescale_steps/decay" not in last


def test_adaml2_preconditioned_decay_and_l2_ratio(tmp_path: Path) -> None:
    recorder = Recorder()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    fit(tmp_path, Net("adaml2"), [recorder, EffectiveDecayMonitor(), checkpoint], enable_checkpointing=True)
    metrics = read_metrics(tmp_path / "csv")
    for step in range(STEPS):  # ratio of the L2 term wd * w to the loss gradient, before each step
        for name in MATRICES:
            w, g = recorder.weights[step][name], recorder.grads[step][name]
            expected = WD * float(w.norm()) / float(g.norm())
            assert metrics[step][f"l2_grad_ratio/{name}"] == pytest.approx(expected, rel=1e-5)
    optimizer_state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["optimizer_states"][0]
    lr = LR0 * schedule(STEPS - 1)
    last = metrics[STEPS - 1]
    for index, name in enumerate(MATRICES):
        state = optimizer_state["state"][index]
        denominator = state["exp_avg_sq"].double().sqrt() / math.sqrt(1 - 0.999 ** float(state["step"])) + 1e-8
        decay = lr * WD / denominator
        assert last[f"preconditioned_decay_mean/{name}"] == pytest.approx(float(decay.mean()), rel=1e-6)
        assert last[f"preconditioned_decay_max/{name}"] == pytest.approx(float(decay.max()), rel=1e-6)
    assert "decay_factor/decay" not in last  # L2 has no decoupled factor


def test_cautious_decayed_fraction_against_checkpoint_state(tmp_path: Path) -> None:
    """``decayed_fraction`` is the share of coordinates with ``m_t * w >= 0`` (m: Adam's first moment, whose sign
    is the update's), per layer and weighted over the group, from the state and weights saved after the last step."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    fit(tmp_path, RegistryNet("adamw-cautious"), [EffectiveDecayMonitor(), checkpoint], enable_checkpointing=True)
    last = read_metrics(tmp_path / "csv")[STEPS - 1]
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    decayed = total = 0
    for index, name in enumerate(MATRICES):  # the decay group, in order
        agree = saved["optimizer_states"][0]["state"][index]["exp_avg"].double() * saved["state_dict"][name].double()
        decayed, total = decayed + int((agree >= 0).sum()), total + agree.numel()
        assert last[f"decayed_fraction/{name}"] == pytest.approx(float((agree >= 0).double().mean()), rel=1e-6)
    assert last["decayed_fraction/decay"] == pytest.approx(decayed / total, rel=1e-6)
    assert 0.2 < decayed / total < 0.8  # a real mask, neither all nor nothing
    assert "decayed_fraction/no_decay" not in last and "decayed_fraction/net.1.bias" not in last


def test_group_names_match_learning_rate_monitor(tmp_path: Path) -> None:
    lr_monitor = LearningRateMonitor()
    fit(tmp_path, Net("adamw", named_groups=True), [lr_monitor, EffectiveDecayMonitor()])
    row = read_metrics(tmp_path / "csv")[STEPS - 1]
    lr_keys = sorted(k for k in row if k.startswith("lr-AdamW/"))
    assert lr_keys == ["lr-AdamW/decay", "lr-AdamW/no_decay"]
    for key in lr_keys:
        group = key.removeprefix("lr-AdamW/")
        assert f"decay_factor/{group}" in row

    unnamed = tmp_path / "unnamed"
    fit(unnamed, Net("sgd", named_groups=False), [LearningRateMonitor(), EffectiveDecayMonitor()])
    row = read_metrics(unnamed / "csv")[STEPS - 1]
    assert sorted(k for k in row if k.startswith("lr-SGD/")) == ["lr-SGD/pg1", "lr-SGD/pg2"]
    lr = LR0 * schedule(STEPS - 1)
    assert row["lr/pg1"] == pytest.approx(lr)
    # torch's SGD(weight_decay, momentum=0.9) is L2 through the momentum buffer: effective factor 1 - lr wd / (1 - mu)
    assert row["decay_factor/pg1"] == pytest.approx(1 - lr * WD / (1 - 0.9), rel=1e-9)
    assert row["decay_timescale_steps/pg1"] == pytest.approx((1 - 0.9) / (lr * WD), rel=1e-9)
    assert "scale_invariance/cos/net.0.weight" not in row


class TwoOptimizers(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b, self.c = nn.Linear(6, 3), nn.Linear(6, 3), nn.Linear(6, 3)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for optimizer, layer in zip(self.optimizers(), (self.a, self.b, self.c)):
            optimizer.zero_grad()
            self.manual_backward(nn.functional.cross_entropy(layer(x), y))
            optimizer.step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.AdamW([{"params": self.a.parameters(), "name": "a"}], lr=0.01),
            torch.optim.AdamW(self.b.parameters(), lr=0.02),
            torch.optim.SGD(self.c.parameters(), lr=0.03),
        ]


def test_group_names_with_several_optimizers_match_learning_rate_monitor(tmp_path: Path) -> None:
    lr_monitor = LearningRateMonitor()
    trainer = fit(tmp_path, TwoOptimizers(), [lr_monitor, EffectiveDecayMonitor()])
    ours = [name for names in param_group_names(trainer.optimizers) for name in names]
    assert ours == ["AdamW/a", "AdamW-1/pg1", "SGD/pg1"]
    row = read_metrics(tmp_path / "csv")[STEPS - 1]
    lightning_names = sorted(k.removeprefix("lr-") for k in row if k.startswith("lr-"))
    # LearningRateMonitor leaves a single unnamed group without a suffix; ours always has one.
    assert lightning_names == ["AdamW-1", "AdamW/a", "SGD"]
    assert row["lr/AdamW/a"] == 0.01 and row["lr/AdamW-1/pg1"] == 0.02 and row["lr/SGD/pg1"] == 0.03
    assert row["decay_factor/AdamW-1/pg1"] == pytest.approx(1 - 0.02 * 0.01)  # torch AdamW's default wd


def test_interval_layer_filter_and_accumulation(tmp_path: Path) -> None:
    monitors = [
        WeightNormMonitor(log_every_n_steps=2, layers=r"^net\.0\."),
        EffectiveDecayMonitor(log_every_n_steps=2),
        ScaleInvarianceMonitor(log_every_n_steps=2, layers=["net.3.weight"], check_every_n_steps=0),
    ]
    # 12 batches, 2 per optimizer step: 6 optimizer steps; logged after steps 2, 4, 6 (Lightning steps 1, 3, 5).
    fit(tmp_path, Net("adamw"), monitors, data=classification_data(BATCH * 12), accumulate_grad_batches=2)
    metrics = read_metrics(tmp_path / "csv")
    assert sorted(s for s, row in metrics.items() if "weight_norm/total" in row) == [1, 3, 5]
    assert sorted(s for s, row in metrics.items() if "lr/decay" in row) == [1, 3, 5]
    row = metrics[3]
    assert sorted(k for k in row if k.startswith("weight_norm/")) == ["weight_norm/net.0.weight", "weight_norm/total"]
    assert sorted(k.split("/", 2)[2] for k in row if k.startswith("scale_invariance/cos/")) == ["net.3.weight"]
    assert row["decay_timescale_epochs/decay"] == pytest.approx(row["decay_timescale_steps/decay"] / 6)
    assert not any("invariant/" in k for k in row)  # checks off


class BatchNormNet(pl.LightningModule):
    def __init__(self, with_dropout: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers = [nn.Linear(6, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU()]
        layers += [nn.Dropout(0.3)] if with_dropout else []
        self.net = nn.Sequential(*layers, nn.Linear(16, 3))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return AdamW(self.parameters(), lr=0.01, weight_decay=0.1)


def test_monitors_do_not_change_training(tmp_path: Path) -> None:
    """The numerical check restores weights, BatchNorm statistics and the RNG: same run with or without monitors."""
    runs = []
    for index, callbacks in enumerate(([], [WeightNormMonitor(), EffectiveDecayMonitor(), ScaleInvarianceMonitor(
        check_every_n_steps=1, check_batch_size=4
    )])):
        pl.seed_everything(7)
        module = BatchNormNet()
        fit(tmp_path / str(index), module, callbacks)
        runs.append(module.state_dict())
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key
    metrics = read_metrics(tmp_path / "1" / "csv")
    assert metrics[0]["scale_invariance/invariant/net.0.weight"] == 1.0  # Linear -> BatchNorm (train mode)
    assert metrics[0]["scale_invariance/invariant/net.4.weight"] == 0.0


def resumable_monitor() -> ScaleInvarianceMonitor:
    """Checks after optimizer steps 0, 5 and 10, logged with steps 3, 7 and 11: the check of step 5 (the first
    epoch's last batch) is not yet logged when the epoch-end checkpoint is written."""
    return ScaleInvarianceMonitor(log_every_n_steps=4, check_every_n_steps=5)


def test_scale_invariance_state_survives_checkpoint(tmp_path: Path) -> None:
    """The checkpoint holds the labels, when the check ran, its results not yet logged and the fixed batch, all
    readable with ``weights_only=True`` (Lightning's default for ``ckpt_path``); a resumed fit logs exactly what the
    uninterrupted one logs, and a checkpoint of an older version (no fixed batch, nothing pending) still loads."""
    monitor = resumable_monitor()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    fit(tmp_path / "first", Net("adamw"), [monitor, checkpoint], enable_checkpointing=True)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    (state,) = [v for k, v in saved.items() if k.startswith("ScaleInvarianceMonitor")]
    assert state["labels"] == {"net.0.weight": True, "net.3.weight": False}
    assert state["last_check_step"] == 5
    inputs, labels = classification_data().tensors
    fixed = state["fixed_batch"]  # the first training batch, as the loader collated it
    assert isinstance(fixed, list) and torch.equal(fixed[0], inputs[:BATCH]) and torch.equal(fixed[1], labels[:BATCH])
    pending = {prefix: dict(zip(names, values.tolist())) for prefix, names, values in state["pending_check"]}
    assert pending["scale_invariance/invariant/"] == {"net.0.weight": 1.0, "net.3.weight": 0.0}
    assert pending["scale_invariance/loss_change/"] == monitor.loss_changes
    from tests.test_resume import assert_identical  # here: test_resume imports the experiments package

    restored = resumable_monitor()
    restored.load_state_dict(state)
    assert_identical(restored.state_dict(), monitor.state_dict(), "monitor state")

    legacy = {k: v for k, v in state.items() if k not in ("fixed_batch", "pending_check")}
    old = resumable_monitor()
    old.load_state_dict(legacy)
    assert old.labels == monitor.labels and old._fixed_batch is None and old.state_dict()["pending_check"] == []

    def two_epochs(name: str, callback: ScaleInvarianceMonitor, ckpt_path: Path | None = None) -> pl.Trainer:
        trainer = pl.Trainer(
            max_epochs=2, log_every_n_steps=1, logger=CSVLogger(tmp_path, name=name), callbacks=[callback],
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        )
        trainer.fit(Net("adamw"), DataLoader(classification_data(), batch_size=BATCH), ckpt_path=ckpt_path)
        return trainer

    resumed, uninterrupted = resumable_monitor(), resumable_monitor()
    two_epochs("resumed", resumed, tmp_path / "ckpt" / "last.ckpt")
    two_epochs("uninterrupted", uninterrupted)
    got, expected = read_metrics(tmp_path / "resumed"), read_metrics(tmp_path / "uninterrupted")
    assert min(got) == STEPS  # continued from the checkpoint
    # Resuming keeps the schedule (the next check 5 steps after the last one, at step 10, not right after the
    # resume) and logs the check of step 5 with step 7, as the uninterrupted fit does.
    checks = [s for s, row in got.items() if "scale_invariance/invariant/net.0.weight" in row]
    assert checks == [7, 11]
    assert resumed.state_dict()["last_check_step"] == 10
    compared = 0
    for step, row in got.items():
        for key, value in row.items():
            if key.startswith("scale_invariance/"):
                assert expected[step][key] == value, (step, key)
                compared += 1
    assert compared > 20
    assert resumed.last_metrics == uninterrupted.last_metrics


def test_scale_invariance_fixed_batch_that_a_checkpoint_cannot_hold(tmp_path: Path) -> None:
    """A fixed batch with a named tuple is left out of the state (with a warning), which stays plain."""
    from collections import namedtuple

    Batch = namedtuple("Batch", ["x", "y"])
    monitor = ScaleInvarianceMonitor()
    monitor._fixed_batch = Batch(torch.zeros(2, 6), torch.zeros(2, dtype=torch.long))
    with pytest.warns(UserWarning, match="fixed check batch holds a .*Batch"):
        state = monitor.state_dict()
    assert "fixed_batch" not in state
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monitor.state_dict()  # warned once already: no second warning


def mlp_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize(
    ("variant", "scale_free"),
    [("adamw", True), ("adamw-paper", True), ("proxadam", True), ("adamp", False), ("adaml2", False)],
)
def test_check_scale_freeness(variant: str, scale_free: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    data = classification_data(64)
    batches = [(data.tensors[0][i : i + 16], data.tensors[1][i : i + 16]) for i in range(0, 64, 16)]
    before = [p.detach().clone() for p in model.parameters()]
    report = check_scale_freeness(
        model, lambda m: make_optimizer(variant, [{"params": list(m.parameters())}]), mlp_loss, batches, steps=8
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model is not touched
    assert report.scale_free is scale_free, str(report)
    if scale_free:
        assert report.max_difference < 1e-5
    else:
        assert report.max_difference > 1e-2
    assert len(report.difference) == 8 and set(report.per_layer) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_wandb_offline_run_receives_the_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real offline W&B run (no login, no network) read back from its .wandb file: same numbers as the CSV,
    plus the norm histogram, the epoch-end tables and plots."""
    from lightning_decay.diagnostics.wandb_files import find_run_file, read_history

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    wandb_logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="decay-tests")
    csv_logger = CSVLogger(tmp_path, name="csv")
    monitors = [WeightNormMonitor(), EffectiveDecayMonitor(), ScaleInvarianceMonitor()]
    try:
        fit(tmp_path, Net("adamw"), monitors, loggers=[csv_logger, wandb_logger], log_every_n_steps=2, max_epochs=2)
    finally:
        wandb_logger.experiment.finish()
    csv_metrics = read_metrics(tmp_path / "csv")
    rows = read_history(find_run_file(tmp_path))
    by_step: dict[int, dict[str, Any]] = defaultdict(dict)
    for row in rows:
        if "trainer/global_step" in row:
            by_step[int(row["trainer/global_step"])].update(row)
    assert sorted(csv_metrics) == [1, 3, 5, 7, 9, 11]
    for step, expected in csv_metrics.items():
        for key in ("weight_norm/total", "decay_factor/decay", "scale_invariance/cos/net.3.weight"):
            assert by_step[step][key] == pytest.approx(expected[key], rel=1e-9), (step, key)
    keys = {key for row in rows for key in row}
    assert "histograms/weight_norm/_type" in keys or "histograms/weight_norm" in keys
    # The media keys are exactly the ones docs/monitoring.md lists for the monitors (tables/<monitor> with the
    # monitor's module name: weight_norm, effective_decay, scale_invariance).
    media = {"/".join(key.split("/")[:2]) for key in keys if key.startswith(("tables/", "plots/", "histograms/"))}
    assert media == documented_wandb_keys() - {"diagnostics"}
    assert media >= {"tables/weight_norm", "tables/effective_decay", "tables/scale_invariance"}
    # One W&B history row per logging step holds all three monitors' values (and the norm histogram).
    monitor_rows = [row for row in rows if "weight_norm/total" in row or "decay_factor/decay" in row]
    assert sorted(int(row["trainer/global_step"]) for row in monitor_rows) == sorted(csv_metrics)
    assert all("decay_factor/decay" in row and "scale_invariance/cos/net.3.weight" in row for row in monitor_rows)
    assert not os.environ.get("WANDB_API_KEY")


def documented_wandb_keys() -> set[str]:
    """The keys of the W&B table in docs/monitoring.md ("What every monitor shares")."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "monitoring.md").read_text()
    section = text.split("* **W&B.**", 1)[1].split("\n* **", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\s*\| `([^`]+)` \| `\w+(?:Monitor|Report)`", section, re.M)}


class RegistryNet(Net):
    """:class:`Net` with any registered variant, built from its record (compiled kernels off: ``fused=False``)."""

    def configure_optimizers(self) -> Any:
        decay = [p for p in self.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.ndim < 2]
        groups = [{"params": decay, "name": "decay"}, {"params": no_decay, "name": "no_decay", "weight_decay": 0.0}]
        if REGISTRY[self.variant].family == "muon":  # Muon steps the matrices, AdamW the rest: one optimizer
            muon = REGISTRY[self.variant].build(groups[:1], lr=0.01, weight_decay=0.1)
            return CombinedOptimizer([muon, REGISTRY["adamw"].build(groups[1:], lr=0.01, fused=False)])
        return REGISTRY[self.variant].build(groups, lr=0.01, weight_decay=0.1, fused=False)


#: The key families (``<family>/...``) each decay metric of a registry record stands for (docs/monitoring.md).
DECAY_KEY_FAMILIES = {
    "decay_factor": {"decay_factor", "decay_timescale_steps", "decay_timescale_epochs"},
    "elementwise_factor": {"decay_factor", "decay_factor_min", "decay_factor_mean", "decay_factor_max"},
    "decayed_fraction": {"decayed_fraction"},
    "preconditioned_decay": {
        "preconditioned_decay", "preconditioned_decay_min", "preconditioned_decay_mean", "preconditioned_decay_max"
    },
    "l2_grad_ratio": {"l2_grad_ratio"},
}
#: The key families of WeightNormMonitor (default settings) and ScaleInvarianceMonitor (checks off).
OTHER_MONITOR_FAMILIES = {"weight_norm", "neuron_norm_min", "neuron_norm_mean", "neuron_norm_max", "scale_invariance"}


def key_families(keys: Any) -> set[str]:
    """``{"decay_factor", ...}`` of keys ``decay_factor/decay``, ...; keys without a ``/`` (``train_loss``) skipped."""
    return {key.split("/", 1)[0] for key in keys if "/" in key}


def decay_key_families(metrics: Any) -> set[str]:
    """What EffectiveDecayMonitor must log for a group with these decay metrics: lr/, eta/ and their families."""
    return {"lr", "eta"}.union(*(DECAY_KEY_FAMILIES[metric] for metric in metrics))


@pytest.mark.parametrize("variant", list(REGISTRY))
def test_every_registered_variant_logs_what_its_record_lists(tmp_path: Path, variant: str) -> None:
    """Each variant trains with the three monitors (a real 2-step fit), and EffectiveDecayMonitor's key families
    are exactly ``lr/``, ``eta/`` and those of the record's ``decay_metrics``.

    Both ways of a wrong record fail here: a metric the record lists but the rule cannot produce is missing from
    the log (the monitor computes it from the rule's own code); a metric the record leaves out differs from what
    the rule's properties allow (``infer_decay_metrics``, the monitor's answer for rules outside the registry)."""
    info = REGISTRY[variant]
    assert set(DECAY_KEY_FAMILIES) == set(DECAY_METRICS)  # this test knows every metric a record can name
    assert set(info.decay_metrics) == set(infer_decay_metrics(info.rule)), "the record leaves out or adds metrics"
    effective = EffectiveDecayMonitor()
    monitors = [WeightNormMonitor(), effective, ScaleInvarianceMonitor(check_every_n_steps=0)]
    fit(tmp_path, RegistryNet(variant, scheduler=False), monitors, max_steps=2)
    metrics = read_metrics(tmp_path / "csv")
    expected = decay_key_families(info.decay_metrics)
    assert sorted(metrics) == [0, 1]
    for step, row in metrics.items():
        assert key_families(row) == expected | OTHER_MONITOR_FAMILIES, step
    assert key_families(effective.last_metrics) == expected

    row = metrics[1]
    assert row["lr/decay"] == pytest.approx(0.01) and row["eta/decay"] == pytest.approx(1.0)
    for key, value in row.items():
        if key.startswith("decay_factor"):
            assert 0 < value <= 1, key
        elif key.startswith("decay_timescale_steps/"):
            assert value > 1 and row[key.replace("_steps/", "_epochs/")] == pytest.approx(value / 6), key
        elif key.startswith("decayed_fraction/"):
            assert 0 <= value <= 1, key
        elif key.startswith(("preconditioned_decay", "l2_grad_ratio")):
            assert value > 0, key
    assert row.get("decay_factor/decay", 0.0) < 1  # where a factor is logged, the decay group really decays
    assert math.isfinite(row["weight_norm/total"])
    assert monitors[0].last_metrics["weight_norm/total"] == row["weight_norm/total"]
    assert all(math.isfinite(row[f"scale_invariance/angular_update/{n}"]) for n in MATRICES)
    # The rotational-equilibrium prediction needs Adam's or Muon's update with one scalar decoupled decay per step.
    info = REGISTRY[variant]
    derived = info.family in ("adam", "muon") and isinstance(info.rule, KernelDecayRule) and info.decoupled
    assert ("scale_invariance/angular_update_equilibrium/net.0.weight" in row) == derived


class HalvedDecayRule(TorchConventionRule):
    """A decoupled rule outside the registry: ``w <- (1 - lr_t wd / 2) w - lr_t u_t``."""

    name = "halved-decay"
    scale_free = True

    def kernel_settings(self, lr: float, initial_lr: float, weight_decay: float) -> KernelSettings:
        return KernelSettings(lr, weight_decay / 2, decoupled=True)


class RenamedAdamL2Rule(AdamL2Rule):
    """Adam's L2 rule under a name the registry does not know."""

    name = "adaml2-unregistered"


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("torch-adamw", ("decay_factor",)),
        ("torch-adam", ("preconditioned_decay", "l2_grad_ratio")),
        ("torch-adam-decoupled", ("decay_factor",)),
        ("sgd", ("decay_factor", "l2_grad_ratio")),
        ("halved-decay", ("decay_factor",)),
        ("adaml2-unregistered", ("preconditioned_decay", "l2_grad_ratio")),
    ],
)
def test_optimizers_outside_the_registry_log_their_rules_metrics(
    tmp_path: Path, variant: str, expected: tuple[str, ...]
) -> None:
    """torch's AdamW / Adam / SGD log what the record of the rule they implement lists (``rule_of`` maps them);
    a rule outside the registry logs what its properties allow."""
    monitor = EffectiveDecayMonitor()
    fit(tmp_path, Net(variant, scheduler=False), [monitor], max_steps=2)
    metrics = read_metrics(tmp_path / "csv")
    for step, row in metrics.items():
        assert key_families(row) == decay_key_families(expected), step
    if variant == "halved-decay":
        assert metrics[1]["decay_factor/decay"] == pytest.approx(1 - LR0 * WD / 2, rel=1e-12)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="log_every_n_steps must be >= 0"):
        WeightNormMonitor(log_every_n_steps=-1)
    with pytest.raises(TypeError, match="log_every_n_steps must be an integer"):
        EffectiveDecayMonitor(log_every_n_steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="per_module must be True or False"):
        WeightNormMonitor(per_module=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="check_every_n_steps must be >= 0"):
        ScaleInvarianceMonitor(check_every_n_steps=-1)
    with pytest.raises(ValueError, match="check_scale must be != 1"):
        ScaleInvarianceMonitor(check_scale=1.0)
    with pytest.raises(ValueError, match="check_scale must be a finite number > 0"):
        ScaleInvarianceMonitor(check_scale=-2.0)
    with pytest.raises(ValueError, match="check_batch_size must be >= 1"):
        ScaleInvarianceMonitor(check_batch_size=0)
    with pytest.raises(ValueError, match="filename must end with .png"):
        TrainingReport(filename="diagnostics.jpg")
    with pytest.raises(ValueError, match="max_layers must be >= 1"):
        TrainingReport(max_layers=0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        check_scale_freeness(nn.Linear(2, 2), lambda m: AdamW(m.parameters()), mlp_loss, [None], steps=0)


def test_training_report_draws_the_logged_series(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real fit with the monitors, LearningRateMonitor and TrainingReport: the PNG lies beside metrics.csv and
    its path is printed; the series it draws are the CSV's."""
    report = TrainingReport(max_layers=2)
    callbacks = [LearningRateMonitor(), WeightNormMonitor(), EffectiveDecayMonitor(), report]
    fit(tmp_path, Net("adamw"), callbacks)
    assert report.path is not None and report.path.name == "diagnostics.png"
    assert report.path.parent == next((tmp_path / "csv").rglob("metrics.csv")).parent
    assert report.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"diagnostics plot: {report.path}" in printed and "metrics (CSV):" in printed
    series = read_metrics_csv(report.path.parent / "metrics.csv")
    expected = read_metrics(tmp_path / "csv")
    norms = [value for _, value in series["weight_norm/total"]]
    assert norms == [expected[step]["weight_norm/total"] for step in range(STEPS)]
    assert {"lr-AdamW/decay", "decay_factor/decay"} <= set(series)


def test_the_monitors_share_one_row_per_step_in_any_callback_order(tmp_path: Path) -> None:
    """The monitors' shared row (``MonitorsOfFit``) does not depend on their order in the callback list: each
    logging step is one raw ``metrics.csv`` row with every monitor's values, and the values are the same."""

    def raw_rows(directory: Path) -> list[dict[str, str]]:
        (path,) = directory.rglob("metrics.csv")
        with open(path) as handle:
            return [row for row in csv.DictReader(handle) if row.get("weight_norm/total")]

    results = []
    for index, order in enumerate(((0, 1, 2), (2, 1, 0), (1, 2, 0))):
        monitors = [WeightNormMonitor(), EffectiveDecayMonitor(), ScaleInvarianceMonitor()]
        ordered = [monitors[i] for i in order]
        ordered.insert(1, LearningRateMonitor(logging_interval="step"))
        fit(tmp_path / str(index), Net("adamw"), ordered, log_every_n_steps=2)
        rows = raw_rows(tmp_path / str(index))
        assert [int(row["step"]) for row in rows] == [1, 3, 5]  # one row per logging step
        for row in rows:
            assert row["decay_factor/decay"] and row["scale_invariance/cos/net.3.weight"], order
        results.append([{key: value for key, value in row.items() if value} for row in rows])
    assert results[0] == results[1] == results[2]
