"""The LightningCLI of ``lightning-decay`` (fit / validate / test / predict); :mod:`lightning_decay.command` adds
``sweep``.

    lightning-decay fit --config configs/quickstart.yaml
    lightning-decay fit --config configs/quickstart.yaml --config configs/adamp.yaml
    lightning-decay fit --config configs/quickstart.yaml --print_config
    lightning-decay sweep --config configs/blog/adamw-vs-adamp.yaml

Models and data modules are chosen by ``class_path`` (any LightningModule / LightningDataModule, e.g. a user's
model with :class:`~lightning_decay.integration.mixin.DecayMixin`). Settings that are invalid (negative lr, unknown
variant, missing data folder, ...) stop the command before training, with the offending key in the message.
"""

from __future__ import annotations

import os

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

__all__ = ["DecayCLI", "run_cli"]


class DecayCLI(LightningCLI):
    """LightningCLI whose instantiation errors become parser errors naming the config section."""

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            parser = self._parser(self.subcommand)
            parser.error(f"invalid configuration: {error}")


def run_cli(args: ArgsType = None) -> DecayCLI:
    """Run a LightningCLI subcommand (fit / validate / test / predict) and return the CLI (trainer, model, ...)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    return DecayCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
