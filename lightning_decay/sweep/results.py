"""The results store of a sweep: the per-cell files, the results tables and their 2-D views.

A cell writes ``<output>/cells/<cell id>/result.json`` atomically when it ends; ``results.json`` (every field)
and ``results.csv`` (no norm curves) are rebuilt from those files. Paths written into the store are relative
(:func:`portable_path`), so a results folder can be committed and read on another machine.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_decay.sweep.grid import GridSpec, format_value

__all__ = [
    "FIXED_COLUMNS",
    "LOCK_FILE",
    "LOG_FILE",
    "RESULT_FILE",
    "SPEC_FILE",
    "ResultTable",
    "cell_dir",
    "collect_results",
    "finite",
    "load_results",
    "portable_path",
    "read_json",
    "result_tables",
    "write_json_atomic",
    "write_results",
    "write_text_atomic",
]

RESULT_FILE = "result.json"
SPEC_FILE = "spec.json"
LOCK_FILE = "lock"
LOG_FILE = "output.log"
FIXED_COLUMNS = (
    "status", "accuracy", "train_loss", "weight_norm", "images_per_s", "train_s", "wall_s", "epochs", "steps",
)


def cell_dir(output: Path, cell_id: str) -> Path:
    """The folder of a cell's files: ``<output>/cells/<cell id>``."""
    return output / "cells" / cell_id


def portable_path(path: str | Path, start: str | Path) -> str:
    """``path`` relative to the folder ``start`` (with ``/``), e.g. ``../../configs/a.yaml``; absolute only when
    there is no relative path (another drive on Windows)."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write strict JSON to a temporary file next to ``path``, fsync it, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as file:
        json.dump(payload, file, indent=1, allow_nan=False)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when missing, unreadable or not an object."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def finite(value: Any) -> float | None:
    """A float, or None for missing/NaN/inf values (kept out of the JSON files, which are strict JSON)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _result_row(result: dict[str, Any], metric_names: Mapping[str, str]) -> dict[str, Any]:
    """A results-table row: identifiers, axis values, the fixed columns, all final metrics, the norm curve.

    ``accuracy`` and ``train_loss`` are read from the cell's recorded metrics under ``metric_names``, so renaming
    the grid's ``metrics`` re-labels finished cells without re-running them.
    """
    values = result.get("values", {})
    row: dict[str, Any] = {"cell": result.get("cell"), "variant": result.get("variant"), **values}
    for column in FIXED_COLUMNS:
        row[column] = result.get(column)
    if "metrics" in result:
        for column, name in metric_names.items():
            row[column] = result["metrics"].get(name)
    for name, value in sorted(result.get("metrics", {}).items()):
        row.setdefault(name, value)
    row["norm_history"] = result.get("norm_history", [])
    row["axes"] = list(values)
    if result.get("error"):
        row["error"] = result["error"]
    return row


def collect_results(grid: GridSpec) -> list[dict[str, Any]]:
    """Rows of the cells of ``grid`` that have a result file (any status), in grid order."""
    rows = []
    for cell in grid.cells():
        result = read_json(cell_dir(grid.output, cell.id) / RESULT_FILE)
        if result is not None:
            rows.append(_result_row(result, grid.metrics))
    return rows


def write_results(grid: GridSpec, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``results.json`` (all fields) and ``results.csv`` (no norm curves) atomically; return both paths."""
    json_path, csv_path = grid.output / "results.json", grid.output / "results.csv"
    write_json_atomic(json_path, rows)
    columns: list[str] = ["cell", "variant", *(axis.name for axis in grid.axes), *FIXED_COLUMNS]
    for row in rows:
        columns += [key for key in row if key not in columns and key not in ("norm_history", "axes")]
    temporary = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in columns})
    os.replace(temporary, csv_path)
    return json_path, csv_path


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a sweep's ``results.json`` (``path`` is the file or the sweep's output folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    rows = json.loads(path.read_text())
    if not isinstance(rows, list):
        raise ValueError(f"{path}: not a results table (a JSON list of rows)")
    return rows


@dataclass
class ResultTable:
    """One panel of a sweep: a variant (and fixed values of any extra axes) as a 2-D table over two axes.

    ``values[i, j]`` is the mean over seeds (and any other repeated rows) at ``y_values[i]``, ``x_values[j]``;
    NaN where no finished cell exists. ``counts`` holds the number of rows averaged per entry, ``stds`` their
    standard deviation (``ddof=1``; NaN where fewer than 2); ``rows`` are the panel's finished rows.
    """

    label: str
    variant: str
    fixed: dict[str, Any]
    x_name: str
    y_name: str
    x_values: list[Any]
    y_values: list[Any]
    values: np.ndarray  # shape (len(y_values), len(x_values))
    counts: np.ndarray
    rows: list[dict[str, Any]]
    stds: np.ndarray | None = None
    value: str = "accuracy"

    def by_seed(self, value: str | None = None, by: str = "seed") -> dict[Any, np.ndarray]:
        """One table of ``value`` (default: the table's own column) per value of the ``by`` column (the seed),
        shaped like ``values`` (NaN where that seed has no finite value), in order of first appearance."""
        value = value or self.value
        out: dict[Any, np.ndarray] = {}
        for row in self.rows:
            number = finite(row.get(value))
            table = out.setdefault(row.get(by), np.full(self.values.shape, np.nan))
            if number is not None:
                table[self.y_values.index(row[self.y_name]), self.x_values.index(row[self.x_name])] = number
        return out

    def samples(self, i: int, j: int, value: str | None = None, by: str = "seed") -> dict[Any, float]:
        """The finite ``value`` (default: the table's column) of each row at ``y_values[i]``, ``x_values[j]``, keyed
        by its ``by`` column (the seed): the samples behind ``values[i, j]``."""
        out: dict[Any, float] = {}
        for row in self.rows:
            number = finite(row.get(value or self.value))
            at = row.get(self.y_name) == self.y_values[i] and row.get(self.x_name) == self.x_values[j]
            if number is not None and at:
                out[row.get(by)] = number
        return out


def _sorted_values(values: Iterable[Any]) -> list[Any]:
    unique = list(dict.fromkeys(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in unique):
        return sorted(unique)
    return unique


def result_tables(
    rows: Sequence[Mapping[str, Any]], x: str = "lr", y: str = "weight_decay", value: str = "accuracy",
    average: Sequence[str] = ("seed",),
) -> list[ResultTable]:
    """Group finished rows (``status == "ok"``) into one :class:`ResultTable` per variant and extra-axis values.

    Columns other than ``x``, ``y``, the ``average`` axes and the standard result columns that vary between
    rows of a variant (e.g. a ``loss_scale`` axis) split the variant into several panels.
    """
    ok = [row for row in rows if row.get("status") == "ok"]
    if not ok:
        return []
    missing = [name for name in (x, y) if any(name not in row for row in ok)]
    if missing:
        raise ValueError(f"rows have no column {missing[0]!r}; columns: {', '.join(ok[0])}")
    axes = list(dict.fromkeys(name for row in ok for name in row.get("axes", ())))
    extra = [
        key for key in axes
        if key not in (x, y, *average) and len({json.dumps(r.get(key)) for r in ok}) > 1
    ]
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in ok:
        groups.setdefault((row["variant"], *(json.dumps(row.get(k)) for k in extra)), []).append(row)
    tables = []
    for group_rows in groups.values():
        first = group_rows[0]
        fixed = {key: first.get(key) for key in extra}
        x_values = _sorted_values(row[x] for row in group_rows)
        y_values = _sorted_values(row[y] for row in group_rows)
        samples: dict[tuple[int, int], list[float]] = {}
        for row in group_rows:
            number = finite(row.get(value))
            if number is not None:
                samples.setdefault((y_values.index(row[y]), x_values.index(row[x])), []).append(number)
        means = np.full((len(y_values), len(x_values)), np.nan)
        stds = np.full((len(y_values), len(x_values)), np.nan)
        counts = np.zeros((len(y_values), len(x_values)), dtype=int)
        for (i, j), numbers in samples.items():
            means[i, j], counts[i, j] = float(np.mean(numbers)), len(numbers)
            if len(numbers) > 1:
                stds[i, j] = float(np.std(numbers, ddof=1))
        label = first["variant"] + "".join(f", {key}={format_value(v)}" for key, v in fixed.items())
        tables.append(
            ResultTable(
                label, first["variant"], fixed, x, y, x_values, y_values, means, counts, list(group_rows), stds, value
            )
        )
    return tables
