"""Your own LightningCLI for your own ``DecayMixin`` model, configured by a YAML ``decay:`` block.

``MLPClassifier`` names ``decay: DecaySettings`` in its signature, so LightningCLI documents and validates every
setting of the block (``--print_config``, ``--help``); a misspelt key or an unknown variant stops the command before
training. ``ClassifierCLI`` is the package's ``DecayCLI`` (a LightningCLI whose configuration errors name the key) with
one addition of your own: the data's sizes are linked to the model's. The data are synthetic Gaussian clusters.

Run (about 25 s on 2 CPU cores; settings in ``examples/own_cli.yaml``):

    python examples/own_cli.py fit --config examples/own_cli.yaml
    python examples/own_cli.py fit --config examples/own_cli.yaml --model.decay.optimizer proxadam
    python examples/own_cli.py fit --config examples/own_cli.yaml --print_config
    python examples/own_cli.py fit --config examples/own_cli.yaml --trainer.max_steps 5 --data.samples 512  # tiny

Logs, the full config and the metrics go to ``outputs/examples/own_cli`` (``--trainer.default_root_dir`` and
``--trainer.logger.init_args.save_dir`` move them).
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_decay import DecayMixin, DecaySettings
from lightning_decay.cli import DecayCLI


class MLPClassifier(DecayMixin, LightningModule):
    """An MLP classifier; its optimizer, parameter groups and schedule come from ``decay``."""

    def __init__(
        self,
        features: int = 16,
        classes: int = 8,
        hidden: int = 128,
        decay: DecaySettings = DecaySettings(),  # noqa: B008 - frozen dataclass: one shared default is safe
    ) -> None:
        super().__init__(decay=decay)
        self.save_hyperparameters()  # stores decay too: load_from_checkpoint rebuilds the same optimizer
        self.network = nn.Sequential(
            nn.Linear(features, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, classes)
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> Tensor:
        inputs, labels = batch
        loss = nn.functional.cross_entropy(self.network(inputs), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> None:
        inputs, labels = batch
        self.log("val/acc", (self.network(inputs).argmax(dim=1) == labels).float().mean(), prog_bar=True)


class GaussianClusters(LightningDataModule):
    """Points around random class centres, made on the spot (``noise`` sets how much the classes overlap)."""

    def __init__(
        self, samples: int = 20_000, features: int = 16, classes: int = 8, noise: float = 1.5, batch_size: int = 128
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        generator = torch.Generator().manual_seed(0)
        centres = torch.randn(self.hparams.classes, self.hparams.features, generator=generator)
        labels = torch.randint(0, self.hparams.classes, (self.hparams.samples + 1024,), generator=generator)
        inputs = centres[labels] + self.hparams.noise * torch.randn(len(labels), centres.shape[1], generator=generator)
        self.train_set = TensorDataset(inputs[1024:], labels[1024:])
        self.validation_set = TensorDataset(inputs[:1024], labels[:1024])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.validation_set, batch_size=1024)


class ClassifierCLI(DecayCLI):
    """``DecayCLI`` (a LightningCLI) plus your own additions: here, the model's sizes follow the data's."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.features", "model.features")
        parser.link_arguments("data.classes", "model.classes")


def main() -> None:
    cli = ClassifierCLI(MLPClassifier, GaussianClusters, save_config_kwargs={"overwrite": True})
    if cli.subcommand == "fit":
        metrics = {key: float(value) for key, value in cli.trainer.callback_metrics.items()}
        settings = cli.model.decay_settings
        print(
            f"trained {settings.optimizer} (lr {settings.lr:g}, weight_decay {settings.weight_decay:g}) for "
            f"{cli.trainer.global_step} steps: train/loss {metrics['train/loss']:.4f}, val/acc {metrics['val/acc']:.4f}"
        )
        print(f"config and metrics: {cli.trainer.log_dir}")


if __name__ == "__main__":
    main()
