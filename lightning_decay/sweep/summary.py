"""What a sweep leaves behind: the results tables, the pictures, the decoupling report, the W&B summary run.

:func:`finish_sweep` runs after the cells (or alone, for ``--plot-only``) and fills :class:`SweepSummary`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_decay.sweep.decoupling import DEFAULT_TOLERANCE, decoupling_report, measure_tables, panel_slopes
from lightning_decay.sweep.grid import GridSpec, format_value
from lightning_decay.sweep.heatmaps import plot_sweep
from lightning_decay.sweep.results import (
    collect_results,
    result_tables,
    write_json_atomic,
    write_results,
    write_text_atomic,
)
from lightning_decay.sweep.statistics import best_cell
from lightning_decay.sweep.wandb_export import log_wandb_summary

__all__ = ["SweepSummary", "finish_sweep", "format_number"]


@dataclass
class SweepSummary:
    """What a call of :func:`~lightning_decay.sweep.pool.run_sweep` did."""

    total: int
    skipped: list[str] = field(default_factory=list)  # finished before this call
    ran: list[str] = field(default_factory=list)  # finished with status ok in this call
    failed: list[str] = field(default_factory=list)  # ran in this call and did not finish ok
    locked: list[str] = field(default_factory=list)  # being run by another live sweep process
    interrupted: bool = False
    plots: dict[str, Path] = field(default_factory=dict)
    results: Path | None = None

    @property
    def exit_code(self) -> int:
        """0 when every cell is finished, 130 when interrupted, 1 otherwise."""
        if self.interrupted:
            return 130
        return 0 if not self.failed and not self.locked else 1


def format_number(value: Any, digits: int = 4) -> str:
    """A number for a progress line (``nan`` for None)."""
    return "nan" if value is None else f"{value:.{digits}g}"


def finish_sweep(grid: GridSpec, summary: SweepSummary, log: Callable[[str], Any] = print) -> SweepSummary:
    """Rebuild the results table, write the pictures and the decoupling report, log the pictures to W&B."""
    rows = collect_results(grid)
    grid.output.mkdir(parents=True, exist_ok=True)
    summary.results = write_results(grid, rows)[1]
    ok = [row for row in rows if row.get("status") == "ok"]
    not_ok = summary.total - len(ok)
    log(
        f"sweep {grid.name}: {len(ok)}/{summary.total} cells finished"
        + (f", {not_ok} not finished (re-run the same command to run them)" if not_ok else "")
        + f"; results: {summary.results}"
    )
    if not ok:
        return summary
    if summary.interrupted:
        log("pictures and decoupling report skipped (interrupted); re-run the command or use --plot-only")
        return summary
    x, y = grid.plot["x"], grid.plot["y"]
    if grid.axis(x) is None or grid.axis(y) is None:
        log(f"no heatmaps: the grid needs axes {x!r} and {y!r} (or set plot.x / plot.y)")
        return summary
    tolerance = grid.plot["tolerance"] if grid.plot["tolerance"] is not None else DEFAULT_TOLERANCE
    tables = result_tables(ok, x, y, "accuracy")
    measures = measure_tables(tables, tolerance)
    slopes = panel_slopes(tables, tolerance)
    write_text_atomic(grid.output / "decoupling.md", decoupling_report(tables, measures, tolerance, slopes))
    panels = {}
    for table, measure, slope in zip(tables, measures, slopes):
        panels[table.label] = measure.to_dict()
        if slope is not None and int(table.counts.max()) > 1:
            panels[table.label]["over_seeds"] = {"best_cell": best_cell(table).to_dict(), **slope.to_dict()}
    write_json_atomic(grid.output / "decoupling.json", {"tolerance": tolerance, "x": x, "y": y, "panels": panels})
    summary.plots = plot_sweep(
        ok, grid.output, x=x, y=y, tolerance=tolerance, norm_min_accuracy=grid.plot["norm_min_accuracy"],
        accuracy_metric_name=grid.metrics["accuracy"],
    )
    for table, measure in zip(tables, measures):
        best_x, best_y = table.x_values[measure.best_cell[1]], table.y_values[measure.best_cell[0]]
        log(
            f"  {table.label}: best {format_number(measure.best)} at {x}={format_value(best_x)}"
            f" {y}={format_value(best_y)}; rectangularity {measure.rectangularity:.2f}"
            f" ({measure.good_cells} good / {measure.box_cells} in box)"
        )
    log(f"pictures: {', '.join(str(p) for p in summary.plots.values())}; decoupling: {grid.output / 'decoupling.md'}")
    if grid.wandb is not None and summary.plots:
        log_wandb_summary(grid, summary.plots, tables, measures, log)
    return summary
