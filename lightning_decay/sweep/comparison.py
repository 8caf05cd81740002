"""The lr-wd slopes of several sweeps side by side, and the difference of every pair (paired by seed).

    lightning-decay sweep compare DIR [DIR ...] [--output FILE.md] [--tolerance T] [--confidence C]

Each ``DIR`` is a sweep's output folder (its ``results.json``); each of its panels (a variant and any
extra-axis values) with 3 or more weight decays gets its :class:`~lightning_decay.sweep.decoupling.LrWdSlope`. The
difference of two panels' slopes, ``slope(a) - slope(b)``, is the mean of the per-seed differences with its t interval
when both panels have the same seeds (a seed starts both variants from the same initialization and batches), else
Welch's interval (``docs/statistics.md``). This is how the claim table of ``docs/results/README.md`` compares
AdamL2, AdamW (both conventions) and ProxAdam, whose fine grids are separate sweeps (each over its own weight decays).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from lightning_decay.sweep.decoupling import (
    DEFAULT_TOLERANCE,
    LrWdSlope,
    best_log_x,
    informative_rows,
    measure_table_slope,
)
from lightning_decay.sweep.grid import format_value
from lightning_decay.sweep.results import ResultTable, load_results, result_tables, write_text_atomic
from lightning_decay.sweep.statistics import Interval, difference_interval

__all__ = ["PanelSlope", "comparison_report", "load_panel_slopes", "main", "panel_slope", "slope_difference"]


@dataclass(frozen=True)
class PanelSlope:
    """One panel's lr-wd slope with what it rests on: ``seeds`` (in the order of ``slope.per_seed``), the weight
    decays (rows), and per weight decay the best lr of the seed-averaged table (parabola-refined; None for a row
    where nothing trains) and whether it sits at the lr grid's edge."""

    label: str
    source: str
    seeds: tuple[object, ...]
    weight_decays: tuple[float, ...]
    best_lrs: tuple[float | None, ...]
    at_edge: tuple[bool, ...]
    best_accuracies: tuple[float, ...]
    slope: LrWdSlope


def panel_slope(
    table: ResultTable, source: str, tolerance: float = DEFAULT_TOLERANCE, confidence: float = 0.95
) -> PanelSlope:
    """:class:`PanelSlope` of a :class:`~lightning_decay.sweep.results.ResultTable` (rows: weight decays, columns:
    lrs, a ``seed`` column); ``source`` names where it came from (the sweep folder's name)."""
    slope = measure_table_slope(table, tolerance, confidence)
    values = table.values
    best, edge = best_log_x(values, table.x_values)
    use = informative_rows(values)
    with np.errstate(invalid="ignore"):
        best_accuracies = tuple(float(np.nanmax(row)) if np.isfinite(row).any() else math.nan for row in values)
    return PanelSlope(
        label=table.label,
        source=source,
        seeds=tuple(table.by_seed()),
        weight_decays=tuple(float(v) for v in table.y_values),
        best_lrs=tuple(float(10.0**b) if ok and math.isfinite(b) else None for b, ok in zip(best, use)),
        at_edge=tuple(bool(e and ok) for e, ok in zip(edge, use)),
        best_accuracies=best_accuracies,
        slope=slope,
    )


def load_panel_slopes(
    folders: Sequence[str | Path], tolerance: float = DEFAULT_TOLERANCE, confidence: float = 0.95
) -> list[PanelSlope]:
    """:func:`panel_slope` of every panel (3+ weight decays, lr x weight_decay) of every sweep folder, in order."""
    panels = []
    for folder in folders:
        path = Path(folder)
        if not path.is_dir():
            raise ValueError(f"sweep folder {str(folder)!r} does not exist")
        tables = result_tables(load_results(path))
        if not tables:
            raise ValueError(f"sweep folder {str(folder)!r} has no finished cell")
        for table in tables:
            if len(table.y_values) < 3:
                raise ValueError(
                    f"{path.name}: panel {table.label!r} has {len(table.y_values)} weight decays; a slope needs 3"
                    " or more"
                )
            panels.append(panel_slope(table, path.name, tolerance, confidence))
    return panels


def slope_difference(a: PanelSlope, b: PanelSlope, confidence: float = 0.95) -> Interval:
    """``slope(a) - slope(b)`` over the per-seed slopes: paired when both panels have the same seeds (2 or more, each
    with a finite slope on both sides), else Welch's interval over the finite per-seed slopes."""
    slopes_a = dict(zip(a.seeds, a.slope.per_seed))
    slopes_b = dict(zip(b.seeds, b.slope.per_seed))
    if set(slopes_a) == set(slopes_b) and len(slopes_a) >= 2:
        seeds = list(slopes_a)
        return difference_interval([slopes_a[s] for s in seeds], [slopes_b[s] for s in seeds], confidence, paired=True)
    return difference_interval(list(a.slope.per_seed), list(b.slope.per_seed), confidence)


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _interval(interval: Interval, digits: int = 2) -> str:
    """``+0.14 [-0.20, +0.48]``, fixed decimals and signs (slopes are compared by eye down a column)."""
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return f"{_number(interval.estimate, digits)} (n={interval.n}, no interval)"
    return f"{_number(interval.estimate, digits)} [{_number(interval.low, digits)}, {_number(interval.high, digits)}]"


def comparison_report(panels: Sequence[PanelSlope], confidence: float = 0.95) -> str:
    """Markdown: each panel's slope, verdict and best lr per weight decay; every pair's slope difference."""
    if not panels:
        raise ValueError("no panels to compare")
    percent = round(confidence * 100)
    tolerance = panels[0].slope.tolerance
    lines = [
        "# The lr-wd slopes compared",
        "",
        "Written by `lightning-decay sweep compare` (`lightning_decay/sweep/comparison.py`); the measure, its verdict"
        " bands and the expected values of the ideal cases are in `docs/statistics.md`. Slope: decades the best lr"
        " moves per decade of weight decay, per seed, then mean and "
        f"{percent}% t interval over seeds (0 = decoupled, -1 = best lr proportional to 1/wd). Rectangularity: per"
        f" seed at tolerance {tolerance:g}, mean and interval.",
        "",
        f"| panel | sweep | seeds | weight decays | slope [{percent}% CI] | per seed | verdict |"
        " rectangularity | rows / edge |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for panel in panels:
        s = panel.slope
        lines.append(
            f"| {panel.label} | {panel.source} | {len(panel.seeds)} | "
            f"{format_value(panel.weight_decays[0])} ... {format_value(panel.weight_decays[-1])} "
            f"({len(panel.weight_decays)}) | {_interval(s.slope)} | {', '.join(_number(v) for v in s.per_seed)} | "
            f"{s.verdict} | {_interval(s.rectangularity).replace('+', '')} | {s.rows} / {s.edge_rows} |"
        )
    lines += ["", "Best lr per weight decay (seed-averaged table, parabola-refined; `edge`: at the lr grid's edge; `-`:"
              " nothing trains in that row), with the row's best mean accuracy:", ""]
    for panel in panels:
        cells = []
        for wd, lr, edge, accuracy in zip(panel.weight_decays, panel.best_lrs, panel.at_edge, panel.best_accuracies):
            where = "-" if lr is None else f"{lr:.2g}" + (" edge" if edge else "")
            cells.append(f"{format_value(wd)}: {where} ({accuracy * 100:.1f}%)")
        lines.append(f"* {panel.label}: " + "; ".join(cells))
    lines += ["", f"Differences of the slopes (first - second; {percent}% interval, paired by seed where the seeds"
              " match):", "", "| first | second | difference | method | verdict |", "|---|---|---|---|---|"]
    for a, b in combinations(panels, 2):
        difference = slope_difference(a, b, confidence)
        if difference.excludes(0.0):
            said = "larger than the seed spread"
        elif math.isfinite(difference.low):
            said = "within the seed spread"
        else:
            said = "no interval"
        lines.append(f"| {a.label} | {b.label} | {_interval(difference)} | {difference.method} | {said} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``lightning-decay sweep compare DIR [DIR ...]``: print (or write) :func:`comparison_report`."""
    parser = argparse.ArgumentParser(
        prog="lightning-decay sweep compare",
        description="Compare the lr-wd slopes of sweeps (each folder: a sweep's output) with intervals over seeds.",
    )
    parser.add_argument("folders", nargs="+", help="sweep output folders (holding results.json)")
    parser.add_argument("--output", help="write the Markdown report here instead of printing it")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="rectangularity tolerance")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval confidence, in (0, 1)")
    args = parser.parse_args(argv)
    if not 0.0 < args.confidence < 1.0:
        parser.error(f"--confidence must be in (0, 1), got {args.confidence}")
    if not 0.0 <= args.tolerance <= 1.0:
        parser.error(f"--tolerance must be in [0, 1], got {args.tolerance}")
    try:
        report = comparison_report(load_panel_slopes(args.folders, args.tolerance, args.confidence), args.confidence)
    except ValueError as error:
        parser.error(str(error))
    if args.output:
        write_text_atomic(Path(args.output), report)
    else:
        print(report, end="")
    return 0
