"""Pictures of a sweep's results: accuracy and weight-norm heatmaps, norm-vs-epoch curves (PNG, Agg, no pyplot).

* :func:`plot_accuracy_heatmaps`: one heatmap per variant side by side (x: lr, y: weight decay), one shared colour
  scale, the value printed in every cell, the best cell framed in red, the good region of
  :mod:`lightning_decay.sweep.decoupling` outlined (dashed) and its rectangularity in the title.
* :func:`plot_norm_heatmaps`: the same layout for the final total weight norm (log colour scale when it spans
  more than a factor 10), best-accuracy cell framed.
* :func:`plot_norm_curves`: total weight norm vs. epoch of the runs whose accuracy clears a threshold, one panel
  per variant with a shared y axis (the blog's AdamW-vs-AdamP norm comparison).

Input is the rows of a sweep's ``results.json`` (:func:`lightning_decay.sweep.results.load_results`). Titles and
colour-bar labels name the logged metric behind the ``accuracy`` column (the grid's ``metrics.accuracy``, e.g.
``val/acc`` for a sweep with ``test: false``; :func:`accuracy_metric`); each panel's title names the variant, its
decay convention and its step (:func:`variant_title`). Each PNG carries its title in its ``Title`` metadata and
its panels' titles in ``Panels``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_decay.sweep.decoupling import DEFAULT_TOLERANCE, good_region, measure_table_slope, measure_tables
from lightning_decay.sweep.results import FIXED_COLUMNS, RESULT_FILE, ResultTable, cell_dir, read_json, result_tables

__all__ = [
    "accuracy_metric",
    "metric_title",
    "plot_accuracy_heatmaps",
    "plot_norm_curves",
    "plot_norm_heatmaps",
    "plot_sweep",
    "variant_title",
]

#: How the first part of a metric name reads in a title (``val/acc`` -> validation accuracy).
_STAGES = {"test": "test", "val": "validation", "valid": "validation", "validation": "validation", "train": "training"}
_KINDS = {"acc": "accuracy", "accuracy": "accuracy", "loss": "loss"}


def metric_title(name: str | None) -> str:
    """A metric as a title: ``test/acc`` -> ``test accuracy (test/acc)``, ``val/acc`` -> ``validation accuracy
    (val/acc)``; other names as they are; None -> ``accuracy``."""
    if not name:
        return "accuracy"
    stage, _, kind = name.partition("/")
    if stage in _STAGES and kind:
        return f"{_STAGES[stage]} {_KINDS.get(kind, kind)} ({name})"
    return name


def variant_title(variant: str, label: str | None = None) -> str:
    """A panel's title: its label (default: the variant's name), the variant's decay convention and, on a second
    line, its step (the registry's formula, e.g. ``w <- (1 - lr_t*wd) w - lr_t u_t``); a variant the registry does
    not know: the label alone."""
    from lightning_decay.optim import REGISTRY
    from lightning_decay.optim.rules import L2Rule

    label = label or variant
    record = REGISTRY.get(variant)
    if record is None:
        return label
    convention = record.kwargs.get("convention")
    if convention:
        words = f"{convention} convention"
    elif isinstance(record.rule, L2Rule):
        words = "L2 penalty in the gradient"
    else:
        words = "paper convention" if record.rule.per_unit_lr else "torch convention"
    return f"{label}, {words}\n{textwrap.fill(record.step, width=44, subsequent_indent='  ')}"


def _same(a: Any, b: Any) -> bool:
    return _is_number(a) and _is_number(b) and float(a) == float(b)


def accuracy_metric(rows: Sequence[Mapping[str, Any]], output: str | Path | None = None) -> str | None:
    """The logged metric the rows' ``accuracy`` column holds (the grid's ``metrics.accuracy``, e.g. ``test/acc`` or,
    for a sweep with ``test: false``, ``val/acc``), read from the rows: the metric columns equal to ``accuracy``
    in every finished row. Where several are (a validation set that is the test set), the name the cells recorded
    (``<output>/cells/<cell>/result.json``, ``metric_names``) decides, else they are joined with `` = ``. None when
    no column matches."""
    ok = [row for row in rows if row.get("status", "ok") == "ok" and _is_number(row.get("accuracy"))]
    if not ok:
        return None
    skip = {"accuracy", *FIXED_COLUMNS, "cell", "variant", "axes", "norm_history", "error"}
    columns = [key for key in ok[0] if key not in skip and key not in ok[0].get("axes", ())]
    matching = [key for key in columns if all(_same(row.get(key), row["accuracy"]) for row in ok)]
    if len(matching) <= 1:
        return matching[0] if matching else None
    if output is not None:
        recorded = set()
        for row in ok:
            result = read_json(cell_dir(Path(output), str(row["cell"])) / RESULT_FILE) if row.get("cell") else None
            name = ((result or {}).get("metric_names") or {}).get("accuracy")
            if name:
                recorded.add(name)
        if len(recorded) == 1 and next(iter(recorded)) in matching:
            return next(iter(recorded))
    return " = ".join(matching)

_PANEL_SIZE = (3.6, 3.3)


def _figure(
    panels: int, width: float = _PANEL_SIZE[0], height: float = _PANEL_SIZE[1], sharey: bool = False
) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * panels + 1.2, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False, sharey=sharey)[0]
    return figure, list(axes)


def _tick(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e") if value != 0 else "0"
    return str(value)


def _as_percent(tables: Sequence[ResultTable]) -> bool:
    finite = np.concatenate([t.values[np.isfinite(t.values)] for t in tables])
    return finite.size > 0 and finite.min() >= 0.0 and finite.max() <= 1.0


def _heatmaps(
    tables: Sequence[ResultTable],
    path: Path,
    title: str,
    colorbar_label: str,
    cell_text: Any,
    marks: Sequence[tuple[int, int] | None],
    outlines: Sequence[np.ndarray | None],
    subtitles: Sequence[str],
    log_scale: bool = False,
    cmap: str = "viridis",
    scale: float = 1.0,
    spreads: Sequence[np.ndarray | None] | None = None,
) -> Path:
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.patches import Rectangle

    shown = [t.values * scale for t in tables]
    finite = np.concatenate([v[np.isfinite(v)] for v in shown])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high == low:
        low, high = low - 0.5, high + 0.5
    if log_scale and low > 0 and high / low > 10:
        norm: Any = LogNorm(low, high)
    else:
        norm = Normalize(low, high)
    colours = colormaps[cmap].with_extremes(bad="0.85")
    figure, axes = _figure(len(tables))
    image = None
    spreads = list(spreads) if spreads is not None else [None] * len(tables)
    for ax, table, values, mark, outline, subtitle, spread in zip(
        axes, tables, shown, marks, outlines, subtitles, spreads
    ):
        image = ax.imshow(np.ma.masked_invalid(values), origin="lower", cmap=colours, norm=norm, aspect="auto")
        small = len(table.x_values) > 4 or len(table.y_values) > 4
        for i in range(len(table.y_values)):
            for j in range(len(table.x_values)):
                value = values[i, j]
                shade = norm(value) if np.isfinite(value) else 1.0
                text = cell_text(value) if np.isfinite(value) else "-"
                if spread is not None and np.isfinite(spread[i, j]):
                    text += f"\n±{cell_text(spread[i, j] * scale)}"
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=6 if small else 8, linespacing=0.9,
                    color="black" if shade > 0.55 else "white",
                )
                if outline is not None and outline[i, j]:
                    ax.add_patch(
                        Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="white", lw=1.0, ls="--")
                    )
        if mark is not None:
            i, j = mark
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
        ax.set_xticks(range(len(table.x_values)), [_tick(v) for v in table.x_values], fontsize=8)
        ax.set_yticks(range(len(table.y_values)), [_tick(v) for v in table.y_values], fontsize=8)
        ax.set_xlabel(table.x_name)
        ax.set_ylabel(table.y_name)
        name = variant_title(table.variant, table.label)
        ax.set_title(f"{name}\n{subtitle}" if subtitle else name, fontsize=9)
    figure.colorbar(image, ax=axes, label=colorbar_label, shrink=0.9)
    return _save(figure, path, title)


def _save(figure: Any, path: str | Path, title: str) -> Path:
    """Give ``figure`` its title, write it as a PNG (the title also in the PNG's metadata) and return the path."""
    figure.suptitle(textwrap.fill(title, width=max(40, int(figure.get_figwidth() * 14))), fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = "\n\n".join(ax.get_title() for ax in figure.axes if ax.get_title())  # each panel's title
    figure.savefig(path, dpi=120, metadata={"Title": title, "Panels": panels})
    return path


def plot_accuracy_heatmaps(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    x: str = "lr",
    y: str = "weight_decay",
    value: str = "accuracy",
    tolerance: float = DEFAULT_TOLERANCE,
    title: str | None = None,
    metric: str | None = None,
) -> Path:
    """Accuracy heatmaps side by side (shared colour scale, values printed, best framed, good region dashed).

    ``metric``: the logged metric behind the ``value`` column, named in the title and colour bar (default:
    :func:`accuracy_metric` of the rows); ``title`` replaces the title's metric part."""
    tables = result_tables(rows, x, y, value)
    if not tables:
        raise ValueError("no finished rows to plot")
    if metric is None and value == "accuracy":
        metric = accuracy_metric(rows)
    label = metric or value
    percent = _as_percent(tables)
    measures = measure_tables(tables, tolerance)
    seeds = max(int(t.counts.max()) for t in tables)
    subtitles = [f"rectangularity {m.rectangularity:.2f} ({m.good_cells}/{m.box_cells})" for m in measures]
    if seeds > 1:
        for k, table in enumerate(tables):
            low, high = int(table.counts[table.counts > 0].min()), int(table.counts.max())
            subtitles[k] += f", n={low}" if low == high else f", n={low}-{high}"
            slope = _slope_text(table, tolerance)
            subtitles[k] += f"\n{slope}" if slope else ""
    spread_note = f"mean ± std over {seeds} seeds; " if seeds > 1 else ""
    return _heatmaps(
        tables,
        Path(path),
        title=f"{title or metric_title(label)} ({spread_note}red: best; dashed: good region, tolerance {tolerance:g})",
        colorbar_label=f"{label} (%)" if percent else label,
        cell_text=(lambda v: f"{v:.1f}") if percent else (lambda v: f"{v:.3g}"),
        scale=100.0 if percent else 1.0,
        marks=[m.best_cell for m in measures],
        outlines=[np.array(m.good_mask) for m in measures],
        subtitles=subtitles,
        spreads=[t.stds for t in tables] if seeds > 1 else None,
    )


def _slope_text(table: ResultTable, tolerance: float) -> str:
    """``lr-wd slope -0.45 [-0.6, -0.3]`` for a panel with numeric positive axes and 2+ rows, else ``""``."""
    if len(table.y_values) < 3:
        return ""
    try:
        slope = measure_table_slope(table, tolerance).slope
    except ValueError:
        return ""
    return f"{table.x_name}-{table.y_name} slope {slope.format(2)}" if slope.n else ""


def plot_norm_heatmaps(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    x: str = "lr",
    y: str = "weight_decay",
    value: str = "weight_norm",
    accuracy: str = "accuracy",
    metric: str | None = None,
) -> Path:
    """Final total weight norm per cell, side by side with a shared (log when wide) scale; the cell with the best
    ``accuracy`` framed (``metric``, its logged name in the title; default :func:`accuracy_metric`)."""
    if metric is None and accuracy == "accuracy":
        metric = accuracy_metric(rows)
    tables = result_tables(rows, x, y, value)
    if not tables:
        raise ValueError("no finished rows to plot")
    accuracy_tables = {t.label: t for t in result_tables(rows, x, y, accuracy)}
    marks: list[tuple[int, int] | None] = []
    for table in tables:
        scores = accuracy_tables[table.label].values
        if np.isfinite(scores).any():
            flat = int(np.nanargmax(scores))
            marks.append((flat // scores.shape[1], flat % scores.shape[1]))
        else:
            marks.append(None)
    return _heatmaps(
        tables,
        Path(path),
        title=f"final total weight norm (red: best {metric or accuracy})",
        colorbar_label=value,
        cell_text=lambda v: f"{v:.3g}",
        marks=marks,
        outlines=[None] * len(tables),
        subtitles=[""] * len(tables),
        log_scale=True,
        cmap="magma",
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _default_norm_threshold(rows: Sequence[Mapping[str, Any]], accuracy: str, tolerance: float) -> float | None:
    scores = [float(r[accuracy]) for r in rows if _is_number(r.get(accuracy))]
    if not scores:
        return None
    return good_region(np.array([scores]), tolerance)[1]


def plot_norm_curves(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    x: str = "lr",
    y: str = "weight_decay",
    min_accuracy: float | None = None,
    accuracy: str = "accuracy",
    tolerance: float = DEFAULT_TOLERANCE,
    metric: str | None = None,
) -> Path:
    """Total weight norm vs. epoch of the runs with ``accuracy >= min_accuracy``, one panel per variant
    (``metric``: the logged name of ``accuracy`` in the title; default :func:`accuracy_metric`).

    ``min_accuracy=None``: the good-region threshold of all finished rows pooled (best - tolerance * (best -
    median)), the same for every panel so that the variants are compared on equal terms.
    """
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    if metric is None and accuracy == "accuracy":
        metric = accuracy_metric(rows)
    tables = result_tables(rows, x, y, accuracy)
    if not tables:
        raise ValueError("no finished rows to plot")
    ok = [row for table in tables for row in table.rows]
    threshold = min_accuracy if min_accuracy is not None else _default_norm_threshold(ok, accuracy, tolerance)
    figure, axes = _figure(len(tables), height=3.6, sharey=True)
    low, high = math.inf, 0.0
    for ax, table in zip(axes, tables):
        chosen = [
            row for row in table.rows
            if _is_number(row.get(accuracy)) and threshold is not None and row[accuracy] >= threshold
        ]
        chosen.sort(key=lambda r: -r[accuracy])
        palette = colormaps["tab10"]
        for index, row in enumerate(chosen):
            points = [(h["epoch"], h["weight_norm"]) for h in row.get("norm_history", []) if h.get("weight_norm")]
            if not points:
                continue
            epochs, norms = zip(*points)
            low, high = min(low, *norms), max(high, *norms)
            seed = f", seed {row['seed']}" if "seed" in row.get("axes", ()) else ""
            ax.plot(
                epochs, norms, marker="o", ms=3, color=palette(index % 10),
                label=f"{x}={_tick(row[x])}, {y}={_tick(row[y])}{seed}: {row[accuracy]:.3g}",
            )
        if chosen:
            ax.legend(fontsize=6, loc="best")
        else:
            ax.text(0.5, 0.5, "no run above the threshold", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(variant_title(table.variant, table.label), fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("total weight norm")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if 0 < low and high / low > 10:
        axes[0].set_yscale("log")
    title = (
        f"weight norm during training, runs with {metric or accuracy} >= {threshold:.3g}"
        if threshold is not None else "weight norm during training"
    )
    return _save(figure, path, title)


def plot_sweep(
    rows: Sequence[Mapping[str, Any]],
    output: str | Path,
    x: str = "lr",
    y: str = "weight_decay",
    tolerance: float = DEFAULT_TOLERANCE,
    norm_min_accuracy: float | None = None,
    accuracy_metric_name: str | None = None,
) -> dict[str, Path]:
    """All three pictures into ``output``: ``heatmap_accuracy.png``, ``heatmap_norm.png``, ``norm_curves.png``.

    ``accuracy_metric_name``: the logged metric behind the ``accuracy`` column (the grid's ``metrics.accuracy``),
    named in the titles; default: :func:`accuracy_metric` of the rows (and of the cell files under ``output``)."""
    output = Path(output)
    metric = accuracy_metric_name or accuracy_metric(rows, output)
    return {
        "heatmap_accuracy": plot_accuracy_heatmaps(
            rows, output / "heatmap_accuracy.png", x, y, tolerance=tolerance, metric=metric
        ),
        "heatmap_norm": plot_norm_heatmaps(rows, output / "heatmap_norm.png", x, y, metric=metric),
        "norm_curves": plot_norm_curves(
            rows, output / "norm_curves.png", x, y, min_accuracy=norm_min_accuracy, tolerance=tolerance,
            metric=metric,
        ),
    }
