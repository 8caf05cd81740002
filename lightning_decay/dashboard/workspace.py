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
    panel_families,
)

__all__ = [
    "DEFAULT_NAME",
    "STEP_METRIC",
    "SWEEP_IMAGES",
    "build_workspace",
    "chart_panel",
    "family_panel",
    "uncovered_keys",
    "workspace_panels",
]

DEFAULT_NAME = "lightning-decay: what weight decay does"
STEP_METRIC = "trainer/global_step"
#: The pictures the sweep's summary run logs (``lightning-decay sweep`` with W&B on): heatmaps and norm curves.
SWEEP_IMAGES = ("sweep/heatmap_accuracy", "sweep/heatmap_norm", "sweep/norm_curves")
#: What each sweep cell's run holds: its grid values as config, its outcome as summary.
SWEEP_CONFIG = ("variant", "lr", "weight_decay")
SWEEP_SUMMARY = ("sweep/weight_norm", "sweep/accuracy")


def workspace_panels(keys: Iterable[str] | None = None) -> list[PanelSpec]:
    """The family panels of the view: all of :data:`~lightning_decay.diagnostics.families.PANELS`, or, given the
    keys a run logged, those with at least one logged family (the Sweep section's always)."""
    if keys is None:
        return list(PANELS)
    logged = families_of(keys)
    return [p for p in PANELS if p.section == "Sweep" or any(name in logged for name in p.families)]


def family_panel(panel: PanelSpec, reports: Any) -> Any:
    """The W&B panel of one :class:`PanelSpec`: a line plot of every key its families match (a one-key family by
    name, the others by ``metric_regex``), a media browser for images, a summary-table panel for tables."""
    families = panel_families(panel)
    first = families[0]
    if first.kind == "image":
        return reports.MediaBrowser(title=panel.title, media_keys=[f.key for f in families], gallery_axis="step")
    if first.kind == "table":
        return reports.WeavePanelSummaryTable(table_name=first.key)
    if len(families) == 1 and first.key:
        return reports.LinePlot(title=panel.title, x=STEP_METRIC, y=[first.key])
    regex = "|".join(f.pattern for f in families)
    return reports.LinePlot(title=panel.title, x=STEP_METRIC, metric_regex=regex, title_y=_y_title(families))


def _y_title(families: list[Family]) -> str:
    return "; ".join(f.shown_as for f in families)


def chart_panel(family: Family, reports: Any) -> Any:
    """The W&B custom chart of a family's ``charts/<family>`` (``wandb.plot.line_series``: one line per key)."""
    return reports.CustomChart(
        query={"summaryTable": {"tableKey": chart_table_key(family)}},
        chart_name="wandb/lineseries/v0",
        chart_fields={"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"},
        chart_strings={"title": f"{family.title} (all lines, epoch end)", "xname": STEP_METRIC},
    )


def _sweep_panels(reports: Any) -> list[Any]:
    """Accuracy and norm by lr x weight decay over the sweep cells' runs (config and summary), the norm per epoch,
    and the sweep's pictures."""
    config = [reports.Config(name) for name in SWEEP_CONFIG]
    columns = [reports.ParallelCoordinatesPlotColumn(metric=c, log=c.name != "variant") for c in config]
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
) -> Any:
    """The workspace view (a ``wandb_workspaces.workspaces.Workspace``, not saved): sections in the order of
    :data:`SECTIONS`, each family panel followed by its family's chart panel; ``keys`` (what a run logged) keeps
    only the families logged; ``sweep_group`` shows only that sweep's runs (W&B run group = the sweep's name).
    The x axis is ``trainer/global_step``; the runs table pins the key figures (the families' summaries)."""
    for argument, value in (("entity", entity), ("project", project), ("name", name)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{argument} must be a non-empty string, got {value!r}")
    workspaces, reports = load_workspaces()
    keys = None if keys is None else list(keys)
    logged = None if keys is None else families_of(keys)
    by_section: dict[str, list[Any]] = {section: [] for section in SECTIONS}
    for panel in workspace_panels(keys):
        by_section[panel.section].append(family_panel(panel, reports))
        for family in panel_families(panel):
            if family.chart and (logged is None or family.name in logged):
                by_section[panel.section].append(chart_panel(family, reports))
    by_section["Sweep"].extend(_sweep_panels(reports))
    settings = workspaces.SectionPanelSettings(x_axis=STEP_METRIC)
    sections = [
        workspaces.Section(name=section, panels=panels, is_open=section in {"Training", "Weight norms"},
                           panel_settings=settings)
        for section, panels in by_section.items() if panels
    ]
    pinned = ["summary:val/acc", "summary:weight_norm/total.last", "summary:sweep/accuracy"]
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
