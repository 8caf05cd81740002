"""``build_optimizer_config`` inside a hand-written ``configure_optimizers``: the package's optimizer, parameter
groups and schedule without ``DecayMixin``.

The model is an ordinary LightningModule (an MLP classifier with LayerNorm and a separate head) that keeps its own
``configure_optimizers``; one call returns what Lightning expects there: ProxAdam on named parameter groups (biases
and LayerNorm without decay, the head in its own group at a tenth of the lr) and a per-step schedule (linear warmup,
then cosine over the trainer's total steps). The script prints the groups, fits on synthetic data (Gaussian
clusters), and prints the lr of every group at the end and the validation accuracy.

Run (5 epochs of 10,000 samples: under a minute on 2 CPU cores):

    python examples/factory_only.py [--output outputs/examples/factory_only]
    python examples/factory_only.py --tiny      # 6 steps: ~10 s

``LIGHTNING_DECAY_EXAMPLE_TINY=1`` has the effect of ``--tiny``; ``LIGHTNING_DECAY_EXAMPLE_OUTPUT=<folder>``
changes the default output folder to ``<folder>/factory_only``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_decay import build_optimizer_config


class Classifier(LightningModule):
    """An MLP classifier; ``configure_optimizers`` is written by hand and calls the factory."""

    def __init__(self, features: int = 16, hidden: int = 128, classes: int = 8, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(
            nn.Linear(features, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.backbone(inputs))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> Tensor:
        inputs, labels = batch
        loss = nn.functional.cross_entropy(self(inputs), labels)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> None:
        inputs, labels = batch
        self.log("val/acc", (self(inputs).argmax(dim=1) == labels).float().mean())

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        config = build_optimizer_config(
            self,
            "proxadam",  # any variant name: adamw, adamw-paper, adamp, ... or an Optimizer class
            lr=self.hparams.lr,
            weight_decay=1e-3,  # ProxAdam: w <- (w - lr_t u_t) / (1 + eta_t * wd), a timescale of ~1000 steps
            groups={"overrides": [{"name": "head", "patterns": ["head"], "lr_scale": 0.1}]},
            warmup_ratio=0.1,
            schedule="cosine",
            trainer=self.trainer,  # for the total number of steps of the cosine
        )
        print("configure_optimizers: the factory returned")
        print(f"  optimizer {type(config['optimizer']).__name__} with groups:")
        for group in config["optimizer"].param_groups:
            shapes = ", ".join(str(tuple(parameter.shape)) for parameter in group["params"])
            print(f"    {group['name']:<14} lr={group['lr']:<8.2g} weight_decay={group['weight_decay']:<6g} {shapes}")
        scheduler = config["lr_scheduler"]
        print(f"  lr_scheduler {type(scheduler['scheduler']).__name__}, stepped every {scheduler['interval']}")
        return config


def gaussian_clusters(samples: int, features: int = 16, classes: int = 8) -> TensorDataset:
    """Points around random class centres (overlapping: accuracy well below 100%)."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, features, generator=generator)
    labels = torch.randint(0, classes, (samples,), generator=generator)
    return TensorDataset(centres[labels] + 1.5 * torch.randn(samples, features, generator=generator), labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("LIGHTNING_DECAY_EXAMPLE_TINY") == "1")
    root = Path(os.environ.get("LIGHTNING_DECAY_EXAMPLE_OUTPUT", "outputs/examples"))
    parser.add_argument("--output", type=Path, default=root / "factory_only", help="logs go here")
    arguments = parser.parse_args()
    torch.manual_seed(0)
    train, validation = gaussian_clusters(256 if arguments.tiny else 10_000), gaussian_clusters(512)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=5,
        max_steps=6 if arguments.tiny else -1,
        log_every_n_steps=2 if arguments.tiny else 50,
        callbacks=[LearningRateMonitor(logging_interval="step")],
        logger=CSVLogger(arguments.output, name="csv"),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not arguments.tiny,
    )
    model = Classifier()
    trainer.fit(model, DataLoader(train, batch_size=128, shuffle=True), DataLoader(validation, batch_size=512))
    print(f"after {trainer.global_step} steps:")
    for group in trainer.optimizers[0].param_groups:
        print(f"  lr of group {group['name']!r}: {group['lr']:.3g} (peak {group['initial_lr']:.3g})")
    print(f"  val/acc {trainer.callback_metrics['val/acc'].item():.4f}")
    print(f"metrics (lr-ProxAdam/<group> per step): {Path(trainer.logger.log_dir) / 'metrics.csv'}")


if __name__ == "__main__":
    main()
