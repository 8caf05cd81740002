"""The grid file: parsing and validation into a :class:`GridSpec` of variants, axes and cells.

The format is documented in ``docs/sweeps.md``. Every error is a :class:`GridError` naming the offending key.
Variant names set at DecayMixin's ``decay.optimizer`` key are checked against the variant registry
(:mod:`lightning_decay.optim.registry`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_decay.optim.registry import get_variant
from lightning_decay.validation import check_bool, check_int, check_real

__all__ = [
    "DEFAULT_AXIS_KEYS",
    "DEFAULT_METRICS",
    "Axis",
    "Cell",
    "GridError",
    "GridSpec",
    "Variant",
    "cli_value",
    "format_value",
    "number_or_value",
]

#: Default CLI key of the standard axes (override with ``axes.<name>.key`` in the grid file).
DEFAULT_AXIS_KEYS: dict[str, str] = {
    "lr": "model.init_args.decay.lr",
    "weight_decay": "model.init_args.decay.weight_decay",
    "seed": "seed_everything",
}
#: Default metric names read from the trained model's logged metrics.
DEFAULT_METRICS: dict[str, str] = {"accuracy": "test/acc", "train_loss": "train/loss"}
#: The last part of a CLI key whose value is a registry variant name (``DecaySettings.optimizer``).
VARIANT_SETTING = "decay.optimizer"
GRID_KEYS = (
    "name", "configs", "variants", "variant_key", "axes", "overrides", "metrics", "test", "output", "wandb", "jobs",
    "threads", "plot", "executor", "batch_cells",
)
PLOT_KEYS = ("x", "y", "tolerance", "norm_min_accuracy")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class GridError(ValueError):
    """An invalid grid file or grid setting; the message names the offending key."""


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
        parts = [self.variant.name] + [f"{name}={format_value(value)}" for name, value in self.values]
        return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "__".join(parts))

    @property
    def axis_values(self) -> dict[str, Any]:
        """Axis name -> value."""
        return dict(self.values)


@dataclass(frozen=True)
class GridSpec:
    """A parsed and validated grid file (see ``docs/sweeps.md`` for the format).

    ``configs`` (and each variant's) are absolute paths, resolved when the grid is loaded; ``output`` is as given
    (relative paths are relative to the current directory).
    """

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
    executor: Mapping[str, Any] = field(default_factory=lambda: {"name": "local", "options": {}})
    #: At most this many cells that share their model and data run one after another in one process (None: 1).
    batch_cells: int | None = None
    #: The CLI key each variant's name is set at (the grid file's ``variant_key``), or None.
    variant_key: str | None = None

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
        test = _checked(where, check_bool, "test", raw.get("test", True))
        wandb = raw.get("wandb", False)
        if wandb is True:
            wandb = {}
        elif wandb is False or wandb is None:
            wandb = None
        elif not isinstance(wandb, dict):
            raise GridError(f"{where}: wandb: must be true, false or a mapping of WandbLogger arguments")
        jobs, threads, batch_cells = raw.get("jobs"), raw.get("threads"), raw.get("batch_cells")
        for key, value in (("jobs", jobs), ("threads", threads), ("batch_cells", batch_cells)):
            if value is not None:
                _checked(where, check_int, key, value, low=1)
        plot = _plot(raw.get("plot", {}), axes, where)
        executor = _executor(raw.get("executor", "local"), where)
        out = output if output is not None else raw.get("output", f"outputs/sweeps/{name}")
        if not isinstance(out, (str, Path)) or not str(out):
            raise GridError(f"{where}: output: must be a folder path, got {out!r}")
        grid = cls(
            name=name, path=path, configs=configs, variants=variants, axes=axes, overrides=overrides,
            metrics={**DEFAULT_METRICS, **metrics}, test=test, output=Path(out).expanduser(), wandb=wandb,
            jobs=jobs, threads=threads, plot=plot, executor=executor, batch_cells=batch_cells,
            variant_key=variant_key,
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

    def cell_configs(self, cell: Cell) -> list[Path]:
        """The config files of a cell (absolute paths): the grid's, then the variant's."""
        return [*self.configs, *cell.variant.configs]

    def cell_args(self, cell: Cell, config_path: Callable[[Path], str] = str) -> list[str]:
        """``lightning-decay fit`` arguments of a cell: ``--config`` files, then ``--key=value`` overrides.

        ``config_path`` writes each (absolute) config path, e.g. relative to a folder; default: as is.
        """
        args: list[str] = []
        for config in self.cell_configs(cell):
            args += ["--config", config_path(config)]
        return args + [f"--{key}={cli_value(value)}" for key, value in self.cell_overrides(cell)]

    def fingerprint(self, cell: Cell) -> str:
        """Hash of what determines a cell's result: the parsed config files, the overrides, the test flag."""
        payload = {
            "configs": [_canonical_config(path) for path in self.cell_configs(cell)],
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


def format_value(value: Any) -> str:
    """An axis value as written in cell ids and labels (``repr`` for floats: ``1e-05``, ``0.001``)."""
    return repr(value) if isinstance(value, float) else str(value)


def cli_value(value: Any) -> str:
    """A value as written after ``--key=`` on a LightningCLI command line."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


def number_or_value(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: turn numeric strings into numbers."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        return int(text) if re.match(r"^[+-]?\d+$", text) else float(text)
    return value


def _checked(where: str, check: Callable[..., Any], name: str, value: Any, **kwargs: Any) -> Any:
    """``check(name, value, **kwargs)`` of :mod:`lightning_decay.validation`, its error as a :class:`GridError`."""
    try:
        return check(name, value, **kwargs)
    except (TypeError, ValueError) as error:
        raise GridError(f"{where}: {error}") from None


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
    overrides = tuple((name, number_or_value(item)) for name, item in value.items())
    for name, item in overrides:
        _check_variant_setting(name, item, f"{where}: {key}.{name}")
    return overrides


def _check_variant_setting(key: str, value: Any, where: str) -> None:
    """A value set at DecayMixin's ``decay.optimizer`` key must be a registry variant (or a class path)."""
    if not (key == VARIANT_SETTING or key.endswith("." + VARIANT_SETTING)):
        return
    if isinstance(value, str) and "." in value:  # a class path such as torch.optim.AdamW
        return
    try:
        get_variant(value)
    except (TypeError, ValueError) as error:
        raise GridError(f"{where}: {error}") from None


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
            _check_variant_setting(variant_key, name, f"{where}: variants: {name!r} (set at {variant_key})")
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
        values = [number_or_value(v) for v in values]
        for item in values:
            if not isinstance(item, (int, float, str, bool)) or (isinstance(item, float) and not math.isfinite(item)):
                raise GridError(f"{where}: axes.{name}.values: {item!r} is not a finite number, string or bool")
            _check_variant_setting(key, item, f"{where}: axes.{name}.values")
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
    if plot["tolerance"] is not None:
        plot["tolerance"] = _checked(where, check_real, "plot.tolerance", plot["tolerance"], low=0.0, high=1.0)
    if plot["norm_min_accuracy"] is not None:
        plot["norm_min_accuracy"] = _checked(where, check_real, "plot.norm_min_accuracy", plot["norm_min_accuracy"])
    return plot


def _canonical_config(path: Path) -> Any:
    """A config file's parsed content (comments and formatting do not change a cell's fingerprint)."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise GridError(f"config file {str(path)!r} cannot be read: {error}") from None


def _executor(value: Any, where: str) -> dict[str, Any]:
    """``executor: local`` or ``executor: {name: slurm, options: {partition: gpu, ...}}`` (the options are checked
    by :func:`lightning_decay.sweep.executors.make_executor` when the sweep starts)."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or set(value) - {"name", "options"} or not isinstance(value.get("name"), str):
        raise GridError(f"{where}: executor: must be a name (local, slurm, ray) or {{name: ..., options: {{...}}}}")
    options = value.get("options") or {}
    if not isinstance(options, dict):
        raise GridError(f"{where}: executor.options: must be a mapping, got {options!r}")
    if value["name"] not in ("local", "slurm", "ray"):
        raise GridError(f"{where}: executor.name: must be local, slurm or ray, got {value['name']!r}")
    return {"name": value["name"], "options": dict(options)}
