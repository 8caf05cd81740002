"""Non-finite gradients without AMP: never silent NaN weights.

Policy ``raise`` (the default): a ``FloatingPointError`` naming the parameter by its module path, the weights still
those of the last good step. Policy ``skip`` (opt-in): the step is skipped for every variant with weights and
optimizer state bitwise unchanged, counted, logged, warned about, saved in checkpoints, and bounded by
``nonfinite_skip_limit``. Policy ``off``: plain torch behaviour (NaN weights) -- the control showing what the guard
prevents. The same check as a callback for any LightningModule, under ``bf16-mixed``, and standing aside for a
GradScaler.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_decay.integration import DecayMixin, DecaySettings
from lightning_decay.integration.guards import (
    GradientGuard,
    NonFiniteGradientError,
    NonFiniteGradientGuard,
    first_nonfinite_gradient,
)
from tests.test_precision import StepRecorder
from tests.test_resume import (
    assert_identical,
    decay_settings,
    fit_quietly,
    quiet_trainer,
    read_rows,
    single_thread,  # noqa: F401 - autouse fixture
)
from tests.variant_lists import ANY_TENSOR

STEPS = 5
BAD_STEP = 2


def batches() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8 * STEPS, 16, generator=generator)
    return DataLoader(TensorDataset(x, (x[:, :4] * 3).argmax(1)), batch_size=8)


class Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class GuardNet(DecayMixin, LightningModule):
    """Puts ``bad_value`` into one gradient entry of ``net.head.weight`` after backward at ``bad_steps``."""

    def __init__(self, bad_steps: tuple[int, ...] = (BAD_STEP,), bad_value: float = math.nan, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = Blocks()
        self.bad_steps = set(bad_steps)
        self.bad_value = bad_value

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def on_after_backward(self) -> None:
        if self.global_step in self.bad_steps:
            self.net.head.weight.grad[1, 3] = self.bad_value

    def train_dataloader(self) -> DataLoader:
        return batches()


class PlainNet(LightningModule):
    """No mixin: torch's fused AdamW, NaN in the loss (hence in every gradient) at ``bad_step``."""

    def __init__(self, bad_step: int = BAD_STEP) -> None:
        super().__init__()
        self.net = Blocks()
        self.bad_step = bad_step

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        return loss * math.nan if self.global_step == self.bad_step else loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2, fused=True)

    def train_dataloader(self) -> DataLoader:
        return batches()


def guard_net(variant: str = "adamw", **settings: Any) -> GuardNet:
    torch.manual_seed(0)
    return GuardNet(decay=decay_settings(variant, **settings))


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
def test_raise_is_the_default_and_names_the_parameter(bad_value: float) -> None:
    model = guard_net()
    assert model.decay_settings.nonfinite_grads == "raise"
    recorder = StepRecorder()
    model.bad_value = bad_value
    trainer = quiet_trainer(max_steps=STEPS, callbacks=[recorder])
    with pytest.raises(NonFiniteGradientError, match=r"parameter 'net\.head\.weight' at global step 2") as error:
        fit_quietly(trainer, model)
    assert isinstance(error.value, FloatingPointError)
    assert "nonfinite_grads='skip'" in str(error.value)  # says how to opt in to skipping
    # the weights are those of the last finite step: finite, and unchanged since the bad step began
    weights = list(model.parameters())
    assert all(torch.isfinite(w).all() for w in weights)
    assert_identical(recorder.before[BAD_STEP]["weights"], [w.detach() for w in weights], "weights")


def test_off_is_plain_torch_behaviour_nan_weights() -> None:
    """The control: without the guard one NaN gradient makes the weights NaN (what the default prevents)."""
    model = guard_net(nonfinite_grads="off")
    fit_quietly(quiet_trainer(max_steps=STEPS), model)
    assert torch.isnan(model.net.head.weight).any()


@pytest.mark.parametrize("variant", sorted(ANY_TENSOR))
def test_skip_leaves_weights_and_state_unchanged(variant: str, tmp_path: Path) -> None:
    model = guard_net(variant, nonfinite_grads="skip")
    recorder = StepRecorder()
    trainer = quiet_trainer(
        max_steps=STEPS, callbacks=[recorder], logger=CSVLogger(tmp_path, name="csv", version=0), log_every_n_steps=1
    )
    with pytest.warns(UserWarning, match=r"skipped an optimizer step: non-finite gradient in parameter 'net\.head"):
        fit_quietly(trainer, model)
    assert trainer.global_step == STEPS
    for step in range(STEPS):
        before, after = recorder.before[step], recorder.after[step]
        if step == BAD_STEP:
            assert_identical(before, after, f"{variant} skipped step")
        else:
            assert any(not torch.equal(a, b) for a, b in zip(before["weights"], after["weights"])), step
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.gradient_guard.skipped_steps == 1 and model.gradient_guard.consecutive_skips == 0
    assert read_rows(tmp_path)[BAD_STEP]["nonfinite/skipped_steps"] == "1.0"


def test_skip_limit_raises_when_the_run_does_not_recover() -> None:
    model = guard_net(nonfinite_grads="skip", nonfinite_skip_limit=3)
    model.bad_steps = {1, 2, 3, 4}
    with pytest.warns(UserWarning, match="skipped"), pytest.raises(NonFiniteGradientError, match="3 consecutive"):
        fit_quietly(quiet_trainer(max_steps=STEPS), model)
    assert model.gradient_guard.skipped_steps == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_counters_are_saved_in_checkpoints(tmp_path: Path) -> None:
    model = guard_net(nonfinite_grads="skip")
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    with pytest.warns(UserWarning, match="skipped"):
        fit_quietly(quiet_trainer(max_steps=STEPS, callbacks=[checkpoint], enable_checkpointing=True), model)
    resumed = guard_net(nonfinite_grads="skip")
    resumed.bad_steps = set()
    (path,) = tmp_path.glob("*step=3.ckpt")
    fit_quietly(quiet_trainer(max_steps=STEPS), resumed, ckpt_path=path)
    assert resumed.gradient_guard.skipped_steps == 1


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_callback_guards_any_lightning_module(policy: str) -> None:
    """The callback with a plain LightningModule and torch's own fused AdamW (NaN in the loss: every gradient)."""
    torch.manual_seed(0)
    model, guard, recorder = PlainNet(), NonFiniteGradientGuard(policy=policy), StepRecorder()
    trainer = quiet_trainer(max_steps=STEPS, callbacks=[guard, recorder])
    if policy == "raise":
        with pytest.raises(NonFiniteGradientError, match=r"'net\.encoder\.0\.weight' and 3 more parameter"):
            fit_quietly(trainer, model)
        return
    with pytest.warns(UserWarning, match="skipped"):
        fit_quietly(trainer, model)
    assert guard.skipped_steps == 1
    assert_identical(recorder.before[BAD_STEP], recorder.after[BAD_STEP], "torch AdamW skipped step")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_mixin_defers_to_a_guard_callback() -> None:
    model = guard_net()  # policy raise in the settings
    guard = NonFiniteGradientGuard(policy="skip")
    with pytest.warns(UserWarning, match="skipped"):
        fit_quietly(quiet_trainer(max_steps=STEPS, callbacks=[guard]), model)
    assert guard.skipped_steps == 1 and model.gradient_guard.skipped_steps == 0


def test_bf16_mixed_is_guarded_and_a_grad_scaler_is_left_alone() -> None:
    with pytest.raises(NonFiniteGradientError, match="net.head.weight"):
        fit_quietly(quiet_trainer(max_steps=STEPS, precision="bf16-mixed"), guard_net())
    # 16-mixed: the GradScaler skips the step itself (and lowers the scale); the guard does not raise
    torch.manual_seed(0)
    model, recorder = PlainNet(), StepRecorder()
    trainer = quiet_trainer(max_steps=STEPS, callbacks=[recorder], plugins=[MixedPrecision("16-mixed", "cpu")])
    fit_quietly(trainer, model)
    assert_identical(recorder.before[BAD_STEP]["weights"], recorder.after[BAD_STEP]["weights"], "scaler skip")
    assert trainer.precision_plugin.scaler.get_scale() < 2.0**16


def test_finite_check_is_exact_and_overflow_free() -> None:
    dtypes = (torch.float32, torch.float32, torch.float64, torch.bfloat16)
    params = [torch.zeros(3, dtype=dtype, requires_grad=True) for dtype in dtypes]
    params[0].grad = torch.full((3,), 1e30)  # finite, though its squared 2-norm overflows float32
    params[1].grad = None
    params[2].grad = torch.ones(3, dtype=torch.float64)
    params[3].grad = torch.ones(3, dtype=torch.bfloat16)
    params[2].grad[1:] = torch.tensor([-0.0, 1e-310], dtype=torch.float64)  # signed zero, subnormal
    before = [p.grad.clone() for p in params if p.grad is not None]
    assert first_nonfinite_gradient(params) is None
    after = [p.grad for p in params if p.grad is not None]
    for old, new in zip(before, after):  # the fused check rescales by exactly 1: gradients stay bit-identical
        assert torch.equal(old.view(torch.uint8), new.view(torch.uint8))
    params[3].grad[1] = math.inf
    params[2].grad[0] = math.nan
    assert first_nonfinite_gradient(params) == (2, 2)
    params.append(torch.zeros(0, requires_grad=True))
    params[-1].grad = torch.zeros(0)
    assert first_nonfinite_gradient(params) == (2, 2)
    expanded = torch.zeros(4, requires_grad=True)
    expanded.grad = torch.tensor([math.nan]).expand(4)  # stride 0: the fused in-place check refuses it
    assert first_nonfinite_gradient([params[0], expanded]) == (1, 1)


def test_policy_settings_are_validated_and_stored() -> None:
    with pytest.raises(ValueError, match="nonfinite_grads must be one of"):
        DecaySettings(nonfinite_grads="ignore")
    with pytest.raises(TypeError, match="nonfinite_grads"):
        DecaySettings(nonfinite_grads=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nonfinite_skip_limit"):
        DecaySettings(nonfinite_skip_limit=0)
    with pytest.raises(TypeError, match="nonfinite_skip_limit"):
        DecaySettings(nonfinite_skip_limit=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="policy"):
        GradientGuard("warn")
    with pytest.raises(ValueError, match="policy"):
        NonFiniteGradientGuard("never")
    model = guard_net(nonfinite_grads="skip", nonfinite_skip_limit=None)
    assert model.hparams["decay"]["nonfinite_grads"] == "skip"
    assert model.hparams["decay"]["nonfinite_skip_limit"] is None
    assert model.gradient_guard.policy == "skip" and model.gradient_guard.skip_limit is None
    model.set_decay(nonfinite_grads="off")
    assert model.gradient_guard.policy == "off" and model.hparams["decay"]["nonfinite_grads"] == "off"
    assert DecaySettings.coerce(model.hparams["decay"]).nonfinite_grads == "off"
