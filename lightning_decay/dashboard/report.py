"""A W&B report for a finished ``lightning-decay sweep``: the blog's question, the heatmaps, the decoupling table
and the norm curves, built from the sweep's output folder (no network until it is saved).

The report reads the runs the sweep logged with W&B on (``wandb:`` in the grid, or ``--wandb``): the cells' runs
(group = the sweep's name, job type ``sweep-cell``, config ``variant`` and the grid's axes, summary
``sweep/accuracy``, ``sweep/weight_norm``, history ``sweep/weight_norm`` per epoch) and the sweep's summary run
(job type ``sweep-summary``, the pictures ``sweep/heatmap_accuracy``, ``sweep/heatmap_norm``,
``sweep/norm_curves``). The decoupling table is the sweep's ``decoupling.md``, copied into the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_decay.dashboard.spec import load_workspaces
from lightning_decay.dashboard.workspace import STEP_METRIC, SWEEP_IMAGES

__all__ = ["QUESTION", "SweepInfo", "build_report", "read_sweep"]

#: The blog's question, as the report's first paragraph.
QUESTION = (
    "Decay No More (ICLR 2023 blog track) asks whether Adam's weight decay is decoupled from the learning rate: "
    "with AdamW the best learning rate should not move when the weight decay changes (a rectangular region of "
    "good cells in the lr x weight-decay heatmap), with Adam + L2 it should; and whether the scale-free variants "
    "(AdamW, ProxAdam) end with other weight norms than AdamP. The heatmaps below show accuracy and final weight "
    "norm per cell, the table measures the decoupling (best lr per weight decay, its shift across the grid, the "
    "good region's rectangularity), and the curves show how the norms evolve."
)


@dataclass(frozen=True)
class SweepInfo:
    """What the report needs from a finished sweep's output folder."""

    name: str
    variants: tuple[str, ...]
    x: str
    y: str
    accuracy_metric: str
    decoupling_markdown: str
    entity: str | None
    project: str


def read_sweep(folder: str | Path) -> SweepInfo:
    """A finished sweep's name (the W&B group), variants, plotted axes, accuracy metric and decoupling table, from
    its ``cells/*/spec.json``, ``decoupling.json`` and ``decoupling.md``; ``ValueError`` naming ``folder`` when it
    is not a finished sweep."""
    folder = Path(folder)
    specs = sorted(folder.glob("cells/*/spec.json"))
    missing = [name for name in ("decoupling.json", "decoupling.md") if not (folder / name).is_file()]
    if not specs or missing:
        what = "no cells/*/spec.json" if not specs else f"no {' or '.join(missing)}"
        raise ValueError(
            f"folder {str(folder)!r} is not a finished lightning-decay sweep ({what}); pass the sweep's output folder"
            " after its pictures were drawn (lightning-decay sweep --config GRID [--plot-only])"
        )
    cells = [json.loads(path.read_text()) for path in specs]
    first = cells[0]
    decoupling = json.loads((folder / "decoupling.json").read_text())
    wandb = first.get("wandb") or {}
    return SweepInfo(
        name=str(first["group"]),
        variants=tuple(dict.fromkeys(str(cell["variant"]) for cell in cells)),
        x=str(decoupling["x"]),
        y=str(decoupling["y"]),
        accuracy_metric=str(first.get("metrics", {}).get("accuracy", "accuracy")),
        decoupling_markdown=(folder / "decoupling.md").read_text(),
        entity=wandb.get("entity"),
        project=str(wandb.get("project") or first["group"]),
    )


def _runset(reports: Any, group: str, job_type: str, name: str) -> Any:
    """The sweep's runs of one job type. No entity / project: the run set reads the report's project (and building
    it needs no network: a run set naming a project asks the W&B server for the project's id)."""
    return reports.Runset(name=name, filters=f"Group = '{group}' and JobType = '{job_type}'")


def build_report(
    folder: str | Path,
    entity: str | None = None,
    project: str | None = None,
    title: str | None = None,
    plain: bool = False,
) -> Any:
    """The report (a ``wandb_workspaces.reports.v2.Report``, not saved) for the finished sweep in ``folder``.
    ``entity`` / ``project`` default to the sweep's W&B settings (the grid's ``wandb:``; project: the sweep's
    name); an entity is needed (W&B would otherwise ask its server for the default one). ``plain``: without
    ``wandb-workspaces``, build the report's outline instead of raising (the dry run)."""
    sweep = read_sweep(folder)
    entity = entity or sweep.entity
    if not entity:
        raise ValueError(
            "entity: the sweep's W&B settings name no entity; pass --entity (your W&B user or team name)"
        )
    project = project or sweep.project
    _, reports = load_workspaces(plain=plain)
    cells = _runset(reports, sweep.name, "sweep-cell", f"{sweep.name}: cells")
    pictures = _runset(reports, sweep.name, "sweep-summary", f"{sweep.name}: pictures")
    x, y = reports.Config(sweep.x), reports.Config(sweep.y)
    accuracy, norm = reports.SummaryMetric("sweep/accuracy"), reports.SummaryMetric("sweep/weight_norm")
    heatmaps = reports.PanelGrid(
        runsets=[cells],
        panels=[
            reports.ScatterPlot(title=f"accuracy ({sweep.accuracy_metric}) by {sweep.x} x {sweep.y}", x=x, y=y,
                                z=accuracy, log_x=True, log_y=True),
            reports.ScatterPlot(title=f"final weight norm by {sweep.x} x {sweep.y}", x=x, y=y, z=norm, log_x=True,
                                log_y=True),
            reports.ParallelCoordinatesPlot(
                title="variant, lr, weight decay -> norm, accuracy",
                columns=[reports.ParallelCoordinatesPlotColumn(metric=reports.Config("variant")),
                         reports.ParallelCoordinatesPlotColumn(metric=x, log=True),
                         reports.ParallelCoordinatesPlotColumn(metric=y, log=True),
                         reports.ParallelCoordinatesPlotColumn(metric=norm),
                         reports.ParallelCoordinatesPlotColumn(metric=accuracy)],
            ),
        ],
    )
    drawn = reports.PanelGrid(
        runsets=[pictures],
        panels=[reports.MediaBrowser(title="the sweep's heatmaps", media_keys=list(SWEEP_IMAGES[:2]),
                                     gallery_axis="run")],
    )
    curves = reports.PanelGrid(
        runsets=[cells],
        panels=[
            reports.LinePlot(title="total weight norm per epoch", x=STEP_METRIC, y=["sweep/weight_norm"],
                             groupby=reports.Config("variant")),
            reports.MediaBrowser(title="norm curves (the sweep's picture)", media_keys=[SWEEP_IMAGES[2]]),
        ],
    )
    curves.runsets.append(pictures)
    table = sweep.decoupling_markdown.split("\n", 1)[1].strip() if sweep.decoupling_markdown.startswith("#") else (
        sweep.decoupling_markdown.strip()
    )
    blocks = [
        reports.H1(text=f"{sweep.name}: is weight decay decoupled from the learning rate?"),
        reports.P(text=QUESTION),
        reports.P(text=f"Variants: {', '.join(sweep.variants)}; axes {sweep.x} x {sweep.y}; accuracy: "
                       f"{sweep.accuracy_metric}. Written by lightning-decay dashboard --report."),
        reports.H2(text="Heatmaps"),
        heatmaps,
        drawn,
        reports.H2(text="Decoupling"),
        reports.MarkdownBlock(text=table),
        reports.H2(text="Weight norms"),
        curves,
    ]
    return reports.Report(
        entity=entity, project=project, title=title or f"{sweep.name}: lr x weight decay", blocks=blocks,
        description=f"lightning-decay sweep {sweep.name}",
    )
