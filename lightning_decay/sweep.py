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
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import hashlib
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Axis",
    "Cell",
    "GridError",
    "GridSpec",
    "ResultTable",
    "SweepSummary",
    "Variant",
    "load_results",
    "main",
    "result_tables",
    "run_cell",
    "run_sweep",
    "total_weight_norm",
    "write_wandb_sweeps",
]

#: Default CLI key of the standard axes (override with ``axes.<name>.key`` in the grid file).
DEFAULT_AXIS_KEYS: dict[str, str] = {
    "lr": "model.init_args.decay.lr",
    "weight_decay": "model.init_args.decay.weight_decay",
    "seed": "seed_everything",
}
#: Default metric names read from the trained model's logged metrics.
DEFAULT_METRICS: dict[str, str] = {"accuracy": "test/acc", "train_loss": "train/loss"}
GRID_KEYS = (
    "name", "configs", "variants", "variant_key", "axes", "overrides", "metrics", "test", "output", "wandb", "jobs",
    "threads", "plot",
)
PLOT_KEYS = ("x", "y", "tolerance", "norm_min_accuracy")
RESULT_FILE = "result.json"
LOCK_FILE = "lock"
LOG_FILE = "output.log"
FIXED_COLUMNS = (
    "status", "accuracy", "train_loss", "weight_norm", "images_per_s", "train_s", "wall_s", "epochs", "steps",
)
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_TERMINATE_GRACE_S = 20.0


class GridError(ValueError):
    """An invalid grid file or grid setting; the message names the offending key."""


# --------------------------------------------------------------------------------------------------------------
# The grid file
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One swept setting: its name in the results (``lr``), its CLI key and its values."""

    name: str
    key: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Variant:
    """One optimizer variant: extra config files and CLI overrides applied on top of the base configs."""

    name: str
    configs: tuple[Path, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Cell:
    """One grid point: a variant and one value per axis."""

    variant: Variant
    values: tuple[tuple[str, Any], ...]

    @property
    def id(self) -> str:
        """File-system-safe id, e.g. ``adamw__lr=0.001__weight_decay=1e-05__seed=0``."""
        parts = [self.variant.name] + [f"{name}={_format_value(value)}" for name, value in self.values]
        return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "__".join(parts))

    @property
    def axis_values(self) -> dict[str, Any]:
        """Axis name -> value."""
        return dict(self.values)


@dataclass(frozen=True)
class GridSpec:
    """A parsed and validated grid file (see ``docs/sweeps.md`` for the format)."""

    name: str
    path: Path | None
    configs: tuple[Path, ...]
    variants: tuple[Variant, ...]
    axes: tuple[Axis, ...]
    overrides: tuple[tuple[str, Any], ...] = ()
    metrics: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_METRICS))
    test: bool = True
    output: Path = Path("outputs/sweeps/sweep")
    wandb: Mapping[str, Any] | None = None
    jobs: int | None = None
    threads: int | None = None
    plot: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, output: str | Path | None = None) -> GridSpec:
        """Read and validate a grid YAML file; ``output`` replaces the file's ``output``."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as error:
            raise GridError(f"cannot read grid file {str(path)!r}: {error}") from None
        except yaml.YAMLError as error:
            raise GridError(f"{path}: not valid YAML: {error}") from None
        return cls.from_dict(raw, path=path, output=output)

    @classmethod
    def from_dict(cls, raw: Any, path: Path | None = None, output: str | Path | None = None) -> GridSpec:
        """Validate a grid given as a dict (``path`` locates relative config files and names errors)."""
        where = str(path) if path is not None else "grid"
        if not isinstance(raw, dict):
            raise GridError(f"{where}: the grid file must be a mapping, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(GRID_KEYS))
        if unknown:
            raise GridError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(GRID_KEYS)}")
        base_dir = path.parent if path is not None else Path.cwd()
        name = raw.get("name", path.stem if path is not None else "sweep")
        if not isinstance(name, str) or not _NAME.match(name):
            raise GridError(f"{where}: name: must be a word of letters, digits, '_', '.', '+', '-', got {name!r}")
        configs = tuple(_config_paths(raw.get("configs", []), "configs", where, base_dir))
        variant_key = raw.get("variant_key")
        if variant_key is not None and (not isinstance(variant_key, str) or not variant_key):
            raise GridError(f"{where}: variant_key: must be a CLI key such as model.init_args.decay.optimizer")
        variants = _variants(raw.get("variants"), variant_key, where, base_dir)
        axes = _axes(raw.get("axes"), where)
        overrides = _overrides(raw.get("overrides", {}), "overrides", where)
        metrics = raw.get("metrics", {})
        if not isinstance(metrics, dict) or set(metrics) - set(DEFAULT_METRICS):
            raise GridError(f"{where}: metrics: must be a mapping with keys among {', '.join(DEFAULT_METRICS)}")
        for key, value in metrics.items():
            if not isinstance(value, str) or not value:
                raise GridError(f"{where}: metrics.{key}: must be a logged metric name such as 'test/acc'")
        test = raw.get("test", True)
        if not isinstance(test, bool):
            raise GridError(f"{where}: test: must be true or false, got {test!r}")
        wandb = raw.get("wandb", False)
        if wandb is True:
            wandb = {}
        elif wandb is False or wandb is None:
            wandb = None
        elif not isinstance(wandb, dict):
            raise GridError(f"{where}: wandb: must be true, false or a mapping of WandbLogger arguments")
        jobs, threads = raw.get("jobs"), raw.get("threads")
        for key, value in (("jobs", jobs), ("threads", threads)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise GridError(f"{where}: {key}: must be an int >= 1, got {value!r}")
        plot = _plot(raw.get("plot", {}), axes, where)
        out = output if output is not None else raw.get("output", f"outputs/sweeps/{name}")
        if not isinstance(out, (str, Path)) or not str(out):
            raise GridError(f"{where}: output: must be a folder path, got {out!r}")
        grid = cls(
            name=name, path=path, configs=configs, variants=variants, axes=axes, overrides=overrides,
            metrics={**DEFAULT_METRICS, **metrics}, test=test, output=Path(out).expanduser(), wandb=wandb,
            jobs=jobs, threads=threads, plot=plot,
        )
        grid._check_cells(where)
        return grid

    def cells(self) -> list[Cell]:
        """Every cell, variants outermost, then the axes in file order (the last axis varies fastest)."""
        names = [axis.name for axis in self.axes]
        return [
            Cell(variant, tuple(zip(names, values)))
            for variant in self.variants
            for values in itertools.product(*(axis.values for axis in self.axes))
        ]

    def axis(self, name: str) -> Axis | None:
        """The axis called ``name``, or None."""
        return next((axis for axis in self.axes if axis.name == name), None)

    def cell_overrides(self, cell: Cell) -> list[tuple[str, Any]]:
        """The CLI overrides of a cell, in application order (grid, variant, axes)."""
        keys = {axis.name: axis.key for axis in self.axes}
        return [*self.overrides, *cell.variant.overrides, *((keys[name], value) for name, value in cell.values)]

    def cell_args(self, cell: Cell) -> list[str]:
        """``lightning-decay fit`` arguments of a cell (absolute config paths, then ``--key=value`` overrides)."""
        args: list[str] = []
        for config in (*self.configs, *cell.variant.configs):
            args += ["--config", str(config)]
        return args + [f"--{key}={_cli_value(value)}" for key, value in self.cell_overrides(cell)]

    def fingerprint(self, cell: Cell) -> str:
        """Hash of what determines a cell's result: the parsed config files, the overrides, the test flag."""
        payload = {
            "configs": [_canonical_config(path) for path in (*self.configs, *cell.variant.configs)],
            "overrides": [[key, value] for key, value in self.cell_overrides(cell)],
            "test": self.test,
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _check_cells(self, where: str) -> None:
        seen: dict[str, Cell] = {}
        for cell in self.cells():
            if cell.id in seen:
                raise GridError(f"{where}: cells {seen[cell.id]} and {cell} get the same id {cell.id!r}")
            seen[cell.id] = cell
        if len(self.variants) > 1:
            settings = {(v.configs, v.overrides) for v in self.variants}
            if len(settings) < len(self.variants):
                raise GridError(
                    f"{where}: variants: some variants have identical settings; give each one configs or "
                    "overrides, or set variant_key (e.g. model.init_args.decay.optimizer)"
                )


def _format_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _cli_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


def _number_or_value(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: turn numeric strings into numbers."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        return int(text) if re.match(r"^[+-]?\d+$", text) else float(text)
    return value


def _config_paths(value: Any, key: str, where: str, base_dir: Path) -> list[Path]:
    items = [value] if isinstance(value, (str, Path)) else value
    if not isinstance(items, list):
        raise GridError(f"{where}: {key}: must be a config file path or a list of them")
    paths = []
    for item in items:
        if not isinstance(item, (str, Path)) or not str(item):
            raise GridError(f"{where}: {key}: {item!r} is not a file path")
        paths.append(_resolve_file(Path(item).expanduser(), key, where, base_dir))
    return paths


def _resolve_file(path: Path, key: str, where: str, base_dir: Path) -> Path:
    """A config path as given if absolute, else relative to the grid file's folder, else to the cwd."""
    candidates = [path] if path.is_absolute() else [base_dir / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = " or ".join(str(c) for c in dict.fromkeys(candidates))
    raise GridError(f"{where}: {key}: config file {str(path)!r} not found (looked for {looked})")


def _overrides(value: Any, key: str, where: str) -> tuple[tuple[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise GridError(f"{where}: {key}: must be a mapping of CLI keys to values, e.g. trainer.max_epochs: 10")
    for name in value:
        if not isinstance(name, str) or not name or name.startswith("-") or " " in name:
            raise GridError(f"{where}: {key}: {name!r} is not a CLI key such as trainer.max_epochs")
    return tuple((name, _number_or_value(item)) for name, item in value.items())


def _variants(value: Any, variant_key: str | None, where: str, base_dir: Path) -> tuple[Variant, ...]:
    if value is None:
        raise GridError(f"{where}: variants: missing; list the optimizer variants, e.g. [adamw, adamp]")
    if isinstance(value, dict):
        entries = [(name, spec) for name, spec in value.items()]
    elif isinstance(value, list):
        entries = []
        for index, item in enumerate(value):
            if isinstance(item, str):
                entries.append((item, None))
            elif isinstance(item, dict) and "name" in item:
                entries.append((item["name"], {k: v for k, v in item.items() if k != "name"}))
            else:
                raise GridError(f"{where}: variants[{index}]: must be a name or a mapping with a 'name'")
    else:
        raise GridError(f"{where}: variants: must be a list or a mapping of variant names")
    if not entries:
        raise GridError(f"{where}: variants: is empty")
    variants, names = [], set()
    for name, spec in entries:
        if not isinstance(name, str) or not _NAME.match(name):
            raise GridError(f"{where}: variants: {name!r} is not a valid name (letters, digits, '_', '.', '+', '-')")
        if name in names:
            raise GridError(f"{where}: variants: {name!r} appears twice")
        names.add(name)
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"configs", "overrides"}:
            raise GridError(f"{where}: variants.{name}: must be a mapping with 'configs' and/or 'overrides'")
        configs = _config_paths(spec.get("configs", []), f"variants.{name}.configs", where, base_dir)
        overrides = _overrides(spec.get("overrides", {}), f"variants.{name}.overrides", where)
        if variant_key is not None and variant_key not in dict(overrides):
            overrides = ((variant_key, name), *overrides)
        variants.append(Variant(name, tuple(configs), overrides))
    return tuple(variants)


def _axes(value: Any, where: str) -> tuple[Axis, ...]:
    if not isinstance(value, dict) or not value:
        raise GridError(f"{where}: axes: must be a mapping of axis names to values, e.g. lr: [1.0e-3, 1.0e-2]")
    axes = []
    for name, spec in value.items():
        if not isinstance(name, str) or not _IDENTIFIER.match(name) or name in ("variant", "cell"):
            raise GridError(f"{where}: axes: {name!r} is not a valid axis name (a Python identifier, not 'variant')")
        if isinstance(spec, list):
            spec = {"values": spec}
        if not isinstance(spec, dict) or set(spec) - {"key", "values"}:
            raise GridError(f"{where}: axes.{name}: must be a list of values or a mapping with 'key' and 'values'")
        key = spec.get("key", DEFAULT_AXIS_KEYS.get(name))
        if not isinstance(key, str) or not key:
            raise GridError(f"{where}: axes.{name}.key: missing; give the CLI key, e.g. model.init_args.{name}")
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise GridError(f"{where}: axes.{name}.values: must be a non-empty list")
        values = [_number_or_value(v) for v in values]
        for item in values:
            if not isinstance(item, (int, float, str, bool)) or (isinstance(item, float) and not math.isfinite(item)):
                raise GridError(f"{where}: axes.{name}.values: {item!r} is not a finite number, string or bool")
        if len({json.dumps(v) for v in values}) < len(values):
            raise GridError(f"{where}: axes.{name}.values: has duplicates")
        axes.append(Axis(name, key, tuple(values)))
    keys = [axis.key for axis in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise GridError(f"{where}: axes: two axes set the same CLI key {key!r}")
    return tuple(axes)


def _plot(value: Any, axes: tuple[Axis, ...], where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) - set(PLOT_KEYS):
        raise GridError(f"{where}: plot: must be a mapping with keys among {', '.join(PLOT_KEYS)}")
    plot = {"x": "lr", "y": "weight_decay", "tolerance": None, "norm_min_accuracy": None, **value}
    names = [axis.name for axis in axes]
    for key in ("x", "y"):
        if key in value and plot[key] not in names:
            raise GridError(f"{where}: plot.{key}: {plot[key]!r} is not an axis; axes: {', '.join(names)}")
    if plot["x"] == plot["y"]:
        raise GridError(f"{where}: plot: x and y must be different axes")
    for key, low, high in (("tolerance", 0.0, 1.0), ("norm_min_accuracy", -math.inf, math.inf)):
        item = plot[key]
        number = isinstance(item, (int, float)) and not isinstance(item, bool)
        if item is not None and (not number or not low <= item <= high):
            raise GridError(f"{where}: plot.{key}: must be a number in [{low}, {high}], got {item!r}")
    return plot


def _canonical_config(path: Path) -> Any:
    """A config file's parsed content (comments and formatting do not change a cell's fingerprint)."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise GridError(f"config file {str(path)!r} cannot be read: {error}") from None


# --------------------------------------------------------------------------------------------------------------
# The results store
# --------------------------------------------------------------------------------------------------------------


def _cell_dir(output: Path, cell_id: str) -> Path:
    return output / "cells" / cell_id


def _write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file next to ``path``, fsync it, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as file:
        json.dump(payload, file, indent=1, allow_nan=False)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _finite(value: Any) -> float | None:
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
        result = _read_result(_cell_dir(grid.output, cell.id) / RESULT_FILE)
        if result is not None:
            rows.append(_result_row(result, grid.metrics))
    return rows


def write_results(grid: GridSpec, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``results.json`` (all fields) and ``results.csv`` (no norm curves) atomically; return both paths."""
    json_path, csv_path = grid.output / "results.json", grid.output / "results.csv"
    _write_json_atomic(json_path, rows)
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
    NaN where no finished cell exists. ``rows`` are the panel's finished rows.
    """

    label: str
    variant: str
    fixed: dict[str, Any]
    x_name: str
    y_name: str
    x_values: list[Any]
    y_values: list[Any]
    values: Any  # numpy array, shape (len(y_values), len(x_values))
    counts: Any
    rows: list[dict[str, Any]]


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
    import numpy as np

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
        sums = np.zeros((len(y_values), len(x_values)))
        counts = np.zeros((len(y_values), len(x_values)), dtype=int)
        for row in group_rows:
            number = _finite(row.get(value))
            if number is not None:
                i, j = y_values.index(row[y]), x_values.index(row[x])
                sums[i, j] += number
                counts[i, j] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        label = first["variant"] + "".join(f", {key}={_format_value(v)}" for key, v in fixed.items())
        tables.append(
            ResultTable(label, first["variant"], fixed, x, y, x_values, y_values, means, counts, list(group_rows))
        )
    return tables


# --------------------------------------------------------------------------------------------------------------
# One cell (runs in its own process)
# --------------------------------------------------------------------------------------------------------------


def total_weight_norm(module: Any) -> float:
    """``sqrt(sum of squares)`` of all trainable parameters of ``module`` (float64 accumulation, one sync)."""
    import torch

    norms = [torch.linalg.vector_norm(p.detach(), dtype=torch.float64) for p in module.parameters() if p.requires_grad]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms])))


@functools.cache
def _make_recorder_class() -> type:  # built on first use: importing this module does not import Lightning
    from lightning.pytorch import Callback

    class _CellRecorder(Callback):
        """Records the total weight norm per epoch and the training throughput of one cell.

        ``history``: ``{"epoch", "step", "weight_norm"}`` at the start of training (epoch 0) and after every
        training epoch; the norm is also logged as ``sweep/weight_norm``. ``images_per_s``: training images per
        second of training time, excluding validation and the first training step (compilation, warm-up).
        """

        def __init__(self) -> None:
            self.history: list[dict[str, Any]] = []
            self.train_images = 0
            self.train_seconds = 0.0
            self._clock: float | None = None
            self._timing = False
            self._paused = False

        @staticmethod
        def _sync(pl_module: Any) -> None:
            import torch

            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)

        def _stop_clock(self, pl_module: Any) -> None:
            if self._clock is not None:
                self._sync(pl_module)
                self.train_seconds += time.perf_counter() - self._clock
                self._clock = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.history.append({"epoch": 0, "step": trainer.global_step, "weight_norm": total_weight_norm(pl_module)})

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if not self._timing:  # the first step is excluded: it compiles and warms up
                self._sync(pl_module)
                self._timing = True
                self._clock = time.perf_counter()
                return
            self.train_images += _batch_size(batch)

        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            self._paused = self._clock is not None
            self._stop_clock(pl_module)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if self._paused:  # validation inside fit: training resumes now
                self._paused = False
                self._sync(pl_module)
                self._clock = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            norm = total_weight_norm(pl_module)
            self.history.append({"epoch": trainer.current_epoch + 1, "step": trainer.global_step, "weight_norm": norm})
            pl_module.log("sweep/weight_norm", norm, on_step=False, on_epoch=True)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._stop_clock(pl_module)

        @property
        def images_per_s(self) -> float | None:
            return self.train_images / self.train_seconds if self.train_seconds > 0 and self.train_images else None

    return _CellRecorder


def _batch_size(batch: Any) -> int:
    import torch

    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = _batch_size(item)
            if size:
                return size
    return 0


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    out = {}
    for name, value in metrics.items():
        try:
            out[name] = _finite(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


def _wandb_mode() -> str:
    """``WANDB_MODE`` if set, ``online`` when W&B credentials are configured, else ``offline`` (never prompts)."""
    from lightning_decay.integration.wandb_logger import wandb_logged_in

    return os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")


def _set_parent_death_signal(parent_pid: int | None) -> None:
    """Ask Linux to SIGTERM this process when the sweep process dies (so a killed sweep leaves no orphans)."""
    if parent_pid is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_cell(spec: Mapping[str, Any]) -> int:
    """Fit and test one cell as described by ``spec`` (written by the runner); write its ``result.json``.

    Returns 0 when the cell finished with ``status: ok``, 1 on an error, 130 when interrupted.
    """
    started = time.time()
    clock = time.perf_counter()
    _set_parent_death_signal(spec.get("parent_pid"))
    cell_dir = Path(spec["cell_dir"])
    result: dict[str, Any] = {
        "cell": spec["cell"], "variant": spec["variant"], "values": spec["values"], "status": "running",
        "fingerprint": spec["fingerprint"], "args": spec["args"], "host": socket.gethostname(),
        "started": started, "metric_names": spec["metrics"],
    }
    threads = spec.get("threads")
    code = 1
    try:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        result.update(_fit_and_test(spec, cell_dir))
        code = 0 if result["status"] == "ok" else 1
    except (KeyboardInterrupt, SystemExit) as error:  # Ctrl-C / SIGTERM (Lightning exits after a graceful stop)
        result.update(status="interrupted", error=f"{type(error).__name__}: {error}")
        code = 130
    except Exception as error:
        result.update(status="error", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    result["wall_s"] = time.perf_counter() - clock
    result["finished"] = time.time()
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:  # a multi-device cell: rank 0 writes
        _write_json_atomic(cell_dir / RESULT_FILE, result)
    if result.get("traceback"):
        print(result["traceback"], file=sys.stderr)
    return code


def _fit_and_test(spec: Mapping[str, Any], cell_dir: Path) -> dict[str, Any]:
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.loggers import CSVLogger

    from lightning_decay.cli import DecayCLI

    os.environ.setdefault("WANDB_SILENT", "true")
    args = [*spec["args"], f"--trainer.default_root_dir={cell_dir}"]
    argv = sys.argv
    sys.argv = argv[:1]  # LightningCLI warns when args and sys.argv are both given
    try:
        cli = DecayCLI(
            LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
            save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False}, args=args, run=False,
        )
    finally:
        sys.argv = argv
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    loggers: list[Any] = [CSVLogger(str(cell_dir), name="logs", version="")]  # logs/metrics.csv, logs/config.yaml
    wandb_logger = None
    if spec.get("wandb") is not None:
        from lightning_decay.integration.wandb_logger import AutoWandbLogger

        settings = {
            "project": spec["group"], "save_dir": str(cell_dir), "job_type": "sweep-cell",
            "offline": _wandb_mode() == "offline", **spec["wandb"], "group": spec["group"], "name": spec["cell"],
            "config": {"variant": spec["variant"], **spec["values"]},
        }
        wandb_logger = AutoWandbLogger(**settings)
        loggers.append(wandb_logger)
    trainer.loggers = loggers
    recorder = _make_recorder_class()()
    trainer.callbacks.append(recorder)
    fit_started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_s = time.perf_counter() - fit_started
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted")
    metrics = _scalar_metrics(trainer.callback_metrics)
    if spec["test"]:
        for tested in trainer.test(model, datamodule=datamodule, verbose=False):
            metrics.update(_scalar_metrics(tested))
    names = spec["metrics"]
    outcome: dict[str, Any] = {
        "metrics": metrics,
        "accuracy": metrics.get(names["accuracy"]),
        "train_loss": metrics.get(names["train_loss"]),
        "weight_norm": _finite(total_weight_norm(model)),
        "norm_history": [{**h, "weight_norm": _finite(h["weight_norm"])} for h in recorder.history],
        "images_per_s": recorder.images_per_s,
        "train_s": recorder.train_seconds,
        "fit_s": fit_s,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "status": "ok",
    }
    missing = [name for name in names.values() if name not in metrics]
    if missing:
        outcome.update(
            status="error",
            error=f"metric(s) {', '.join(map(repr, missing))} were not logged; logged: {', '.join(sorted(metrics))}",
        )
    if wandb_logger is not None:
        summary = {f"sweep/{key}": outcome[key] for key in ("accuracy", "train_loss", "weight_norm", "images_per_s")}
        wandb_logger.experiment.summary.update({k: v for k, v in summary.items() if v is not None})
        wandb_logger.experiment.finish()
    return outcome


# --------------------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    """What a call of :func:`run_sweep` did."""

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


def _pid_alive(pid: int) -> bool:
    """True if process ``pid`` exists and has not exited (a zombie awaiting its reaper counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _lock_owner(lock: Path) -> str | None:
    """A description of the live process(es) holding ``lock``, or None when the lock is stale."""
    try:
        info = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written right now, or garbage
        return "a process that is writing it" if time.time() - lock.stat().st_mtime < 30 else None
    host = info.get("host")
    if host != socket.gethostname():
        return f"host {host!r} (delete {lock} if that sweep is gone)"
    alive = [pid for pid in info.get("pids", []) if isinstance(pid, int) and _pid_alive(pid)]
    return f"pid {', '.join(map(str, alive))}" if alive else None


def _acquire_lock(lock: Path) -> bool:
    """Take a cell's lock (atomic create); a stale lock (its processes are gone) is replaced."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _lock_owner(lock) is not None:
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as file:
            json.dump({"host": socket.gethostname(), "pids": [os.getpid()], "time": time.time()}, file)
        return True
    return False


def _update_lock(lock: Path, pids: list[int]) -> None:
    _write_json_atomic(lock, {"host": socket.gethostname(), "pids": pids, "time": time.time()})


def _clear_attempt(cell_dir: Path) -> None:
    """Remove what an unfinished attempt left in a cell folder (keeping its log as ``previous-attempt.log``)."""
    import shutil

    for entry in cell_dir.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.name == LOG_FILE:
            entry.replace(cell_dir / "previous-attempt.log")
        elif entry.name != "previous-attempt.log":
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _cell_state(grid: GridSpec, cell: Cell, fingerprint: str) -> str:
    """``done``, ``changed`` (finished with other settings), ``locked`` or ``todo``."""
    cell_dir = _cell_dir(grid.output, cell.id)
    result = _read_result(cell_dir / RESULT_FILE)
    if result is not None and result.get("status") == "ok":
        return "done" if result.get("fingerprint") == fingerprint else "changed"
    if (cell_dir / LOCK_FILE).exists() and _lock_owner(cell_dir / LOCK_FILE) is not None:
        return "locked"
    return "todo"


def _visible_gpus() -> list[str]:
    """Ids to put in ``CUDA_VISIBLE_DEVICES``, one per GPU this process may use (empty without GPUs)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # no usable CUDA
        return []
    if count == 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [item.strip() for item in visible.split(",") if item.strip()] if visible else []
    return ids[:count] if len(ids) >= count else [str(i) for i in range(count)]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def _format_number(value: Any, digits: int = 4) -> str:
    return "nan" if value is None else f"{value:.{digits}g}"


def check_cells(grid: GridSpec, cells: Sequence[Cell]) -> None:
    """Parse and instantiate model and data (no Trainer) of the first cell of each variant: errors name the cell.

    Catches wrong CLI keys, unknown class paths and invalid values before any process is started.
    """
    from lightning.pytorch import LightningDataModule, LightningModule

    from lightning_decay.cli import DecayCLI

    class _CheckCLI(DecayCLI):
        def instantiate_trainer(self, **kwargs: Any) -> Any:
            return None

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
    import logging
    import warnings

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


def run_sweep(
    grid: GridSpec,
    jobs: int | None = None,
    dry_run: bool = False,
    plot_only: bool = False,
    rerun_changed: bool = False,
    validate: bool = True,
    log: Any = print,
) -> SweepSummary:
    """Run the cells of ``grid`` that are not finished, then rebuild the results, pictures and decoupling report.

    ``jobs`` cells run at once (default: the grid's ``jobs``, else one per GPU, else 1). Ctrl-C (or SIGTERM)
    stops launching, terminates the running cells and keeps the finished ones.
    """
    cells = grid.cells()
    fingerprints = {cell.id: grid.fingerprint(cell) for cell in cells}
    states = {cell.id: _cell_state(grid, cell, fingerprints[cell.id]) for cell in cells}
    summary = SweepSummary(total=len(cells))
    summary.skipped = [cid for cid, state in states.items() if state == "done"]
    changed = [cid for cid, state in states.items() if state == "changed"]
    if plot_only:
        return _finish(grid, summary, log)
    if changed and not rerun_changed:
        raise GridError(
            f"{len(changed)} finished cell(s) in {grid.output} were run with other settings (e.g. {changed[0]}; a "
            "config file or override changed since): use another output folder, or pass --rerun-changed"
        )
    todo = [cell for cell in cells if states[cell.id] in ("todo", "changed")]
    summary.locked = [cid for cid, state in states.items() if state == "locked"]
    gpus = _visible_gpus()
    jobs = jobs or grid.jobs or max(1, len(gpus))
    threads = grid.threads or max(1, _usable_cpus() // jobs)
    device_note = f"GPUs {','.join(gpus)}" if gpus else "CPU"
    log(
        f"sweep {grid.name}: {len(cells)} cells, {len(summary.skipped)} done, {len(todo)} to run"
        + (f", {len(summary.locked)} running elsewhere" if summary.locked else "")
        + f"; {jobs} job(s) x {threads} thread(s) on {device_note} -> {grid.output}"
    )
    if dry_run:
        for cell in cells:
            log(f"  {states[cell.id]:8s} {cell.id}")
        if todo:
            log("first cell to run, as a plain command: lightning-decay fit " + " ".join(grid.cell_args(todo[0])))
    if validate and todo:
        check_cells(grid, todo)
    grid.output.mkdir(parents=True, exist_ok=True)
    write_wandb_sweeps(grid)
    if dry_run:
        return summary
    if gpus and jobs > len(gpus):
        log(f"note: {jobs} jobs share {len(gpus)} GPU(s)")
    _run_cells(grid, todo, fingerprints, jobs, threads, gpus, summary, log)
    return _finish(grid, summary, log)


def _cell_spec(grid: GridSpec, cell: Cell, fingerprint: str, threads: int) -> dict[str, Any]:
    return {
        "cell": cell.id,
        "variant": cell.variant.name,
        "values": cell.axis_values,
        "args": grid.cell_args(cell),
        "fingerprint": fingerprint,
        "metrics": dict(grid.metrics),
        "test": grid.test,
        "cell_dir": str(_cell_dir(grid.output, cell.id).resolve()),
        "threads": threads,
        "group": grid.name,
        "wandb": None if grid.wandb is None else dict(grid.wandb),
        "parent_pid": os.getpid(),
    }


@dataclass
class _Running:
    cell: Cell
    process: subprocess.Popen
    slot: int
    started: float
    log_file: Any


def _run_cells(
    grid: GridSpec, todo: list[Cell], fingerprints: dict[str, str], jobs: int, threads: int, gpus: list[str],
    summary: SweepSummary, log: Any,
) -> None:
    pending = deque(todo)
    running: list[_Running] = []
    durations: list[float] = []
    done_before = len(summary.skipped)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), WANDB_SILENT="true")
    if grid.wandb is not None:
        env["WANDB_MODE"] = _wandb_mode()

    stop_requests: list[int] = []  # signals received; checked between steps, so no launch is cut in half
    with _stop_signals(stop_requests):
        try:
            while (pending or running) and not stop_requests:
                free = sorted(set(range(jobs)) - {r.slot for r in running})
                while pending and free and not stop_requests:
                    cell = pending.popleft()
                    launched = _launch(grid, cell, fingerprints[cell.id], threads, gpus, free[0], env)
                    if launched is None:
                        summary.locked.append(cell.id)
                        log(f"skip {cell.id}: locked by another sweep")
                        continue
                    running.append(launched)
                    free.pop(0)
                for item in list(running):
                    if item.process.poll() is None:
                        continue
                    running.remove(item)
                    _collect(grid, item, summary)
                    now = time.perf_counter()
                    durations.append(now - item.started)
                    eta = _eta(durations, len(pending), [now - r.started for r in running], jobs)
                    log(
                        f"[{done_before + len(summary.ran)}/{summary.total}] {_describe(grid, item, durations[-1])}"
                        f" | ETA {_format_duration(eta)}"
                    )
                time.sleep(0.1)
        except KeyboardInterrupt:  # not in the main thread: no handlers, Ctrl-C arrives as an exception
            stop_requests.append(signal.SIGINT)
        if stop_requests:
            summary.interrupted = True
            log(
                f"interrupted: stopping {len(running)} running cell(s) (Ctrl-C again to kill them now); "
                "finished cells are kept"
            )
            _terminate(running, stop_requests)
            for item in running:
                _collect(grid, item, summary)


@contextlib.contextmanager
def _stop_signals(requests: list[int]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM append to ``requests`` instead of raising (main thread only)."""
    if not _in_main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        requests.append(signum)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before if handler_before is not None else signal.SIG_DFL)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _launch(
    grid: GridSpec, cell: Cell, fingerprint: str, threads: int, gpus: list[str], slot: int, env: dict[str, str]
) -> _Running | None:
    cell_dir = _cell_dir(grid.output, cell.id)
    lock = cell_dir / LOCK_FILE
    if not _acquire_lock(lock):
        return None
    _clear_attempt(cell_dir)
    spec = _cell_spec(grid, cell, fingerprint, threads)
    _write_json_atomic(cell_dir / "spec.json", spec)
    cell_env = dict(env)
    if gpus:
        cell_env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    log_file = open(cell_dir / LOG_FILE, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "lightning_decay.sweep", "run-cell", str(cell_dir / "spec.json")],
        stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=cell_env, start_new_session=True,
    )
    _update_lock(lock, [os.getpid(), process.pid])
    return _Running(cell, process, slot, time.perf_counter(), log_file)


def _collect(grid: GridSpec, item: _Running, summary: SweepSummary) -> None:
    item.log_file.close()
    cell_dir = _cell_dir(grid.output, item.cell.id)
    result = _read_result(cell_dir / RESULT_FILE)
    ok = result is not None and result.get("status") == "ok" and item.process.returncode == 0
    (summary.ran if ok else summary.failed).append(item.cell.id)
    (cell_dir / LOCK_FILE).unlink(missing_ok=True)
    write_results(grid, collect_results(grid))


def _eta(durations: Sequence[float], pending: int, running_ages: Sequence[float], jobs: int) -> float:
    """Seconds left: the mean cell time so far for each pending cell, the rest of it for running ones, / jobs."""
    mean = sum(durations) / len(durations)
    left = pending * mean + sum(max(0.0, mean - age) for age in running_ages)
    return left / max(1, min(jobs, pending + len(running_ages)))


def _describe(grid: GridSpec, item: _Running, seconds: float) -> str:
    cell_dir = _cell_dir(grid.output, item.cell.id)
    result = _read_result(cell_dir / RESULT_FILE) or {}
    status = result.get("status", f"died (exit code {item.process.returncode})")
    if status != "ok":
        reason = result.get("error", "no result written")
        return f"{item.cell.id} {status.upper()}: {reason} (log: {cell_dir / LOG_FILE}) {seconds:.1f}s"
    speed = result.get("images_per_s")
    return (
        f"{item.cell.id} ok acc={_format_number(result.get('accuracy'))} "
        f"loss={_format_number(result.get('train_loss'))} norm={_format_number(result.get('weight_norm'))} "
        f"{'-' if speed is None else f'{speed:.0f}'} img/s {seconds:.1f}s"
    )


def _terminate(running: list[_Running], stop_requests: list[int]) -> None:
    """SIGTERM every running cell's process group; SIGKILL what is alive after a grace period or a 2nd Ctrl-C."""
    requests_before = len(stop_requests)
    for item in running:
        _signal_group(item.process, signal.SIGTERM)
    deadline = time.monotonic() + _TERMINATE_GRACE_S
    while any(item.process.poll() is None for item in running):
        if time.monotonic() > deadline or len(stop_requests) > requests_before:
            for item in running:
                if item.process.poll() is None:
                    _signal_group(item.process, signal.SIGKILL)
            for item in running:
                item.process.wait()
            break
        time.sleep(0.05)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _finish(grid: GridSpec, summary: SweepSummary, log: Any) -> SweepSummary:
    """Rebuild the results table, write the pictures and the decoupling report, log images to W&B."""
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
    from lightning_decay.decoupling import DEFAULT_TOLERANCE, decoupling_report, measure_tables
    from lightning_decay.heatmaps import plot_sweep

    tolerance = grid.plot["tolerance"] if grid.plot["tolerance"] is not None else DEFAULT_TOLERANCE
    tables = result_tables(ok, x, y, "accuracy")
    measures = measure_tables(tables, tolerance)
    report = decoupling_report(tables, measures, tolerance)
    _write_text_atomic(grid.output / "decoupling.md", report)
    _write_json_atomic(
        grid.output / "decoupling.json",
        {"tolerance": tolerance, "x": x, "y": y, "panels": {t.label: m.to_dict() for t, m in zip(tables, measures)}},
    )
    summary.plots = plot_sweep(
        ok, grid.output, x=x, y=y, tolerance=tolerance, norm_min_accuracy=grid.plot["norm_min_accuracy"]
    )
    for table, measure in zip(tables, measures):
        best_x, best_y = table.x_values[measure.best_cell[1]], table.y_values[measure.best_cell[0]]
        log(
            f"  {table.label}: best {_format_number(measure.best)} at {x}={_format_value(best_x)}"
            f" {y}={_format_value(best_y)}; rectangularity {measure.rectangularity:.2f}"
            f" ({measure.good_cells} good / {measure.box_cells} in box)"
        )
    log(f"pictures: {', '.join(str(p) for p in summary.plots.values())}; decoupling: {grid.output / 'decoupling.md'}")
    if grid.wandb is not None and summary.plots:
        _log_wandb_summary(grid, summary.plots, tables, measures, log)
    return summary


def _log_wandb_summary(grid: GridSpec, plots: Mapping[str, Path], tables: Any, measures: Any, log: Any) -> None:
    """One W&B run per sweep (``<name>-summary``, same group as the cells) holding the pictures and measures."""
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    settings = {"project": grid.name, **dict(grid.wandb or {})}
    allowed = ("project", "entity", "tags", "notes")
    run = wandb.init(
        **{k: v for k, v in settings.items() if k in allowed}, group=grid.name, name=f"{grid.name}-summary",
        job_type="sweep-summary", dir=str(grid.output), mode=_wandb_mode(),
    )
    try:
        run.log({f"sweep/{name}": wandb.Image(str(path)) for name, path in plots.items()})
        for table, measure in zip(tables, measures):
            run.summary[f"rectangularity/{table.label}"] = measure.rectangularity
            run.summary[f"best_accuracy/{table.label}"] = measure.best
    finally:
        run.finish()
    log(f"W&B: pictures logged to run {grid.name}-summary ({_wandb_mode()})")


# --------------------------------------------------------------------------------------------------------------
# W&B sweep files
# --------------------------------------------------------------------------------------------------------------


def write_wandb_sweeps(grid: GridSpec) -> list[Path]:
    """Write the W&B grid sweeps equivalent to ``grid`` into its output folder; return the paths.

    * ``wandb_sweep.yaml``: all cells (``variant`` is a parameter); each agent run executes
      ``lightning-decay sweep cell --config <grid> --output <output> ${args}``, i.e. exactly a cell of this
      runner, written to the same results store.
    * ``wandb_sweep.fit.<variant>.yaml``: per variant, the plain ``lightning-decay fit`` command with the
      variant's config files and overrides fixed and the axes' CLI keys as the sweep parameters.

    W&B's ``${args}`` macro expands to ``--name=value`` per parameter, the form LightningCLI parses.
    """
    metric = {"name": grid.metrics["accuracy"], "goal": "maximize"}
    axis_parameters = {axis.name: {"values": list(axis.values)} for axis in grid.axes}
    paths = []
    grid_path = str(grid.path.resolve()) if grid.path is not None else "GRID.yaml"
    everything = {
        "name": grid.name,
        "method": "grid",
        "metric": metric,
        "parameters": {"variant": {"values": [v.name for v in grid.variants]}, **axis_parameters},
        "command": [
            "${env}", "lightning-decay", "sweep", "cell", "--config", grid_path, "--output",
            str(grid.output.resolve()), "${args}",
        ],
    }
    paths.append(grid.output / "wandb_sweep.yaml")
    _write_text_atomic(paths[-1], _yaml_with_header(everything, grid))
    for variant in grid.variants:
        fixed = [*grid.overrides, *variant.overrides]
        configs = [arg for path in (*grid.configs, *variant.configs) for arg in ("--config", str(path))]
        fit = {
            "name": f"{grid.name}-{variant.name}",
            "method": "grid",
            "metric": metric,
            "parameters": {axis.key: {"values": list(axis.values)} for axis in grid.axes},
            "command": [
                "${env}", "lightning-decay", "fit", *configs, *(f"--{k}={_cli_value(v)}" for k, v in fixed),
                "--trainer.logger=lightning.pytorch.loggers.WandbLogger", "${args}",
            ],
        }
        paths.append(grid.output / f"wandb_sweep.fit.{variant.name}.yaml")
        _write_text_atomic(paths[-1], _yaml_with_header(fit, grid))
    return paths


def _yaml_with_header(payload: dict[str, Any], grid: GridSpec) -> str:
    header = (
        f"# W&B grid sweep equivalent to the lightning-decay sweep {grid.name!r} (written by lightning-decay sweep).\n"
        "# Run:  wandb sweep <this file>   then   wandb agent <entity/project/sweep id>\n"
    )
    return header + yaml.safe_dump(payload, sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def _run_one_cell(argv: list[str]) -> int:
    """``lightning-decay sweep cell --config GRID --variant V --lr X ...``: run one cell in this process."""
    parser = argparse.ArgumentParser(prog="lightning-decay sweep cell", description=_run_one_cell.__doc__)
    parser.add_argument("--config", required=True, help="the grid YAML file")
    parser.add_argument("--output", help="output folder (default: the grid's)")
    known, rest = parser.parse_known_args(argv)
    grid = GridSpec.load(known.config, known.output)
    parser.add_argument("--variant", required=True, choices=[v.name for v in grid.variants])
    for axis in grid.axes:
        parser.add_argument(f"--{axis.name}", required=True, help=f"one of {list(axis.values)}")
    args = parser.parse_args(argv)
    variant = next(v for v in grid.variants if v.name == args.variant)
    values = []
    for axis in grid.axes:
        given = _number_or_value(getattr(args, axis.name))
        match = [v for v in axis.values if v == given or str(v) == str(given)]
        if not match:
            parser.error(f"--{axis.name}={given!r} is not a value of the grid: {list(axis.values)}")
        values.append((axis.name, match[0]))
    cell = Cell(variant, tuple(values))
    fingerprint = grid.fingerprint(cell)
    state = _cell_state(grid, cell, fingerprint)
    if state == "done":
        print(f"{cell.id}: already finished in {grid.output}")
        return 0
    cell_dir = _cell_dir(grid.output, cell.id)
    if not _acquire_lock(cell_dir / LOCK_FILE):
        print(f"{cell.id}: being run by {_lock_owner(cell_dir / LOCK_FILE)}", file=sys.stderr)
        return 1
    try:
        _clear_attempt(cell_dir)
        spec = _cell_spec(grid, cell, fingerprint, grid.threads or 0)
        spec["parent_pid"] = None
        if os.environ.get("WANDB_SWEEP_ID") and spec["wandb"] is None:
            spec["wandb"] = {}
        code = run_cell(spec)
    finally:
        (cell_dir / LOCK_FILE).unlink(missing_ok=True)
    write_results(grid, collect_results(grid))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """``lightning-decay sweep ...`` (see the module docstring); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run-cell"]:
        if len(argv) != 2:
            print("usage: python -m lightning_decay.sweep run-cell SPEC.json", file=sys.stderr)
            return 2
        return run_cell(json.loads(Path(argv[1]).read_text()))
    if os.getcwd() not in sys.path:  # class paths of the user's own modules resolve as in the cell processes
        sys.path.insert(0, os.getcwd())
    try:
        if argv[:1] == ["cell"]:
            return _run_one_cell(argv[1:])
        parser = argparse.ArgumentParser(
            prog="lightning-decay sweep",
            description="Run a grid of lightning-decay fits (resumable), then draw heatmaps and measure decoupling.",
        )
        parser.add_argument("--config", required=True, help="the grid YAML file (format: docs/sweeps.md)")
        parser.add_argument("--jobs", type=int, help="cells run at once (default: grid's jobs, else #GPUs, else 1)")
        parser.add_argument("--output", help="output folder (default: the grid's output)")
        parser.add_argument("--dry-run", action="store_true", help="list the cells and check them; run nothing")
        parser.add_argument("--plot-only", action="store_true", help="only rebuild the tables and pictures")
        parser.add_argument("--rerun-changed", action="store_true", help="re-run cells finished with other settings")
        parser.add_argument(
            "--no-check", action="store_true", help="skip the up-front LightningCLI check of each variant's first cell"
        )
        parser.add_argument("--wandb", action=argparse.BooleanOptionalAction, help="log to W&B (overrides the grid)")
        args = parser.parse_args(argv)
        if args.jobs is not None and args.jobs < 1:
            parser.error("--jobs must be >= 1")
        grid = GridSpec.load(args.config, args.output)
        if args.wandb is not None:
            grid = _replace(grid, wandb=(dict(grid.wandb or {}) if args.wandb else None))
        summary = run_sweep(
            grid, jobs=args.jobs, dry_run=args.dry_run, plot_only=args.plot_only, rerun_changed=args.rerun_changed,
            validate=not args.no_check,
        )
    except GridError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any cell started, or while drawing
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if args.dry_run or args.plot_only else summary.exit_code


def _replace(grid: GridSpec, **changes: Any) -> GridSpec:
    import dataclasses

    return dataclasses.replace(grid, **changes)


if __name__ == "__main__":
    sys.exit(main())
