"""The up-front check of a grid's settings by the real LightningCLI parser, before any cell process starts."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule

from lightning_decay.cli import DecayCLI
from lightning_decay.sweep.grid import Cell, GridError, GridSpec

__all__ = ["check_cells"]


class _CheckCLI(DecayCLI):
    """A DecayCLI that parses and instantiates model and data but builds no Trainer."""

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        return None


def check_cells(grid: GridSpec, cells: Sequence[Cell]) -> None:
    """Parse and instantiate model and data (no Trainer) of the first cell of each variant: errors name the cell.

    Catches wrong CLI keys, unknown class paths and invalid values before any process is started.
    """
    checked: set[str] = set()
    for cell in cells:
        if cell.variant.name in checked:
            continue
        checked.add(cell.variant.name)
        try:
            with _quiet_cli():
                _CheckCLI(
                    LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    save_config_callback=None, parser_kwargs={"exit_on_error": False}, args=grid.cell_args(cell),
                    run=False,
                )
        except (argparse.ArgumentError, ValueError, TypeError) as error:
            raise GridError(f"cell {cell.id}: the LightningCLI rejects its settings: {error}") from None


@contextlib.contextmanager
def _quiet_cli() -> Iterator[None]:
    """Build a LightningCLI from ``args`` without its info logs and its warning about ``sys.argv``."""
    loggers = [logging.getLogger(name) for name in ("lightning.fabric", "lightning.pytorch")]
    levels = [logger.level for logger in loggers]
    argv = sys.argv
    try:
        sys.argv = argv[:1]
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*seed")
            yield
    finally:
        sys.argv = argv
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
