"""How decoupled are learning rate and weight decay? One number from an accuracy table, no eyeballing.

Loshchilov & Hutter claim that with AdamW the good (lr, weight decay) region of a test-accuracy heatmap is more
*rectangular* (axis-aligned) than with Adam + L2, so the best lr hardly moves when the weight decay changes. This
module measures that on a table ``values[i, j]`` (rows ``i``: weight decays, columns ``j``: learning rates, in grid
order; NaN = no result):

* **good region** ``G``: the cells with ``value >= best - tolerance * (best - median)`` (``best``/``median`` over
  the measured cells; ``tolerance`` 0.5 by default: at least halfway from the median up to the best).
* **rectangularity** (the headline number) ``= |G| / |B|``, where ``B`` is the set of measured cells inside the
  smallest axis-aligned box (in grid-index space) that contains ``G``. 1.0: the good region is a full rectangle
  (e.g. one lr column good for every weight decay: perfectly decoupled); a diagonal band of a ``n x n`` grid gives
  ``1/n`` (the best lr moves with the weight decay: coupled).
* **best x per y / best y per x**: the best lr at each weight decay and the best weight decay at each lr, and their
  spread in grid steps (``x_shift``: how far the best lr moves as the weight decay changes).

The threshold is relative (best vs. median), so it is the same for accuracies in [0, 1] or in percent and is not
dragged down by diverged cells. ``docs/sweeps.md`` explains the choice.

Over seeds, the measure that discriminates (:func:`measure_lr_wd_slope`, ``docs/statistics.md``): per seed, the
least-squares slope of ``log10(best lr)`` on ``log10(weight decay)`` (best lr refined within the grid), then its mean
and t interval over seeds: 0 when decoupled, -1 when the best lr goes as ``1/wd``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from lightning_decay.sweep.statistics import (
    Interval,
    best_cell,
    compare_best_cells,
    mean_interval,
    slope_interval,
    verdict,
)
from lightning_decay.validation import check_real

__all__ = [
    "DEFAULT_TOLERANCE", "NEGLIGIBLE_SLOPE", "Decoupling", "LrWdSlope", "best_log_x", "decoupling_report",
    "good_region", "informative_rows", "measure_decoupling", "measure_lr_wd_slope", "measure_table_slope",
    "measure_tables", "panel_slopes", "seed_report", "slope_verdict",
]

#: Default ``tolerance``: good cells are at least halfway from the median up to the best.
DEFAULT_TOLERANCE = 0.5


@dataclass(frozen=True)
class Decoupling:
    """The decoupling measures of one table (see the module docstring).

    ``best_cell`` is ``(row, column)``; ``best_x_per_y[i]`` is the x value (e.g. lr) of the best cell of row ``i``
    (None for a row without results), ``best_y_per_x[j]`` the y value of the best cell of column ``j``.
    """

    rectangularity: float
    good_cells: int
    box_cells: int
    threshold: float
    best: float
    median: float
    best_cell: tuple[int, int]
    best_x_per_y: tuple[Any, ...]
    best_y_per_x: tuple[Any, ...]
    x_shift: int
    y_shift: int
    good_mask: tuple[tuple[bool, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _as_table(values: ArrayLike) -> np.ndarray:
    table = np.asarray(values, dtype=float)
    if table.ndim != 2 or table.size == 0:
        raise ValueError(f"values must be a non-empty 2-D table, got shape {table.shape}")
    if not np.isfinite(table).any():
        raise ValueError("values has no finite entry")
    return np.where(np.isfinite(table), table, np.nan)


def good_region(values: ArrayLike, tolerance: float = DEFAULT_TOLERANCE) -> tuple[np.ndarray, float]:
    """``(mask, threshold)``: the cells with ``value >= best - tolerance * (best - median)`` (NaN cells never)."""
    tolerance = check_real("tolerance", tolerance, low=0.0, high=1.0)
    table = _as_table(values)
    best, median = float(np.nanmax(table)), float(np.nanmedian(table))
    threshold = best - tolerance * (best - median)
    with np.errstate(invalid="ignore"):
        mask = np.isfinite(table) & (table >= threshold)
    return mask, threshold


def _argmax_along(table: np.ndarray, axis: int) -> list[int | None]:
    """Index of the best entry of each row (``axis=1``) or column (``axis=0``); first one on ties; None if empty."""
    out: list[int | None] = []
    lines = table if axis == 1 else table.T
    for line in lines:
        out.append(None if not np.isfinite(line).any() else int(np.nanargmax(line)))
    return out


def _shift(indices: Sequence[int | None]) -> int:
    present = [i for i in indices if i is not None]
    return max(present) - min(present) if present else 0


def measure_decoupling(
    values: ArrayLike,
    x_values: Sequence[Any] | None = None,
    y_values: Sequence[Any] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Decoupling:
    """The decoupling measures of ``values[i, j]`` (higher is better; rows = y, columns = x; NaN = missing)."""
    table = _as_table(values)
    rows, columns = table.shape
    x_values = list(range(columns)) if x_values is None else list(x_values)
    y_values = list(range(rows)) if y_values is None else list(y_values)
    if len(x_values) != columns or len(y_values) != rows:
        raise ValueError(f"{len(y_values)} y values and {len(x_values)} x values for a table of shape {table.shape}")
    mask, threshold = good_region(table, tolerance)
    good_rows, good_columns = np.nonzero(mask)
    box = table[good_rows.min() : good_rows.max() + 1, good_columns.min() : good_columns.max() + 1]
    box_cells = int(np.isfinite(box).sum())
    best_row = _argmax_along(table, axis=1)
    best_column = _argmax_along(table, axis=0)
    flat = int(np.nanargmax(table))
    return Decoupling(
        rectangularity=int(mask.sum()) / box_cells,
        good_cells=int(mask.sum()),
        box_cells=box_cells,
        threshold=threshold,
        best=float(np.nanmax(table)),
        median=float(np.nanmedian(table)),
        best_cell=(flat // columns, flat % columns),
        best_x_per_y=tuple(None if j is None else x_values[j] for j in best_row),
        best_y_per_x=tuple(None if i is None else y_values[i] for i in best_column),
        x_shift=_shift(best_row),
        y_shift=_shift(best_column),
        good_mask=tuple(tuple(bool(v) for v in row) for row in mask),
    )


# -- the lr-wd slope: how far the best lr moves per decade of weight decay, over seeds ---------------------------


def _log10_positive(values: Sequence[Any]) -> np.ndarray:
    """log10 of each value; NaN for values that are not positive numbers."""
    out = np.full(len(values), np.nan)
    for k, v in enumerate(values):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            out[k] = math.log10(v)
    return out


def informative_rows(values: ArrayLike) -> np.ndarray:
    """The rows whose best entry reaches halfway from the table's worst entry (the chance floor where some cell
    diverged) to its best: rows where nothing trains say nothing of a best lr."""
    table = _as_table(values)
    floor = float(np.nanmin(table))
    halfway = floor + 0.5 * (float(np.nanmax(table)) - floor)
    with np.errstate(invalid="ignore"):
        return np.array([np.isfinite(row).any() and float(np.nanmax(row)) >= halfway for row in table])


def best_log_x(values: ArrayLike, x_values: Sequence[Any], refine: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(u, at_edge)`` per row of ``values`` (columns: ``x_values``, positive): ``u[i] = log10`` of the row's best x,
    and whether that is the first or last measured column (the true optimum may lie beyond the grid).

    ``refine``: the vertex of the parabola through the best cell and its two neighbours in ``log10(x)`` (within half
    a grid step of the best cell when it is the largest of the three), which turns the grid's steps into a continuous
    estimate. Rows without a finite entry get NaN."""
    table = _as_table(values)
    u = _log10_positive(list(x_values))
    if len(u) != table.shape[1] or not np.isfinite(u).all():
        raise ValueError("x_values must be one positive number per column")
    best = np.full(table.shape[0], np.nan)
    edge = np.zeros(table.shape[0], dtype=bool)
    for i, row in enumerate(table):
        measured = np.flatnonzero(np.isfinite(row))
        if measured.size == 0:
            continue
        j = int(np.nanargmax(row))
        best[i] = u[j]
        edge[i] = j in (measured[0], measured[-1])
        if refine and not edge[i] and np.isfinite(row[j - 1]) and np.isfinite(row[j + 1]):
            a, b, _ = np.polyfit(u[j - 1 : j + 2], row[j - 1 : j + 2], 2)
            if a < 0:
                best[i] = float(np.clip(-b / (2 * a), (u[j - 1] + u[j]) / 2, (u[j] + u[j + 1]) / 2))
    return best, edge


@dataclass(frozen=True)
class LrWdSlope:
    """How far the best lr moves with the weight decay (``docs/statistics.md``).

    ``slope``: the mean over seeds of each seed's least-squares slope of ``log10(best lr)`` on ``log10(wd)`` (over
    its informative rows), with the t interval over seeds; 0 = decoupled (the best lr does not move), -1 = best lr
    proportional to 1/wd (coupled through the product lr * wd). ``per_seed``: those slopes. ``mean_table``: the same
    slope on the seed-averaged table, interval over its rows (rows are not independent replicates: a secondary
    number). ``rows``/``edge_rows``: informative rows of the averaged table and those whose best lr is at the lr
    grid's edge (then the slope is a bound: the optimum may lie outside). ``rectangularity``: the rectangularity
    (at ``tolerance``) of each seed's table, mean and t interval over seeds.
    """

    slope: Interval
    per_seed: tuple[float, ...]
    mean_table: Interval
    rows: int
    edge_rows: int
    rectangularity: Interval
    tolerance: float
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = asdict(self)
        for key in ("slope", "mean_table", "rectangularity"):
            out[key] = getattr(self, key).to_dict()
        out["per_seed"] = [None if not math.isfinite(v) else v for v in self.per_seed]
        return out


#: A slope this small is negligible: across the 2.5 decades of weight decay of the fine grids it moves the best lr by
#: 0.25 decades, less than one step (a factor 2, 0.3 decades) of their lr grid.
NEGLIGIBLE_SLOPE = 0.1


def slope_verdict(slope: Interval) -> str:
    """Which ideal the slope's interval lies nearer to, everywhere (the bands of ``docs/statistics.md``):

    * inside (-0.5, 0.5), nearer 0 than +-1: ``weakly coupled`` when it lies below ``-NEGLIGIBLE_SLOPE`` (the best lr
      falls with wd, detectably, but less than half the way to 1/wd), ``weakly coupled, rising`` when it lies above
      ``+NEGLIGIBLE_SLOPE``, else ``decoupled``;
    * inside (-1.5, -0.5): ``coupled`` (nearer -1: the best lr falls as 1/wd); inside (0.5, 1.5): ``coupled, rising``;
    * otherwise ``undetermined`` (the interval reaches across -0.5 or +0.5, or there is none), with `` (shift
      detectable)`` when it excludes 0.
    """
    if not (math.isfinite(slope.low) and math.isfinite(slope.high)):
        return "undetermined"
    if -0.5 < slope.low and slope.high < 0.5:
        if slope.high < -NEGLIGIBLE_SLOPE:
            return "weakly coupled"
        if slope.low > NEGLIGIBLE_SLOPE:
            return "weakly coupled, rising"
        return "decoupled"
    if -1.5 < slope.low and slope.high < -0.5:
        return "coupled"
    if 0.5 < slope.low and slope.high < 1.5:
        return "coupled, rising"
    return "undetermined" + (" (shift detectable)" if slope.excludes(0.0) else "")


def _seed_slope(table: np.ndarray, x_values: Sequence[Any], log_y: np.ndarray, refine: bool) -> Interval:
    best, _ = best_log_x(table, x_values, refine)
    use = informative_rows(table) & np.isfinite(log_y)
    return slope_interval(log_y[use], best[use])


def measure_lr_wd_slope(
    seed_tables: Sequence[ArrayLike],
    x_values: Sequence[Any],
    y_values: Sequence[Any],
    tolerance: float = DEFAULT_TOLERANCE,
    confidence: float = 0.95,
    refine: bool = True,
) -> LrWdSlope:
    """:class:`LrWdSlope` of one panel from its per-seed tables (rows: ``y_values``, the weight decays; columns:
    ``x_values``, the lrs; all positive; NaN = missing)."""
    tables = [_as_table(t) for t in seed_tables]
    if not tables:
        raise ValueError("no seed tables")
    log_y = _log10_positive(list(y_values))
    if len(log_y) != tables[0].shape[0]:
        raise ValueError(f"{len(log_y)} y values for tables with {tables[0].shape[0]} rows")
    per_seed = tuple(_seed_slope(t, x_values, log_y, refine).estimate for t in tables)
    finite_slopes = [v for v in per_seed if math.isfinite(v)]
    slope = (
        mean_interval(finite_slopes, confidence) if finite_slopes
        else Interval(math.nan, math.nan, math.nan, confidence, 0, 0.0, math.nan, math.nan, "t")
    )
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (missing everywhere) stay NaN
        mean = np.nanmean(np.stack(tables), axis=0)
    best, edge = best_log_x(mean, x_values, refine)
    use = informative_rows(mean) & np.isfinite(log_y)
    rectangularity = mean_interval(
        [measure_decoupling(t, tolerance=tolerance).rectangularity for t in tables], confidence
    )
    return LrWdSlope(
        slope=slope,
        per_seed=per_seed,
        mean_table=slope_interval(log_y[use], best[use], confidence),
        rows=int(use.sum()),
        edge_rows=int((edge & use).sum()),
        rectangularity=rectangularity,
        tolerance=tolerance,
        verdict=slope_verdict(slope),
    )


def measure_table_slope(table: Any, tolerance: float = DEFAULT_TOLERANCE, confidence: float = 0.95) -> LrWdSlope:
    """:func:`measure_lr_wd_slope` of a :class:`~lightning_decay.sweep.results.ResultTable` (its seeds)."""
    seeds = table.by_seed()
    return measure_lr_wd_slope(list(seeds.values()), table.x_values, table.y_values, tolerance, confidence)


def measure_tables(tables: Sequence[Any], tolerance: float = DEFAULT_TOLERANCE) -> list[Decoupling]:
    """:func:`measure_decoupling` of each :class:`~lightning_decay.sweep.results.ResultTable`."""
    return [measure_decoupling(t.values, t.x_values, t.y_values, tolerance) for t in tables]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "nan"
    return str(value)


def panel_slopes(tables: Sequence[Any], tolerance: float = DEFAULT_TOLERANCE) -> list[LrWdSlope | None]:
    """:func:`measure_table_slope` of each panel with 3+ rows and positive numeric axes, else None."""
    out: list[LrWdSlope | None] = []
    for table in tables:
        try:
            out.append(measure_table_slope(table, tolerance) if len(table.y_values) >= 3 else None)
        except ValueError:
            out.append(None)
    return out


def seed_report(tables: Sequence[Any], slopes: Sequence[LrWdSlope | None], tolerance: float) -> list[str]:
    """Markdown lines: per panel the best cell over seeds and the lr-wd slope; each panel's best cell against the
    first panel's with the same extra-axis values (paired by seed)."""
    x, y = tables[0].x_name, tables[0].y_name
    bests = [best_cell(t) for t in tables]
    lines = [
        "", "## Over seeds", "",
        "Best cell: the cell with the best mean over seeds; its mean with a 95% t interval over seeds. Slope: "
        f"least-squares slope of log10(best {x}) on log10({y}) per seed (best {x} of each row refined by a parabola "
        f"in log {x}; rows whose best is at least halfway from the table's worst to its best), mean and 95% t "
        "interval over seeds; 0 = decoupled,"
        f" -1 = best {x} proportional to 1/{y} (docs/statistics.md). Rectangularity per seed (tolerance "
        f"{tolerance:g}), mean and interval. Edge: informative rows of the mean table whose best {x} is at the grid's"
        " edge (the slope is then a bound).",
        "",
        "| panel | seeds | best cell | best mean [95% CI] | std | slope [95% CI] | per seed | verdict "
        "| rectangularity [95% CI] | rows / edge |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for table, best, slope in zip(tables, bests, slopes):
        where = f"{x}={_fmt(best.x)}, {y}={_fmt(best.y)}"
        cells = f"{best.mean.format(4)} | {_fmt(best.mean.spread)}"
        if slope is None:
            lines.append(f"| {table.label} | {best.mean.n} | {where} | {cells} | - | - | - | - | - |")
            continue
        per_seed = ", ".join(_fmt(v) for v in slope.per_seed)
        lines.append(
            f"| {table.label} | {best.mean.n} | {where} | {cells} | {slope.slope.format(2)} | {per_seed} "
            f"| {slope.verdict} | {slope.rectangularity.format(2)} | {slope.rows} / {slope.edge_rows} |"
        )
    pairs = []
    for k, table in enumerate(tables):
        first = next(m for m, other in enumerate(tables) if other.fixed == table.fixed)
        if first != k:
            pairs.append((k, first))
    if pairs:
        lines += ["", "Best cells compared (difference of means, 95% interval; paired by seed when the seeds match):",
                  ""]
        finite = np.concatenate([t.values[np.isfinite(t.values)] for t in tables])
        percent = finite.size > 0 and finite.min() >= 0.0 and finite.max() <= 1.0
        for k, first in pairs:
            difference = compare_best_cells(bests[k], bests[first])
            text = verdict(difference, unit=" pp", scale=100.0) if percent else verdict(difference, digits=4)
            lines.append(f"- {tables[k].label} - {tables[first].label}: {text}")
    return lines


def decoupling_report(
    tables: Sequence[Any], measures: Sequence[Decoupling], tolerance: float,
    slopes: Sequence[LrWdSlope | None] | None = None,
) -> str:
    """A Markdown report: the headline table, the statistics over seeds (``slopes``: :func:`panel_slopes`; the
    section is left out for a sweep of one seed), then per panel the best x per y and the best y per x."""
    if not tables:
        return "# Decoupling\n\nNo finished cells.\n"
    x, y = tables[0].x_name, tables[0].y_name
    lines = [
        "# Decoupling of learning rate and weight decay",
        "",
        f"Good region: cells with accuracy >= best - {tolerance:g} * (best - median). Rectangularity = good cells /"
        " measured cells in the smallest axis-aligned box around them (1 = rectangular = decoupled).",
        f"{x}_shift / {y}_shift: grid steps the best {x} moves across {y} values / the best {y} across {x} values.",
        "",
        f"| panel | rectangularity | good / box | threshold | best | best at | {x}_shift | {y}_shift |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for table, m in zip(tables, measures):
        where = f"{x}={_fmt(table.x_values[m.best_cell[1]])}, {y}={_fmt(table.y_values[m.best_cell[0]])}"
        lines.append(
            f"| {table.label} | {m.rectangularity:.2f} | {m.good_cells} / {m.box_cells} | {m.threshold:.4g} "
            f"| {m.best:.4g} | {where} | {m.x_shift} | {m.y_shift} |"
        )
    if slopes is not None and max(int(t.counts.max()) for t in tables) > 1:
        lines += seed_report(tables, slopes, tolerance)
    for table, m in zip(tables, measures):
        lines += ["", f"## {table.label}", "", f"| {y} | best {x} | accuracy |", "|---|---|---|"]
        for i, value in enumerate(table.y_values):
            best = m.best_x_per_y[i]
            score = None if best is None else table.values[i, table.x_values.index(best)]
            lines.append(f"| {_fmt(value)} | {_fmt(best)} | {_fmt(score)} |")
        lines += ["", f"| {x} | best {y} | accuracy |", "|---|---|---|"]
        for j, value in enumerate(table.x_values):
            best = m.best_y_per_x[j]
            score = None if best is None else table.values[table.y_values.index(best), j]
            lines.append(f"| {_fmt(value)} | {_fmt(best)} | {_fmt(score)} |")
    return "\n".join(lines) + "\n"
