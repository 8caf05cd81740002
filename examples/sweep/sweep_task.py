"""The model and data of ``examples/small_sweep.py``, imported by class path (``sweep_task.NoisyClusters``, ...).

A small, noisy classification task on which the weight decay matters: few training samples, 10% wrong labels and
an MLP large enough to memorize them. ``MLPClassifier`` uses ``DecayMixin``, so the sweep's default axis keys
(``model.init_args.decay.lr`` / ``.weight_decay``) and ``variant_key: model.init_args.decay.optimizer`` apply;
it logs the metric names the sweep reads (``train/loss``, ``test/acc``).
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_decay import DecayMixin, DecaySettings


class MLPClassifier(DecayMixin, LightningModule):
    """An MLP classifier trained with the ``decay`` settings (any variant, lr, weight decay)."""

    def __init__(
        self,
        features: int = 32,
        classes: int = 8,
        hidden: int = 256,
        decay: DecaySettings = DecaySettings(),  # noqa: B008 - frozen dataclass: one shared default is safe
    ) -> None:
        super().__init__(decay=decay)
        self.save_hyperparameters()
        self.network = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> Tensor:
        inputs, labels = batch
        loss = nn.functional.cross_entropy(self.network(inputs), labels)
        self.log("train/loss", loss)
        return loss

    def test_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> None:
        inputs, labels = batch
        self.log("test/acc", (self.network(inputs).argmax(dim=1) == labels).float().mean())


class NoisyClusters(LightningDataModule):
    """Gaussian class clusters with ``label_noise`` of the training labels replaced by random ones; clean test set."""

    def __init__(
        self,
        train_samples: int = 512,
        test_samples: int = 4096,
        features: int = 32,
        classes: int = 8,
        label_noise: float = 0.1,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        settings = self.hparams
        generator = torch.Generator().manual_seed(0)
        centres = torch.randn(settings.classes, settings.features, generator=generator)
        samples = settings.train_samples + settings.test_samples
        labels = torch.randint(0, settings.classes, (samples,), generator=generator)
        inputs = centres[labels] + 1.5 * torch.randn(len(labels), settings.features, generator=generator)
        train_labels = labels[: settings.train_samples].clone()
        flipped = torch.rand(len(train_labels), generator=generator) < settings.label_noise
        train_labels[flipped] = torch.randint(0, settings.classes, (int(flipped.sum()),), generator=generator)
        self.train_set = TensorDataset(inputs[: settings.train_samples], train_labels)
        self.test_set = TensorDataset(inputs[settings.train_samples :], labels[settings.train_samples :])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=1024)
