"""``ImageClassifier``: the examples' LightningModule (ResNet20 / SmallCNN on CIFAR-10) with :class:`DecayMixin`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_decay.mixin import DecayMixin, DecaySettings
from lightning_decay.models import build_model

__all__ = ["ImageClassifier"]


class ImageClassifier(DecayMixin, LightningModule):
    """Cross-entropy image classifier; the optimizer, groups and schedule come from ``decay`` (:class:`DecayMixin`).

    Args:
        architecture: ``resnet20`` or ``small_cnn`` (:func:`lightning_decay.models.build_model`).
        batch_norm: keep the batch-norm layers (``False``: identity, as in the blog's experiment).
        width: ResNet20's first-stage channels (16 in He et al.).
        num_classes: output classes.
        loss_scale: the optimizer sees ``loss_scale * cross_entropy`` (the blog's scale-freeness experiment);
            the logged losses are unscaled.
        channels_last: run convolutions in channels-last memory format (faster on CPU and on tensor cores).

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.
    """

    def __init__(
        self,
        architecture: str = "resnet20",
        batch_norm: bool = True,
        width: int = 16,
        num_classes: int = 10,
        loss_scale: float = 1.0,
        channels_last: bool = True,
        decay: DecaySettings = DecaySettings(),  # noqa: B008 - frozen dataclass
        optimizer_callable: OptimizerCallable | None = None,
        lr_scheduler_callable: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            decay=decay, optimizer_callable=optimizer_callable, lr_scheduler_callable=lr_scheduler_callable
        )
        if isinstance(loss_scale, bool) or not isinstance(loss_scale, (int, float)) or not (
            math.isfinite(loss_scale) and loss_scale > 0
        ):
            raise ValueError(f"loss_scale must be a finite number > 0, got {loss_scale!r}")
        self.save_hyperparameters(ignore=["optimizer_callable", "lr_scheduler_callable"])
        options = {"num_classes": num_classes, "batch_norm": batch_norm}
        if architecture.strip().lower().replace("-", "_") == "resnet20":
            options["width"] = width
        self.network = build_model(architecture, **options)
        self.loss_scale = float(loss_scale)
        self.channels_last = channels_last
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: Tensor) -> Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.network(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.train_accuracy(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_accuracy, on_step=False, on_epoch=True)
        return loss * self.loss_scale if self.loss_scale != 1.0 else loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy) -> None:
        images, labels = batch
        logits = self(images)
        accuracy(logits, labels)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_accuracy)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_accuracy)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0]).argmax(dim=1)
