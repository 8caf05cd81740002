"""A tiny classifier for the sweep tests, importable by class path (``tests.sweep_toy.ToyClassifier``).

It has the init arguments a sweep varies (``variant``, ``lr``, ``weight_decay``) and logs the metric names the
runner reads (``train/loss``, ``val/acc``, ``test/acc``, ``test/loss``), like the package's classifier.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from lightning_decay.experiments.models import SmallCNN
from lightning_decay.optim import resolve_variant


class ToyClassifier(LightningModule):
    """A one-conv :class:`SmallCNN` trained with one Adam variant of the package.

    Args:
        variant: a name of :data:`lightning_decay.optim.VARIANTS`.
        lr: learning rate.
        weight_decay: weight decay of the variant.
        width: channels of the single conv layer.
        step_delay: seconds to sleep in every training step (lets a test kill a cell while it trains).
    """

    def __init__(
        self,
        variant: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        width: int = 8,
        step_delay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        resolve_variant(variant)  # unknown names fail at construction, before training
        self.net = SmallCNN(num_classes=10, channels=(width,))

    def forward(self, images: Tensor) -> Tensor:
        """Logits of a batch of normalized images."""
        return self.net(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy; logs ``train/loss`` (epoch mean)."""
        if self.hparams.step_delay:
            time.sleep(self.hparams.step_delay)
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels))
        self.log(f"{stage}/acc", (logits.argmax(1) == labels).float().mean())

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Logs ``val/loss`` and ``val/acc``."""
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Logs ``test/loss`` and ``test/acc``."""
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The chosen variant over all parameters."""
        optimizer_class, fixed = resolve_variant(self.hparams.variant)
        return optimizer_class(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, **fixed)
