"""The sweep's W&B side: the logging mode, the summary run with the pictures, the equivalent W&B sweep files.

The W&B sweep files (``wandb_sweep.yaml``, ``wandb_sweep.fit.<variant>.yaml``) name their files by paths relative
to the folder the sweep is run from (``root``), so committed files run from any checkout: run ``wandb agent``
from that folder (for the grids of ``configs/blog``: the repository root).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lightning_decay.integration.wandb_logger import wandb_logged_in
from lightning_decay.sweep.grid import GridSpec, cli_value
from lightning_decay.sweep.results import portable_path, write_text_atomic

__all__ = ["log_wandb_summary", "wandb_mode", "write_wandb_sweeps"]


def wandb_mode() -> str:
    """``WANDB_MODE`` if set, ``online`` when W&B credentials are configured, else ``offline`` (never prompts)."""
    return os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")


def log_wandb_summary(
    grid: GridSpec, plots: Mapping[str, Path], tables: Sequence[Any], measures: Sequence[Any], log: Any = print
) -> None:
    """One W&B run per sweep (``<name>-summary``, same group as the cells) holding the pictures and measures."""
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    settings = {"project": grid.name, **dict(grid.wandb or {})}
    allowed = ("project", "entity", "tags", "notes")
    run = wandb.init(
        **{k: v for k, v in settings.items() if k in allowed}, group=grid.name, name=f"{grid.name}-summary",
        job_type="sweep-summary", dir=str(grid.output), mode=wandb_mode(),
    )
    try:
        run.log({f"sweep/{name}": wandb.Image(str(path)) for name, path in plots.items()})
        for table, measure in zip(tables, measures):
            run.summary[f"rectangularity/{table.label}"] = measure.rectangularity
            run.summary[f"best_accuracy/{table.label}"] = measure.best
    finally:
        run.finish()
    log(f"W&B: pictures logged to run {grid.name}-summary ({wandb_mode()})")


def write_wandb_sweeps(grid: GridSpec, root: str | Path | None = None) -> list[Path]:
    """Write the W&B grid sweeps equivalent to ``grid`` into its output folder; return the paths.

    * ``wandb_sweep.yaml``: all cells (``variant`` is a parameter); each agent run executes
      ``lightning-decay sweep cell --config <grid> --output <output> ${args}``, i.e. exactly a cell of this
      runner, written to the same results store.
    * ``wandb_sweep.fit.<variant>.yaml``: per variant, the plain ``lightning-decay fit`` command with the
      variant's config files and overrides fixed and the axes' CLI keys as the sweep parameters.

    Paths in the commands are relative to ``root`` (default: the current directory), the folder to run
    ``wandb agent`` from. W&B's ``${args}`` macro expands to ``--name=value`` per parameter, as LightningCLI parses.
    """
    root = Path.cwd() if root is None else Path(root)
    metric = {"name": grid.metrics["accuracy"], "goal": "maximize"}
    axis_parameters = {axis.name: {"values": list(axis.values)} for axis in grid.axes}
    grid_path = portable_path(grid.path, root) if grid.path is not None else "GRID.yaml"
    everything = {
        "name": grid.name,
        "method": "grid",
        "metric": metric,
        "parameters": {"variant": {"values": [v.name for v in grid.variants]}, **axis_parameters},
        "command": [
            "${env}", "lightning-decay", "sweep", "cell", "--config", grid_path, "--output",
            portable_path(grid.output, root), "${args}",
        ],
    }
    paths = [grid.output / "wandb_sweep.yaml"]
    write_text_atomic(paths[-1], _yaml_with_header(everything, grid))
    for variant in grid.variants:
        fixed = [*grid.overrides, *variant.overrides]
        configs = [arg for path in (*grid.configs, *variant.configs) for arg in ("--config", portable_path(path, root))]
        fit = {
            "name": f"{grid.name}-{variant.name}",
            "method": "grid",
            "metric": metric,
            "parameters": {axis.key: {"values": list(axis.values)} for axis in grid.axes},
            "command": [
                "${env}", "lightning-decay", "fit", *configs, *(f"--{k}={cli_value(v)}" for k, v in fixed),
                "--trainer.logger=lightning.pytorch.loggers.WandbLogger", "${args}",
            ],
        }
        paths.append(grid.output / f"wandb_sweep.fit.{variant.name}.yaml")
        write_text_atomic(paths[-1], _yaml_with_header(fit, grid))
    return paths


def _yaml_with_header(payload: dict[str, Any], grid: GridSpec) -> str:
    header = (
        f"# W&B grid sweep equivalent to the lightning-decay sweep {grid.name!r} (written by lightning-decay sweep).\n"
        "# Paths are relative to the folder the sweep was run from (configs/blog grids: the repository root).\n"
        "# Run from that folder:  wandb sweep <this file>   then   wandb agent <entity/project/sweep id>\n"
    )
    return header + yaml.safe_dump(payload, sort_keys=False, default_flow_style=False)
