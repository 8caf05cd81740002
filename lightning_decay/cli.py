"""The ``lightning-decay`` command: LightningCLI (fit / validate / test / predict) plus ``sweep``.

    lightning-decay fit --config configs/quickstart.yaml
    lightning-decay fit --config configs/quickstart.yaml --config configs/adamp.yaml
    lightning-decay fit --config configs/quickstart.yaml --print_config
    lightning-decay sweep --config configs/blog/adamw-vs-adamp.yaml

Models and data modules are chosen by ``class_path`` (any LightningModule / LightningDataModule, e.g. a user's
model with :class:`~lightning_decay.integration.mixin.DecayMixin`). Settings that are invalid (negative lr, unknown variant,
missing data folder, ...) stop the command before training, with the offending key in the message.
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

__all__ = ["DecayCLI", "main", "run_cli"]


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


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``lightning-decay`` console script and ``python -m lightning_decay``; the exit code."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "sweep":
        from lightning_decay.sweep import main as sweep_main

        return int(sweep_main(argv[1:]) or 0)
    run_cli(None if args is None else argv)
    return 0
