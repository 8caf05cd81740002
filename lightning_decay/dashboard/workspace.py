"""The saved W&B workspace view: a few sections that show what weight decay does, one panel per key family
(all layers of a family on one chart), instead of W&B's default of one panel per logged key.

Sections (:data:`~lightning_decay.diagnostics.families.SECTIONS`): Training (loss, accuracy, lr, the
``diagnostics.png`` picture), Weight norms, Effective decay, Scale invariance (each family's panel, its multi-line
chart ``charts/<family>`` and the epoch-end tables and bar charts), Sweep (accuracy and weight norm by lr x weight
decay over a sweep's cells: parallel coordinates, two scatter plots, the norm per epoch, the sweep's pictures).

    view = build_workspace("my-team", "lightning-decay", keys=logged_keys)   # keys: only families logged
    spec = stable_spec(view)                                                  # no network
    view.save()                                                               # needs W&B credentials
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from lightning_decay.dashboard.spec import load_workspaces
from lightning_decay.diagnostics.families import (
    BOOKKEEPING_KEYS,
    FAMILIES,
    PANELS,
    SECTIONS,
    Family,
    PanelSpec,
    chart_table_key,
    families_of,
    family_of,
    panel_families,
)

__all__ = [
    "ALL_LAYERS",
    "AXIS_WORDS",
    "DEFAULT_NAME",
    "MAX_LINES",
    "STEP_METRIC",
    "SWEEP_IMAGES",
    "build_workspace",
    "axis_title",
    "chart_panel",
    "family_panel",
    "family_panels",
    "uncovered_keys",
    "workspace_panels",
]

DEFAULT_NAME = "lightning-decay: what weight decay does"
STEP_METRIC = "trainer/global_step"
#: The collapsed section with every line of the per-layer panels, at most :data:`MAX_LINES` a chart.
ALL_LAYERS = "All layers"
#: The most lines a line plot of the view draws for one run (a per-layer panel shows a spread of the layers).
MAX_LINES = 10
#: The x axis title of the line plots.
X_TITLE = "optimizer step"
#: The y axis title of each plotted family, in words (the panel's title may name the keys).
AXIS_WORDS: dict[str, str] = {
    "loss": "loss",
    "accuracy": "accuracy",
    "lr_monitor": "learning rate",
    "weight_norm_total": "total weight norm",
    "weight_norm": "weight norm",
    "weight_norm_module": "weight norm of the module",
    "neuron_norm_min": "smallest neuron norm",
    "neuron_norm_mean": "mean neuron norm",
    "neuron_norm_max": "largest neuron norm",
    "weight_norm_histogram": "weight norms of the layers",
    "lr_group": "learning rate of the step",
    "eta": "schedule multiplier eta",
    "decay_factor": "decay factor of the step",
    "decay_timescale_steps": "decay timescale in steps",
    "decay_timescale_epochs": "decay timescale in epochs",
    "decay_factor_min": "smallest elementwise decay factor",
    "decay_factor_mean": "mean elementwise decay factor",
    "decay_factor_max": "largest elementwise decay factor",
    "decayed_fraction": "share of coordinates decayed",
    "preconditioned_decay": "preconditioned decay, group mean",
    "preconditioned_decay_min": "smallest preconditioned decay",
    "preconditioned_decay_mean": "mean preconditioned decay",
    "preconditioned_decay_max": "largest preconditioned decay",
    "l2_grad_ratio": "L2 term over gradient norm",
    "cos": "cosine of weights and gradient",
    "relative_update": "relative update size",
    "angular_update": "angle of the step in radians",
    "angular_update_equilibrium": "its equilibrium prediction",
    "weight_norm_equilibrium": "equilibrium weight norm",
    "effective_lr": "effective learning rate",
    "invariant": "scale invariant, 1 yes, 0 no",
    "loss_change": "relative loss change when scaled",
    "sweep_weight_norm": "total weight norm at epoch end",
}
#: The pictures the sweep's summary run logs (``lightning-decay sweep`` with W&B on): heatmaps and norm curves.
SWEEP_IMAGES = ("sweep/heatmap_accuracy", "sweep/heatmap_norm", "sweep/norm_curves")
#: What each sweep cell's run holds: its grid values as config, its outcome as summary.
SWEEP_CONFIG = ("variant", "lr", "weight_decay")
SWEEP_SUMMARY = ("sweep/weight_norm", "sweep/accuracy")


def workspace_panels(keys: Iterable[str] | None = None, sweep: bool | None = None) -> list[PanelSpec]:
    """The family panels of the view: all of :data:`~lightning_decay.diagnostics.families.PANELS`, or, given the
    keys a run logged, those with at least one logged family. The Sweep section's panels only for a sweep
    (``sweep``; None: when the keys hold a sweep cell's keys)."""
    logged = None if keys is None else families_of(keys)
    if sweep is None:
        sweep = logged is not None and any(name.startswith("sweep") for name in logged)
    return [
        p for p in PANELS
        if (sweep if p.section == "Sweep" else logged is None or any(name in logged for name in p.families))
    ]


def axis_title(families: Iterable[Family]) -> str:
    """The y axis title of a panel drawing these families, in words (:data:`AXIS_WORDS`)."""
    return " and ".join(dict.fromkeys(AXIS_WORDS.get(f.name, f.name.replace("_", " ")) for f in families))


def _line_plot(reports: Any, title: str, families: list[Family], **what: Any) -> Any:
    return reports.LinePlot(title=title, x=STEP_METRIC, title_x=X_TITLE, title_y=axis_title(families), **what)


def _panel_keys(families: list[Family], keys: Iterable[str]) -> list[str]:
    """The logged keys a panel's line plot draws (its families' patterns, as W&B's ``metric_regex``), sorted with
    numbers as numbers (``layer2`` before ``layer10``)."""
    drawn = {k for k in keys if any(re.search(f.pattern, k) for f in families)}
    return sorted(drawn, key=lambda k: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", k)])


def _line_name(key: str, families: list[Family]) -> str:
    """The layer (or group) a key is a line of: the key without its family's prefix."""
    for family in families:
        if family.prefix and key.startswith(family.prefix):
            return key[len(family.prefix):]
    return key


def _by_line(families: list[Family], drawn: list[str]) -> dict[str, list[str]]:
    """The drawn keys by layer (``total`` first): one layer may have a line per family (angle and prediction)."""
    lines: dict[str, list[str]] = {}
    for key in sorted(drawn, key=lambda k: _line_name(k, families) != "total"):  # stable: drawn's order after
        lines.setdefault(_line_name(key, families), []).append(key)
    return lines


def _spread(lines: dict[str, list[str]]) -> list[str]:
    """At most :data:`MAX_LINES` keys: the total and layers spread evenly over the layers, first and last
    included."""
    fixed = lines.get("total", [])
    layers = [name for name in lines if name != "total"]
    for count in range(min(len(layers), MAX_LINES), 0, -1):
        picked = sorted({round(i * (len(layers) - 1) / max(count - 1, 1)) for i in range(count)})
        keys = fixed + [key for index in picked for key in lines[layers[index]]]
        if len(keys) <= MAX_LINES:
            return keys
    return fixed[:MAX_LINES]


def _chunks(lines: dict[str, list[str]]) -> list[list[str]]:
    """Every key, layer by layer, in charts of at most :data:`MAX_LINES` lines."""
    chunks: list[list[str]] = [[]]
    for keys in lines.values():
        if chunks[-1] and len(chunks[-1]) + len(keys) > MAX_LINES:
            chunks.append([])
        chunks[-1].extend(keys)
    return [chunk for chunk in chunks if chunk]


def family_panels(panel: PanelSpec, reports: Any, keys: Iterable[str] | None = None) -> tuple[list[Any], list[Any]]:
    """The W&B panels of one :class:`PanelSpec`, as ``(in its section, in the All layers section)``: a line plot of
    every key its families match (a one-key family by name, the others by ``metric_regex``), a media browser for
    images, a summary-table panel for tables. Given the logged ``keys``, a line plot that would draw more than
    :data:`MAX_LINES` lines draws a spread of them (the total, the first and last layers, layers between), and the
    All layers section gets every line of the panel's families, :data:`MAX_LINES` a chart."""
    families = panel_families(panel)
    first = families[0]
    if first.kind == "image":
        return [reports.MediaBrowser(title=panel.title, media_keys=[f.key for f in families], gallery_axis="step")], []
    if first.kind == "table":
        return [reports.WeavePanelSummaryTable(table_name=first.key)], []
    if len(families) == 1 and first.key:
        return [_line_plot(reports, panel.title, families, y=[first.key])], []
    regex = "|".join(f.pattern for f in families)
    drawn = [] if keys is None else _panel_keys(families, keys)
    if len(drawn) <= MAX_LINES:
        return [_line_plot(reports, panel.title, families, metric_regex=regex)], []
    lines = _by_line(families, drawn)
    spread = _spread(lines)
    shown = _line_plot(reports, f"{panel.title} ({len(spread)} of {len(drawn)} lines; all: {ALL_LAYERS})", families,
                       y=spread)
    own = [key for key in drawn if family_of(key) in families]  # not weight_norm/total: a panel of its own
    chunks = _chunks(_by_line(families, own))
    more, start = [], 1
    for chunk in chunks:
        title = f"{panel.title} (lines {start}-{start + len(chunk) - 1} of {len(own)})"
        more.append(_line_plot(reports, title, families, y=chunk))
        start += len(chunk)
    return [shown], more


def family_panel(panel: PanelSpec, reports: Any) -> Any:
    """The W&B panel of one :class:`PanelSpec` for any run (:func:`family_panels` without keys)."""
    return family_panels(panel, reports)[0][0]


def chart_panel(family: Family, reports: Any) -> Any:
    """The W&B custom chart of a family's ``charts/<family>`` (``wandb.plot.line_series``: one line per key)."""
    return reports.CustomChart(
        query={"summaryTable": {"tableKey": chart_table_key(family)}},
        chart_name="wandb/lineseries/v0",
        chart_fields={"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"},
        chart_strings={"title": f"{family.title} (all lines, epoch end)", "xname": X_TITLE},
    )


def _chart_fits(family: Family, keys: list[str] | None) -> bool:
    """A family's all-lines chart draws at most :data:`MAX_LINES` lines (unknown keys: a per-group family)."""
    if keys is None:
        return family.shown_as.endswith("<group>")
    return sum(1 for key in keys if family_of(key) is family) <= MAX_LINES


def _sweep_panels(reports: Any) -> list[Any]:
    """Accuracy and norm by lr x weight decay over the sweep cells' runs (config and summary), the norm per epoch,
    and the sweep's pictures."""
    columns = [reports.ParallelCoordinatesPlotColumn(metric=reports.Config(name), log=name != "variant")
               for name in SWEEP_CONFIG]
    columns += [reports.ParallelCoordinatesPlotColumn(metric=reports.SummaryMetric(s)) for s in SWEEP_SUMMARY]
    return [
        reports.ParallelCoordinatesPlot(title="sweep: variant, lr, weight decay -> norm, accuracy", columns=columns),
        reports.ScatterPlot(
            title="sweep: accuracy by lr x weight decay", x=reports.Config("lr"), y=reports.Config("weight_decay"),
            z=reports.SummaryMetric("sweep/accuracy"), log_x=True, log_y=True,
        ),
        reports.ScatterPlot(
            title="sweep: weight norm by lr x weight decay", x=reports.Config("lr"),
            y=reports.Config("weight_decay"), z=reports.SummaryMetric("sweep/weight_norm"), log_x=True, log_y=True,
        ),
        reports.MediaBrowser(
            title="sweep: heatmaps and norm curves", media_keys=list(SWEEP_IMAGES), gallery_axis="run"
        ),
    ]


def build_workspace(
    entity: str,
    project: str,
    name: str = DEFAULT_NAME,
    keys: Iterable[str] | None = None,
    sweep_group: str | None = None,
    plain: bool = False,
) -> Any:
    """The workspace view (a ``wandb_workspaces.workspaces.Workspace``, not saved): sections in the order of
    :data:`SECTIONS` (the Sweep section only for a sweep: ``sweep_group``, or ``keys`` of a sweep cell's run), each
    family panel followed by its family's chart panel, and a collapsed :data:`ALL_LAYERS` section; ``keys`` (what a
    run logged) keeps only the families logged and splits the per-layer panels into charts of at most
    :data:`MAX_LINES` lines; ``sweep_group`` shows only that sweep's runs (W&B run group = the sweep's name).
    The x axis is ``trainer/global_step``; the runs table pins the key figures (the families' summaries).
    ``plain``: without ``wandb-workspaces``, build the view's outline (:class:`~.spec.PlainObject`) instead of
    raising :class:`~.spec.DashboardDependencyError`."""
    for argument, value in (("entity", entity), ("project", project), ("name", name)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{argument} must be a non-empty string, got {value!r}")
    workspaces, reports = load_workspaces(plain=plain)
    keys = None if keys is None else list(keys)
    logged = None if keys is None else families_of(keys)
    sweep = True if sweep_group else None
    panels = workspace_panels(keys, sweep)
    sweep = any(panel.section == "Sweep" for panel in panels)
    order = [section for section in SECTIONS if section != "Sweep"] + [ALL_LAYERS, "Sweep"]
    by_section: dict[str, list[Any]] = {section: [] for section in order}
    for panel in panels:
        shown, more = family_panels(panel, reports, keys)
        by_section[panel.section].extend(shown)
        by_section[ALL_LAYERS].extend(more)
        for family in panel_families(panel):
            if family.chart and (logged is None or family.name in logged):
                where = panel.section if _chart_fits(family, keys) else ALL_LAYERS
                by_section[where].append(chart_panel(family, reports))
    if sweep:
        by_section["Sweep"].extend(_sweep_panels(reports))
    settings = workspaces.SectionPanelSettings(x_axis=STEP_METRIC)
    sections = [
        workspaces.Section(name=section, panels=panels, is_open=section in {"Training", "Weight norms"},
                           panel_settings=settings)
        for section, panels in by_section.items() if panels
    ]
    pinned = ["summary:val/acc", "summary:weight_norm/total.last"] + (["summary:sweep/accuracy"] if sweep else [])
    runset = workspaces.RunsetSettings(
        pinned_columns=pinned, filters=f"Group = '{sweep_group}'" if sweep_group else "",
    )
    view = workspaces.Workspace(
        entity=entity, project=project, name=name, sections=sections,
        settings=workspaces.WorkspaceSettings(x_axis=STEP_METRIC), runset_settings=runset,
    )
    return view


def uncovered_keys(keys: Iterable[str], covering: Iterable[Family] = FAMILIES) -> list[str]:
    """The logged keys no family covers (bookkeeping keys and the charts' own keys aside): what a view would miss."""
    names = {family.name for family in covering}
    missing = []
    for key in keys:
        if key in BOOKKEEPING_KEYS or key.startswith("charts/"):
            continue
        if not (families_of([key]) & names):
            missing.append(key)
    return sorted(missing)
