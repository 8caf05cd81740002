"""The blog's experiment: CIFAR-10 (:mod:`~lightning_decay.experiments.cifar10`, with the embedded sample),
its batched augmentation, the in-memory ``CIFAR10DataModule``, the ResNet20 / SmallCNN networks and the
``ImageClassifier`` LightningModule.

Config class paths: ``lightning_decay.experiments.ImageClassifier`` and
``lightning_decay.experiments.CIFAR10DataModule``. Depends on :mod:`lightning_decay.optim` and
:mod:`lightning_decay.integration` only.
"""

from lightning_decay.experiments.cifar10 import load_cifar10
from lightning_decay.experiments.classifier import ImageClassifier
from lightning_decay.experiments.datamodule import CIFAR10DataModule
from lightning_decay.experiments.models import ResNet20, SmallCNN, build_model

__all__ = [
    "CIFAR10DataModule",
    "ImageClassifier",
    "ResNet20",
    "SmallCNN",
    "build_model",
    "load_cifar10",
]
