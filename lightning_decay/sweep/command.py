"""The ``lightning-decay sweep`` command line (also ``python -m lightning_decay.sweep``).

    lightning-decay sweep --config grid.yaml [--jobs N] [--dry-run] [--plot-only] [--output DIR]
    lightning-decay sweep cell --config grid.yaml --variant V --lr X ...   # one cell here (W&B agents)
    lightning-decay sweep compare DIR [DIR ...] [--output FILE.md]        # lr-wd slopes of sweeps compared
    python -m lightning_decay.sweep run-cell <cell folder>/spec.json [--attempt ID]  # one job (the runner's)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from lightning_decay.sweep.cell import cell_spec, run_cell
from lightning_decay.sweep.comparison import main as compare_main
from lightning_decay.sweep.executors import EXECUTORS
from lightning_decay.sweep.grid import Cell, GridError, GridSpec, number_or_value
from lightning_decay.sweep.locks import cell_state, claim_owner, hold_cell
from lightning_decay.sweep.pool import run_sweep
from lightning_decay.sweep.results import cell_dir, collect_results, write_results
from lightning_decay.sweep.units import run_cell_command

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``lightning-decay sweep ...`` (see the module docstring and ``docs/sweeps.md``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run-cell"]:
        return run_cell_command(argv[1:])
    if os.getcwd() not in sys.path:  # class paths of the user's own modules resolve as in the cell processes
        sys.path.insert(0, os.getcwd())
    try:
        if argv[:1] == ["cell"]:
            return _run_one_cell(argv[1:])
        if argv[:1] == ["compare"]:
            return compare_main(argv[1:])
        parser = argparse.ArgumentParser(
            prog="lightning-decay sweep",
            description="Run a grid of lightning-decay fits (resumable), then draw heatmaps and measure decoupling.",
        )
        parser.add_argument("--config", required=True, help="the grid YAML file (format: docs/sweeps.md)")
        parser.add_argument("--jobs", type=int, help="cells run at once (default: grid's jobs, else #GPUs, else 1)")
        parser.add_argument("--output", help="output folder (default: the grid's output)")
        parser.add_argument(
            "--batch-cells", type=int, metavar="N",
            help="run up to N cells sharing model and data one after another in one process (default: grid's, else 1)",
        )
        parser.add_argument("--dry-run", action="store_true", help="list the cells and check them; run nothing")
        parser.add_argument("--plot-only", action="store_true", help="only rebuild the tables and pictures")
        parser.add_argument("--rerun-changed", action="store_true", help="re-run cells finished with other settings")
        parser.add_argument(
            "--no-check", action="store_true", help="skip the up-front LightningCLI check of each variant's first cell"
        )
        parser.add_argument("--wandb", action=argparse.BooleanOptionalAction, help="log to W&B (overrides the grid)")
        parser.add_argument(
            "--executor", choices=sorted(EXECUTORS), help="where cells run: local processes (default), SLURM jobs "
            "through submitit, Ray tasks (default: the grid's executor; its options come from the grid file)",
        )
        args = parser.parse_args(argv)
        if args.jobs is not None and args.jobs < 1:
            parser.error("--jobs must be >= 1")
        if args.batch_cells is not None and args.batch_cells < 1:
            parser.error("--batch-cells must be >= 1")
        grid = GridSpec.load(args.config, args.output)
        if args.wandb is not None:
            grid = dataclasses.replace(grid, wandb=(dict(grid.wandb or {}) if args.wandb else None))
        if args.batch_cells is not None:
            grid = dataclasses.replace(grid, batch_cells=args.batch_cells)
        summary = run_sweep(
            grid, jobs=args.jobs, dry_run=args.dry_run, plot_only=args.plot_only, rerun_changed=args.rerun_changed,
            validate=not args.no_check, executor=args.executor,
        )
    except GridError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any cell started, or while drawing
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if args.dry_run or args.plot_only else summary.exit_code


def _run_one_cell(argv: list[str]) -> int:
    """``lightning-decay sweep cell --config GRID --variant V --lr X ...``: run one cell in this process."""
    parser = argparse.ArgumentParser(prog="lightning-decay sweep cell", description=_run_one_cell.__doc__)
    parser.add_argument("--config", required=True, help="the grid YAML file")
    parser.add_argument("--output", help="output folder (default: the grid's)")
    known, _ = parser.parse_known_args(argv)
    grid = GridSpec.load(known.config, known.output)
    parser.add_argument("--variant", required=True, choices=[v.name for v in grid.variants])
    for axis in grid.axes:
        parser.add_argument(f"--{axis.name}", required=True, help=f"one of {list(axis.values)}")
    args = parser.parse_args(argv)
    variant = next(v for v in grid.variants if v.name == args.variant)
    values = []
    for axis in grid.axes:
        given = number_or_value(getattr(args, axis.name))
        match = [v for v in axis.values if v == given or str(v) == str(given)]
        if not match:
            parser.error(f"--{axis.name}={given!r} is not a value of the grid: {list(axis.values)}")
        values.append((axis.name, match[0]))
    cell = Cell(variant, tuple(values))
    fingerprint = grid.fingerprint(cell)
    if cell_state(grid, cell, fingerprint) == "done":
        print(f"{cell.id}: already finished in {grid.output}")
        return 0
    folder = cell_dir(grid.output, cell.id)
    with hold_cell(folder, fingerprint) as attempt:  # claimed while it runs here
        if attempt is None:
            print(f"{cell.id}: being run by {claim_owner(folder)}", file=sys.stderr)
            return 1
        spec = cell_spec(grid, cell, fingerprint, grid.threads)
        spec["parent_pid"] = None
        if os.environ.get("WANDB_SWEEP_ID") and spec["wandb"] is None:
            spec["wandb"] = {}
        code = run_cell(spec, folder)
    write_results(grid, collect_results(grid))
    return code
