"""What the monitors send to W&B beyond numbers: the per-layer summary tables and bar charts at epoch end.

Everything here runs only with a ``WandbLogger`` among the trainer's loggers; ``wandb`` and matplotlib are
imported when first needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger

__all__ = ["wandb_loggers", "update_layer_summary", "bar_chart", "epoch_summary_media"]


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
