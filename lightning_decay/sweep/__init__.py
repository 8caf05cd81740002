"""Grid sweeps over (variant, lr, weight decay, seed, ...): the grid file, the runner and the results store.

    lightning-decay sweep --config grid.yaml [--jobs N] [--dry-run] [--plot-only] [--output DIR]

Every cell of the grid is one ``lightning-decay fit``-style run (a :class:`~lightning_decay.cli.DecayCLI` built
from the grid's base config files plus the cell's overrides) in its own process, followed by a test run. A cell
writes ``<output>/cells/<cell id>/result.json`` atomically when it ends; the tables ``results.csv`` and
``results.json`` are rebuilt from those files after every cell, so a crash loses at most the cells that were
running. A cell counts as finished only when its ``result.json`` says ``status: ok`` and was made with the same
settings (a fingerprint of the parsed config files and overrides); a re-run skips finished cells and runs the rest,
including cells whose process was killed (no result, a lock whose processes are gone). The grid file format, the
output files and the decoupling number are documented in ``docs/sweeps.md``.

Modules, in dependency order: :mod:`~lightning_decay.sweep.grid` (the grid file), :mod:`~.results` (the results
store and tables), :mod:`~.decoupling` (the decoupling number), :mod:`~.comparison` (slopes of several sweeps
compared), :mod:`~.heatmaps` (the pictures),
:mod:`~.wandb_export` (W&B mode, summary run and sweep files), :mod:`~.cell` (one cell's run), :mod:`~.locks`
(cell locks and states), :mod:`~.check` (the up-front LightningCLI check), :mod:`~.summary` (what a sweep
leaves behind), :mod:`~.pool` (the process pool), :mod:`~.command` (the command line).
"""

from lightning_decay.sweep.cell import CellRecorder, run_cell, total_weight_norm
from lightning_decay.sweep.check import check_cells
from lightning_decay.sweep.command import main
from lightning_decay.sweep.decoupling import DEFAULT_TOLERANCE, Decoupling, decoupling_report, measure_decoupling
from lightning_decay.sweep.grid import Axis, Cell, GridError, GridSpec, Variant
from lightning_decay.sweep.heatmaps import plot_accuracy_heatmaps, plot_norm_curves, plot_norm_heatmaps, plot_sweep
from lightning_decay.sweep.pool import run_sweep
from lightning_decay.sweep.results import ResultTable, collect_results, load_results, result_tables, write_results
from lightning_decay.sweep.summary import SweepSummary
from lightning_decay.sweep.wandb_export import write_wandb_sweeps

__all__ = [
    "DEFAULT_TOLERANCE",
    "Axis",
    "Cell",
    "CellRecorder",
    "Decoupling",
    "GridError",
    "GridSpec",
    "ResultTable",
    "SweepSummary",
    "Variant",
    "check_cells",
    "collect_results",
    "decoupling_report",
    "load_results",
    "main",
    "measure_decoupling",
    "plot_accuracy_heatmaps",
    "plot_norm_curves",
    "plot_norm_heatmaps",
    "plot_sweep",
    "result_tables",
    "run_cell",
    "run_sweep",
    "total_weight_norm",
    "write_results",
    "write_wandb_sweeps",
]
