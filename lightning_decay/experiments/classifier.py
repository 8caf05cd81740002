"""``ImageClassifier``: the model of the blog's experiment, a cross-entropy classifier (ResNet20 / SmallCNN on
CIFAR-10) whose optimizer, parameter groups and schedule come from :class:`~lightning_decay.integration.DecayMixin`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_decay.experiments.models import build_model
from lightning_decay.integration import DecayMixin, DecaySettings
from lightning_decay.validation import check_int, check_positive

__all__ = ["ImageClassifier"]

#: Checkpoint key of the current epoch's training-accuracy counts (summed over ranks).
_TRAIN_COUNTS_KEY = "image_classifier_train_accuracy"


class ImageClassifier(DecayMixin, LightningModule):
    """Cross-entropy image classifier; the optimizer, groups and schedule come from ``decay`` (:class:`DecayMixin`).

    Args:
        architecture: ``resnet20``, ``small_cnn`` or ``mlp`` (:func:`lightning_decay.experiments.build_model`).
        batch_norm: keep the batch-norm layers (``False``: identity, as in the blog's experiment).
        width: first-stage channels: ResNet20's (16 in He et al.; then ``2*width``, ``4*width``), SmallCNN's
            two layers have ``width`` and ``2*width`` (16: the default ``(16, 32)``); not used by ``mlp``.
        stages: SmallCNN's conv stages, each doubling the channels and halving the resolution (2: ``(width,
            2*width)``; 3: ``(width, 2*width, 4*width)``); only ``small_cnn`` takes a value other than 2.
        num_classes: output classes.
        loss_scale: the optimizer sees ``loss_scale * cross_entropy`` (the blog's scale-freeness experiment);
            the logged losses are unscaled.
        channels_last: run convolutions in channels-last memory format (faster on CPU and on tensor cores).

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.

    ``train/acc`` is the epoch's accuracy over its training batches, summed over ranks (the value one process with
    the same global batches logs), logged at the epoch's end. Its counts (correct, total) are in checkpoints, so a
    fit resumed mid-epoch logs the same value as the uninterrupted one. ``training_step`` calls under
    ``torch.no_grad`` (such as ``ScaleInvarianceMonitor``'s check) are not counted.
    """

    def __init__(
        self,
        architecture: str = "resnet20",
        batch_norm: bool = True,
        width: int = 16,
        stages: int = 2,
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
        checked_loss_scale = check_positive("loss_scale", loss_scale)
        self.save_hyperparameters(ignore=["optimizer_callable", "lr_scheduler_callable"])
        options: dict[str, object] = {"num_classes": num_classes, "batch_norm": batch_norm}
        key = architecture.strip().lower().replace("-", "_")
        if key == "resnet20":
            options["width"] = width
        elif key == "small_cnn":
            channels = check_int("width", width, low=1)
            options["channels"] = tuple(channels * 2**stage for stage in range(check_int("stages", stages, low=1)))
        elif width != 16:
            raise ValueError(f"width={width!r} is not used by architecture={architecture!r}; leave it at 16")
        if key != "small_cnn" and stages != 2:
            raise ValueError(f"stages={stages!r} is not used by architecture={architecture!r}; leave it at 2")
        self.network = build_model(architecture, **options)
        self.loss_scale = checked_loss_scale
        self.channels_last = channels_last
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        # The epoch's training-accuracy counts: this rank's since the epoch started or the fit resumed (correct: a
        # tensor on the logits' device, no host sync per step), and the whole epoch's before a resume (all ranks).
        self._train_correct: Tensor | int = 0
        self._train_total = 0
        self._train_restored = (0, 0)
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
        if torch.is_grad_enabled():  # a training batch, not a no-grad evaluation such as the scale check
            self._train_correct = self._train_correct + (logits.argmax(dim=1) == labels).sum()
            self._train_total += labels.numel()
        self.log("train/loss", loss, prog_bar=True)
        return loss * self.loss_scale if self.loss_scale != 1.0 else loss

    # -- train/acc: counts kept here, not in Lightning's epoch accumulation (which a mid-epoch resume restarts) --
    def _reset_train_counts(self, restored: tuple[int, int] = (0, 0)) -> None:
        self._train_correct, self._train_total, self._train_restored = 0, 0, restored

    def _epoch_train_counts(self) -> Tensor:
        """``[correct, total]`` of the current epoch so far, over all ranks (a collective under DDP: call it on
        every rank)."""
        local = torch.stack([
            torch.as_tensor(self._train_correct, dtype=torch.int64, device=self.device),
            torch.tensor(self._train_total, dtype=torch.int64, device=self.device),
        ])
        if self._trainer is not None:
            local = self.trainer.strategy.reduce(local, reduce_op="sum")
        return local + torch.tensor(self._train_restored, dtype=torch.int64, device=local.device)

    def on_train_epoch_start(self) -> None:
        """A new epoch (Lightning does not call this for the epoch a mid-epoch resume continues)."""
        super().on_train_epoch_start()
        self._reset_train_counts()

    def on_train_epoch_end(self) -> None:
        """Log ``train/acc`` of the whole epoch (every rank holds the same global value)."""
        super().on_train_epoch_end()
        correct, total = self._epoch_train_counts()
        if total > 0:
            # sync_dist with max: identical values on every rank stay bitwise (and Lightning does not warn)
            self.log("train/acc", correct / total, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
        self._reset_train_counts()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the epoch's training-accuracy counts (summed over ranks: every rank must save, as Lightning's
        ``Trainer.save_checkpoint`` requires anyway)."""
        super().on_save_checkpoint(checkpoint)
        correct, total = self._epoch_train_counts().tolist()
        checkpoint[_TRAIN_COUNTS_KEY] = {"correct": correct, "total": total}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the counts of a checkpoint saved mid-epoch (older checkpoints: none, the epoch counts from the
        resume on)."""
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(_TRAIN_COUNTS_KEY)
        self._reset_train_counts((int(saved["correct"]), int(saved["total"])) if saved else (0, 0))

    #: On CPU an evaluation batch goes through the network this many images at a time (the metrics are still the
    #: batch's): a forward over 1000 images is 1.3-2.6x slower per image there than over 128 (the activations leave
    #: the caches), and the logits are the same, bitwise (``tests/test_models.py``). Other devices take it whole.
    CPU_EVALUATION_CHUNK = 128

    def evaluation_logits(self, images: Tensor) -> Tensor:
        """The logits of an evaluation batch (:attr:`CPU_EVALUATION_CHUNK` images at a time on CPU)."""
        chunk = self.CPU_EVALUATION_CHUNK
        if images.device.type != "cpu" or len(images) <= chunk:
            return self(images)
        return torch.cat([self(part) for part in images.split(chunk)])

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy) -> None:
        images, labels = batch
        logits = self.evaluation_logits(images)
        accuracy(logits, labels)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_accuracy)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_accuracy)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0]).argmax(dim=1)
