"""What the monitors send to W&B beyond numbers: the per-layer summary tables and bar charts at epoch end, the
``define_metric`` calls that give each key family its step axis and run summary, and one multi-line chart per key
family (all its layers or groups in one chart) at each epoch end and at the end of the fit.

Everything here runs only with a ``WandbLogger`` among the trainer's loggers; ``wandb`` and matplotlib are
imported when first needed. The families are :data:`lightning_decay.diagnostics.families.FAMILIES`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger

from lightning_decay.diagnostics.families import FAMILIES, Family, chart_key, family_of

__all__ = [
    "CHART_POINTS",
    "STEP_METRIC",
    "wandb_loggers",
    "update_layer_summary",
    "bar_chart",
    "epoch_summary_media",
    "define_family_metrics",
    "family_charts",
]

#: The x axis of every monitor key on W&B (Lightning's ``WandbLogger`` logs it with every row).
STEP_METRIC = "trainer/global_step"
#: Most points per line of a family chart (longer series are thinned evenly, keeping the last point).
CHART_POINTS = 200
#: run id -> the names already passed to ``define_metric`` in that run.
_DEFINED: dict[str, set[str]] = {}


def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    """The trainer's ``WandbLogger`` instances."""
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def update_layer_summary(
    summary: dict[str, dict[str, float]], values: Mapping[str, float], families: Mapping[str, str]
) -> None:
    """``summary[row][column] = values[prefix + row]`` for every ``column -> prefix`` in ``families`` (a row is a
    layer or a param group)."""
    for column, prefix in families.items():
        for key, value in values.items():
            if key.startswith(prefix):
                summary.setdefault(key[len(prefix) :], {})[column] = value


def bar_chart(title: str, layers: Sequence[str], series: Mapping[str, Sequence[float]]) -> Any:
    """A horizontal bar chart (one bar per layer and series) as a ``wandb.Image`` (matplotlib, Agg, no pyplot)."""
    import numpy as np
    import wandb
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 1.2 + 0.22 * max(1, len(layers))), dpi=80)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    height = 0.8 / max(1, len(series))
    positions = np.arange(len(layers))
    for offset, (label, values) in enumerate(series.items()):
        axes.barh(positions + offset * height, [v if math.isfinite(v) else 0.0 for v in values], height, label=label)
    axes.set_yticks(positions + height * (len(series) - 1) / 2, list(layers), fontsize=7)
    axes.invert_yaxis()
    axes.set_title(title)
    axes.legend(fontsize=7)
    figure.tight_layout()
    canvas.draw()
    return wandb.Image(np.asarray(canvas.buffer_rgba())[..., :3].copy(), caption=title)


def epoch_summary_media(
    name: str, summary: Mapping[str, Mapping[str, float]], plot_columns: Sequence[str], epoch: int
) -> dict[str, Any]:
    """``tables/<name>``: a ``wandb.Table`` with one row per layer (or group) and its latest values, and
    ``plots/<name>``: a bar chart of the ``plot_columns`` present (omitted when none is)."""
    import wandb

    layers = sorted(summary)
    columns = sorted({column for row in summary.values() for column in row})
    data = [[layer, *[summary[layer].get(column) for column in columns]] for layer in layers]
    media: dict[str, Any] = {f"tables/{name}": wandb.Table(columns=["layer", *columns], data=data)}
    plotted = [column for column in plot_columns if column in columns]
    if plotted:
        series = {column: [summary[layer].get(column, math.nan) for layer in layers] for column in plotted}
        media[f"plots/{name}"] = bar_chart(f"{name} (epoch {epoch})", layers, series)
    return media


def define_family_metrics(logger: WandbLogger, keys: Iterable[str]) -> None:
    """``define_metric`` for the key families, with ``trainer/global_step`` as step metric and the family's
    summary (last norm, min decay factor, last timescale, mean angular update and prediction, ...).

    Once per run, each family's glob (``weight_norm/*``); then once per key, the key itself: Lightning's
    ``WandbLogger`` defines ``*`` too, and W&B applies one of two matching globs at random, so only a key's own
    definition makes its summary certain. Families without a summary (W&B's default: the last value) and media keys
    are left alone."""
    run = logger.experiment
    define = getattr(run, "define_metric", None)
    if define is None:  # a disabled run
        return
    run_id = str(getattr(run, "id", None) or id(run))
    defined = _DEFINED.get(run_id)
    if defined is None:
        defined = _DEFINED[run_id] = set()
        for family in FAMILIES:
            if family.summary and family.glob and family.kind == "number":
                define(family.glob, step_metric=STEP_METRIC, summary=family.summary)
                defined.add(family.glob)
    for key in keys:
        if key in defined:
            continue
        defined.add(key)
        family = family_of(key)
        if family is not None and family.summary and family.kind == "number":  # W&B reads "." as nesting: escaped
            define(key.replace(".", "\\."), step_metric=STEP_METRIC, summary=family.summary)


def _thinned(points: Sequence[tuple[int, float]], most: int) -> list[tuple[int, float]]:
    """At most ``most`` points, evenly spaced, the last one kept."""
    if len(points) <= most:
        return list(points)
    stride = math.ceil(len(points) / most)
    kept = list(points[::-1][::stride])[::-1]
    return kept


def family_charts(
    history: Mapping[str, Sequence[tuple[int, float]]], most: int = CHART_POINTS
) -> dict[str, Any]:
    """``charts/<family>``: for every charted family (``Family.chart``) with logged keys, one W&B multi-line chart
    (``wandb.plot.line_series``) of all its keys against ``trainer/global_step``, a line per layer or group
    (at most ``most`` points per line)."""
    import wandb

    by_family: dict[str, tuple[Family, list[str]]] = {}
    for key in sorted(history):
        family = family_of(key)
        if family is not None and family.chart and history[key]:
            by_family.setdefault(family.name, (family, []))[1].append(key)
    charts: dict[str, Any] = {}
    for family, keys in by_family.values():
        lines = [_thinned(history[key], most) for key in keys]
        charts[chart_key(family)] = wandb.plot.line_series(
            xs=[[step for step, _ in line] for line in lines],
            ys=[[value if math.isfinite(value) else None for _, value in line] for line in lines],
            keys=[key[len(family.prefix):] if family.prefix else key for key in keys],
            title=family.title,
            xname=STEP_METRIC,
        )
    return charts
