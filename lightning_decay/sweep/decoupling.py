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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from lightning_decay.validation import check_real

__all__ = [
    "DEFAULT_TOLERANCE", "Decoupling", "decoupling_report", "good_region", "measure_decoupling", "measure_tables",
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


def measure_tables(tables: Sequence[Any], tolerance: float = DEFAULT_TOLERANCE) -> list[Decoupling]:
    """:func:`measure_decoupling` of each :class:`~lightning_decay.sweep.results.ResultTable`."""
    return [measure_decoupling(t.values, t.x_values, t.y_values, tolerance) for t in tables]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "nan"
    return str(value)


def decoupling_report(tables: Sequence[Any], measures: Sequence[Decoupling], tolerance: float) -> str:
    """A Markdown report: the headline table, then per panel the best x per y and the best y per x."""
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
