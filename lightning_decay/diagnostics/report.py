"""The data of ``TrainingReport``'s picture (``diagnostics.png``): which lines each panel draws, as plain numbers.

:func:`report_panels` turns the series of a ``metrics.csv`` (:func:`~lightning_decay.diagnostics.read_metrics_csv`)
into three :class:`Panel` s; :func:`lightning_decay.callbacks.training_report.plot_diagnostics` only draws them, so
what the picture shows is tested on these numbers, not on pixels.

The norm panel draws each layer's norm relative to its own maximum over the logged steps, ``|w_t| / max_s |w_s|``
(in ``[0, 1]``; the first and last absolute norms in the legend). Relative to the first logged value instead, a
zero-initialised bias that grows 9x (or from exactly 0: no ratio at all) stretches the axis to 9 and flattens
every other line; relative to the maximum no line reaches past 1, whatever another does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lightning_decay.diagnostics.metrics_csv import Series

__all__ = ["Line", "Panel", "report_panels"]


@dataclass(frozen=True)
class Line:
    """One drawn line: its legend label, the steps and the plotted values; ``bold`` for totals."""

    label: str
    steps: tuple[int, ...]
    values: tuple[float, ...]
    bold: bool = False


@dataclass(frozen=True)
class Panel:
    """One panel of the picture: title, axis labels, y scale (``linear`` or ``symlog``), fixed y limits (None:
    automatic) and its lines."""

    title: str
    xlabel: str
    ylabel: str
    lines: tuple[Line, ...] = field(default_factory=tuple)
    yscale: str = "linear"
    ylim: tuple[float, float] | None = None


def _keys(series: Series, prefix: str) -> list[str]:
    """Keys ``<prefix><name>`` with no further ``/`` in the name (``weight_norm/net.0.weight``, not a sub-family)."""
    return sorted(k for k in series if k.startswith(prefix) and "/" not in k[len(prefix) :])


def _norm_line(key: str, points: list[tuple[int, float]]) -> Line:
    steps, values = zip(*points)
    finite = [v for v in values if math.isfinite(v)]
    peak = max(finite, default=0.0)
    relative = tuple(v / peak if peak > 0 and math.isfinite(v) else (0.0 if peak == 0 else math.nan) for v in values)
    name = key.removeprefix("weight_norm/")
    label = f"{name} ({values[0]:.3g} -> {values[-1]:.3g})"
    return Line(label, tuple(steps), relative, bold=name == "total")


def report_panels(series: Series, max_layers: int = 12) -> list[Panel]:
    """The three panels of ``diagnostics.png`` from logged series (``{key: [(step, value), ...]}``):

    * norms: ``weight_norm/<layer>`` of the ``max_layers`` layers with the largest final norm, and
      ``weight_norm/total`` (bold), each as ``|w_t| / max_s |w_s|`` (in ``[0, 1]``, the y axis fitted to the
      lines).
    * decay: ``1 - decay_factor/<group>`` per param group (symlog: 0 for groups without decay).
    * lr: ``LearningRateMonitor``'s ``lr-*`` series.
    """
    norms = [k for k in _keys(series, "weight_norm/") if k != "weight_norm/total" and series[k]]
    norms = sorted(norms, key=lambda k: -series[k][-1][1])[:max_layers]
    if series.get("weight_norm/total"):
        norms.append("weight_norm/total")
    norm_panel = Panel(
        title=f"weight norm / its maximum (largest {len(norms) - ('weight_norm/total' in norms)} layers)",
        xlabel="step",
        ylabel="|w_t| / max |w|  (legend: first -> last |w|)",
        lines=tuple(_norm_line(key, series[key]) for key in norms),
    )
    decay_lines = []
    for key in _keys(series, "decay_factor/"):
        steps, values = zip(*series[key])
        decay_lines.append(Line(key.removeprefix("decay_factor/"), tuple(steps), tuple(1.0 - v for v in values)))
    decay_panel = Panel(
        title="per-step decay 1 - factor (per param group)",
        xlabel="step",
        ylabel="1 - decay factor",
        lines=tuple(decay_lines),
        yscale="symlog",
    )
    lr_lines = []
    for key in sorted(k for k in series if k.startswith("lr-") and series[k]):
        steps, values = zip(*series[key])
        lr_lines.append(Line(key, tuple(steps), tuple(values)))
    lr_panel = Panel(title="learning rate", xlabel="step", ylabel="lr", lines=tuple(lr_lines))
    return [norm_panel, decay_panel, lr_panel]
