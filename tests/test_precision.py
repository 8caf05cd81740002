"""Mixed precision with every variant: ``bf16-mixed`` (autocast, no scaler) and ``16-mixed`` (autocast + GradScaler).

Lightning turns ``precision="16-mixed"`` on CPU into bf16 (with a warning), so on CPU the fp16 path runs through
Lightning's own plugin, ``plugins=[MixedPrecision("16-mixed", "cpu")]``: the same code as on CUDA (fp16 autocast,
``torch.amp.GradScaler``). On a machine with CUDA the same tests also run with ``accelerator="cuda"``.

Each fit clips gradients by norm on even steps and by value on odd steps (``configure_gradient_clipping`` as a
model would override it), and a step post-hook checks what the optimizer receives: clipped, unscaled gradients and,
for torch's fused kernels (which unscale inside the step), no second unscale. Under ``16-mixed`` one step overflows:
the scaler must skip it with weights and optimizer state (moments, step counts) bitwise unchanged and halve the scale.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_decay.integration import DecayMixin
from lightning_decay.optim import VARIANTS
from tests.test_resume import (
    assert_identical,
    decay_settings,
    fit_quietly,
    quiet_trainer,
    single_thread,  # noqa: F401 - autouse fixture
    tensors_of,
)

STEPS = 6
OVERFLOW_STEP = 3
NORM_CLIP, VALUE_CLIP = 1e-3, 1e-4
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class AmpNet(DecayMixin, LightningModule):
    """A three-layer MLP (its matmuls run in fp16/bf16 under autocast; the hidden matrix is Muon's for the Muon
    variants) whose loss overflows at ``overflow_step``."""

    def __init__(self, overflow_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        self.overflow_step = overflow_step

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        if self.global_step == self.overflow_step:
            loss = loss * 1e30  # times the loss scale: inf in the fp16 backward
        return loss

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        if self.global_step % 2 == 0:
            super().configure_gradient_clipping(optimizer, NORM_CLIP, "norm")
        else:
            super().configure_gradient_clipping(optimizer, VALUE_CLIP, "value")

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(8 * STEPS, 16, generator=generator)
        return DataLoader(TensorDataset(x, (x[:, :4] * 3).argmax(1)), batch_size=8)


class StepRecorder(Callback):
    """Snapshots before/after every step and, from an optimizer step post-hook, the gradients the step used."""

    def __init__(self) -> None:
        self.before: dict[int, Any] = {}
        self.after: dict[int, Any] = {}
        self.received: dict[int, dict[str, float]] = {}

    def _state(self, trainer: Trainer) -> dict[str, Any]:
        return {
            "weights": tensors_of(list(trainer.lightning_module.parameters())),
            "optimizer": tensors_of(trainer.optimizers[0].state_dict()["state"]),
        }

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizer = trainer.optimizers[0]

        def post_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            if not grads:  # a step skipped by clearing the gradients
                return
            self.received[trainer.global_step] = {
                "norm": float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))),
                "max": float(max(g.abs().max() for g in grads)),
                "second_unscale": getattr(opt, "grad_scale", None) is not None,
                "dtype": str(grads[0].dtype),
            }

        # after the step (without a scaler, Lightning runs forward/backward inside ``step(closure)``): the
        # gradients the step used, and ``grad_scale``, which a GradScaler sets for a fused kernel during the step
        optimizer.register_step_post_hook(post_hook)

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self.before[trainer.global_step] = self._state(trainer)

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.after[trainer.global_step - 1] = self._state(trainer)


def fit(variant: str, accelerator: str, precision: str) -> tuple[Trainer, StepRecorder]:
    torch.manual_seed(0)
    fp16 = precision == "16-mixed"
    model = AmpNet(overflow_step=OVERFLOW_STEP if fp16 else None, decay=decay_settings(variant))
    recorder = StepRecorder()
    options: dict[str, Any] = {"precision": precision}
    if fp16 and accelerator == "cpu":
        options = {"plugins": [MixedPrecision("16-mixed", "cpu")]}
    trainer = quiet_trainer(accelerator=accelerator, max_steps=STEPS, callbacks=[recorder], **options)
    fit_quietly(trainer, model)
    return trainer, recorder


def check_clipping(recorder: StepRecorder, skip: set[int]) -> None:
    """Norm-clipped steps receive gradient norm NORM_CLIP, value-clipped ones max |g| = VALUE_CLIP: clipped
    (the raw gradients are far larger), and unscaled exactly once."""
    steps = [s for s in range(STEPS) if s not in skip]
    for step in steps:
        received = recorder.received[step]
        assert not received["second_unscale"], step  # a fused kernel must not divide by the scale again
        assert received["dtype"] == "torch.float32", step  # fp32 master gradients
        if step % 2 == 0:
            assert received["norm"] == pytest.approx(NORM_CLIP, rel=1e-3), (step, received)
        else:
            assert received["max"] == pytest.approx(VALUE_CLIP, rel=1e-6), (step, received)


def check_updates(recorder: StepRecorder, skipped: set[int]) -> None:
    for step in range(STEPS):
        before, after = recorder.before[step], recorder.after[step]
        if step in skipped:
            assert_identical(before, after, f"skipped step {step}")
        else:
            assert all(torch.isfinite(w).all() for w in after["weights"]), step
            assert any(not torch.equal(a, b) for a, b in zip(before["weights"], after["weights"])), step


@pytest.mark.parametrize("accelerator", DEVICES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fp16_mixed_skips_overflow_and_clips(variant: str, accelerator: str) -> None:
    trainer, recorder = fit(variant, accelerator, "16-mixed")
    scaler = trainer.precision_plugin.scaler
    assert isinstance(scaler, torch.amp.GradScaler)
    assert trainer.global_step == STEPS
    # the overflow step: weights, moments and step counts unchanged (step counts not advanced)
    check_updates(recorder, skipped={OVERFLOW_STEP})
    state = trainer.optimizers[0].state_dict()["state"]
    steps = {float(s["step"]) for s in state.values() if "step" in s}
    assert steps in (set(), {float(STEPS - 1)})  # Adam family counts one step fewer; SGD keeps no count
    assert scaler.get_scale() == 2.0**16 / 2  # halved once, at the overflow
    check_clipping(recorder, skip={OVERFLOW_STEP})
    fused = bool(getattr(trainer.optimizers[0], "_step_supports_amp_scaling", False))
    assert fused == issubclass(VARIANTS[variant][0], torch.optim.Adam)  # both paths are covered


@pytest.mark.parametrize("accelerator", DEVICES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_bf16_mixed_trains_and_clips(variant: str, accelerator: str) -> None:
    trainer, recorder = fit(variant, accelerator, "bf16-mixed")
    assert getattr(trainer.precision_plugin, "scaler", None) is None
    assert all(p.dtype == torch.float32 for p in trainer.lightning_module.parameters())
    check_updates(recorder, skipped=set())
    check_clipping(recorder, skip=set())


def test_without_the_mixin_lightning_refuses_to_clip_fused_optimizers_under_a_scaler() -> None:
    """Why the mixin unscales before clipping: plain Lightning raises for torch's fused Adam under a GradScaler."""

    class Plain(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(16, 4)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), fused=True)

        def train_dataloader(self) -> DataLoader:
            return AmpNet().train_dataloader()

    trainer = quiet_trainer(max_steps=1, gradient_clip_val=1.0, plugins=[MixedPrecision("16-mixed", "cpu")])
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        fit_quietly(trainer, Plain())


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_trainer_level_clipping_with_a_fused_kernel_under_a_scaler(algorithm: str) -> None:
    """``Trainer(gradient_clip_val=..., gradient_clip_algorithm=...)`` reaches the mixin's clipping as well."""

    class TrainerClipped(AmpNet):
        configure_gradient_clipping = DecayMixin.configure_gradient_clipping

    torch.manual_seed(0)
    recorder = StepRecorder()
    trainer = quiet_trainer(
        max_steps=STEPS, callbacks=[recorder], plugins=[MixedPrecision("16-mixed", "cpu")],
        gradient_clip_val=VALUE_CLIP, gradient_clip_algorithm=algorithm,
    )
    fit_quietly(trainer, TrainerClipped(decay=decay_settings("adamw")))
    assert getattr(trainer.optimizers[0], "_step_supports_amp_scaling", False)
    for step in range(STEPS):
        received = recorder.received[step]
        assert not received["second_unscale"]
        assert received["norm" if algorithm == "norm" else "max"] == pytest.approx(VALUE_CLIP, rel=1e-3)
