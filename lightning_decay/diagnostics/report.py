"""The data of ``TrainingReport``'s picture (``diagnostics.png``): which lines each panel draws, as plain numbers.

:func:`report_panels` turns the series of a ``metrics.csv`` (:func:`~lightning_decay.diagnostics.read_metrics_csv`)
into four :class:`Panel` s; :func:`lightning_decay.callbacks.training_report.plot_diagnostics` only draws them, so
what the picture shows is tested on these numbers, not on pixels.

The norm panel draws each layer's norm relative to its own maximum over the logged steps, ``|w_t| / max_s |w_s|``
(in ``[0, 1]``; the first and last absolute norms in the legend). Relative to the first logged value instead, a
zero-initialised bias that grows 9x (or from exactly 0: no ratio at all) stretches the axis to 9 and flattens
every other line; relative to the maximum no line reaches past 1, whatever another does.

The angle panel draws, per decayed param group, the angular update per step (mean over the group's monitored
layers of ``scale_invariance/angular_update/<layer>``) next to the rotational-equilibrium prediction (mean of
``scale_invariance/angular_update_equilibrium/<layer>`` over the layers that have one, dashed). A group whose
layers have no prediction (none labeled scale-invariant, or a rule without one) gets the measured line only, and
the panel's note says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lightning_decay.diagnostics.metrics_csv import Series

__all__ = [
    "ANGLE",
    "MARKER_POINTS",
    "PREDICTION",
    "Line",
    "Panel",
    "angle_panel",
    "figure_title",
    "logged_steps",
    "report_panels",
]

#: The key prefixes of the angle panel (``ScaleInvarianceMonitor``).
ANGLE = "scale_invariance/angular_update/"
PREDICTION = "scale_invariance/angular_update_equilibrium/"
#: A line of at most this many points is drawn with a marker at each (a short run's curves are dots, not a void).
MARKER_POINTS = 25


@dataclass(frozen=True)
class Line:
    """One drawn line: its legend label, the steps and the plotted values; ``bold`` for totals."""

    label: str
    steps: tuple[int, ...]
    values: tuple[float, ...]
    bold: bool = False
    dashed: bool = False

    @property
    def marked(self) -> bool:
        """Drawn with a marker at each point: at most :data:`MARKER_POINTS` points (one point is no line)."""
        return len(self.steps) <= MARKER_POINTS


@dataclass(frozen=True)
class Panel:
    """One panel of the picture: title, axis labels, y scale (``linear`` or ``symlog``), fixed y limits (None:
    automatic), its lines and a note drawn in a corner (empty: none)."""

    title: str
    xlabel: str
    ylabel: str
    lines: tuple[Line, ...] = field(default_factory=tuple)
    yscale: str = "linear"
    ylim: tuple[float, float] | None = None
    note: str = ""


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


def _mean_line(label: str, series: Series, keys: Sequence[str], dashed: bool = False) -> Line | None:
    """The mean over ``keys`` at each step any of them was logged (finite values only); None without a value."""
    by_step: dict[int, list[float]] = {}
    for key in keys:
        for step, value in series.get(key, ()):
            if math.isfinite(value):
                by_step.setdefault(int(step), []).append(value)
    if not by_step:
        return None
    steps = tuple(sorted(by_step))
    return Line(label, steps, tuple(math.fsum(by_step[s]) / len(by_step[s]) for s in steps), dashed=dashed)


def angle_panel(series: Series, groups: Mapping[str, Sequence[str]] | None = None) -> Panel:
    """Per decayed param group (``groups``: group name -> its layers' names; None: all layers as one group
    ``all layers``), the measured angular update per step, ``mean_l theta_l``, and the rotational-equilibrium
    prediction ``mean_l theta*_l`` (dashed) over the group's layers that have one (Kosson et al. 2024)."""
    measured = {key[len(ANGLE):] for key in _keys(series, ANGLE) if series[key]}
    predicted = {key[len(PREDICTION):] for key in _keys(series, PREDICTION) if series[key]}
    if groups is None:
        groups = {"all layers": sorted(measured | predicted)}
    lines: list[Line] = []
    without: list[str] = []
    for group, layers in groups.items():
        angle = _mean_line(f"{group}: measured", series, [ANGLE + name for name in layers if name in measured])
        if angle is None:
            continue
        lines.append(angle)
        chosen = [PREDICTION + name for name in layers if name in predicted]
        prediction = _mean_line(f"{group}: equilibrium prediction", series, chosen, dashed=True)
        if prediction is None:
            without.append(group)
        else:
            lines.append(prediction)
    note = ""
    if without:
        note = (
            f"no prediction logged for {', '.join(without)}: no layer labeled scale-invariant"
            " (or a rule without one)"
        )
    return Panel(
        title="angular update per step vs rotational equilibrium (per decayed group)",
        xlabel="step",
        ylabel="angle (rad), mean over the group's layers",
        lines=tuple(lines),
        note=note,
    )


def report_panels(
    series: Series, max_layers: int = 12, groups: Mapping[str, Sequence[str]] | None = None
) -> list[Panel]:
    """The four panels of ``diagnostics.png`` from logged series (``{key: [(step, value), ...]}``):

    * norms: ``weight_norm/<layer>`` of the ``max_layers`` layers with the largest final norm, and
      ``weight_norm/total`` (bold), each as ``|w_t| / max_s |w_s|`` (in ``[0, 1]``, the y axis fitted to the
      lines).
    * decay: ``1 - decay_factor/<group>`` per param group (symlog: 0 for groups without decay).
    * lr: ``LearningRateMonitor``'s ``lr-*`` series.
    * angle: :func:`angle_panel` (``groups``: decayed group -> layer names; None: one line for all layers).
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
    return [norm_panel, decay_panel, lr_panel, angle_panel(series, groups)]


def logged_steps(panels: Sequence[Panel]) -> tuple[int, ...]:
    """The distinct steps the panels' lines were logged at, in order."""
    return tuple(sorted({int(step) for panel in panels for line in panel.lines for step in line.steps}))


def figure_title(panels: Sequence[Panel]) -> str:
    """The picture's title: how many logged steps it shows and which (``12 logged steps (steps 10 to 120)``)."""
    steps = logged_steps(panels)
    if not steps:
        return "diagnostics: nothing logged"
    if len(steps) == 1:
        return f"diagnostics: 1 logged step (step {steps[0]})"
    return f"diagnostics: {len(steps)} logged steps (steps {steps[0]} to {steps[-1]})"
