"""``TrainingReport``: at the end of ``fit``, a PNG of per-layer weight norms, effective decay factors, the lr and
the angular update next to its rotational-equilibrium prediction.

It reads what the monitoring callbacks logged to the run's ``CSVLogger`` (``weight_norm/<layer>``,
``decay_factor/<group>``, ``scale_invariance/angular_update[_equilibrium]/<layer>`` keys, and
``LearningRateMonitor``'s ``lr-*``), draws them against the step
(:func:`~lightning_decay.diagnostics.report.report_panels` computes what each panel shows), writes
``diagnostics.png`` next to ``metrics.csv`` and prints where the logs and the picture are. Documented in
``docs/monitoring.md`` ("TrainingReport").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from lightning_decay.diagnostics.metrics_csv import Series, read_metrics_csv
from lightning_decay.diagnostics.names import clean_parameter_name, param_group_names
from lightning_decay.diagnostics.report import Panel, figure_title, report_panels
from lightning_decay.validation import check_int

__all__ = ["TrainingReport", "decayed_groups", "draw_panels", "plot_diagnostics", "render_panels"]


def plot_diagnostics(
    series: Series, path: str | Path, max_layers: int = 12, groups: dict[str, list[str]] | None = None
) -> Path:
    """Four panels against the step (:func:`~lightning_decay.diagnostics.report.report_panels`): per-layer weight
    norms relative to each layer's maximum, ``|w_t| / max |w|`` (the ``max_layers`` largest and the total; first
    and last ``|w|`` in the legend), the per-step decay ``1 - factor`` per param group, the lr, and per decayed
    group (``groups``: name -> layer names; None: all layers) the angular update next to its rotational-equilibrium
    prediction. Returns ``path``."""
    return draw_panels(report_panels(series, max_layers, groups), path)


def decayed_groups(pl_module: pl.LightningModule, optimizers: list) -> dict[str, list[str]]:
    """The param groups with ``weight_decay > 0`` of the optimizers, as ``group name -> layer names`` (names as the
    monitors' keys write them: ``<group>`` as ``LearningRateMonitor``, ``<layer>`` the cleaned parameter name)."""
    optimizers = [getattr(o, "_optimizer", o) for o in optimizers]
    names = {id(p): clean_parameter_name(n) for n, p in pl_module.named_parameters()}
    groups: dict[str, list[str]] = {}
    for optimizer, group_names in zip(optimizers, param_group_names(optimizers)):
        for group, name in zip(optimizer.param_groups, group_names):
            if float(group.get("weight_decay", 0.0) or 0.0) > 0:
                groups[name] = [names[id(p)] for p in group["params"] if id(p) in names]
    return groups


def render_panels(panels: list[Panel]) -> Any:
    """The figure of :func:`draw_panels` (a matplotlib ``Figure``, not saved): titled with the number of logged
    steps it shows (:func:`~lightning_decay.diagnostics.report.figure_title`), a marker at each point of a line
    with few points (:attr:`~lightning_decay.diagnostics.report.Line.marked`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = 2 if len(panels) == 4 else len(panels)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(8.5 * columns if columns <= 2 else 17, 4.8 * rows))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis, panel in zip(axes.flat, panels):
        for line in panel.lines:
            axis.plot(line.steps, line.values, label=line.label, lw=2.5 if line.bold else 1.2,
                      ls="--" if line.dashed else "-", marker="o" if line.marked else None, ms=4)
        axis.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        if panel.yscale == "symlog":
            axis.set_yscale("symlog", linthresh=1e-8)
        if panel.ylim is not None:
            axis.set_ylim(*panel.ylim)
        if axis.lines:
            axis.legend(fontsize=7, loc="best")
        else:
            axis.text(0.5, 0.5, "nothing logged", ha="center", transform=axis.transAxes)
        if panel.note:
            axis.text(0.01, 0.01, panel.note, fontsize=7, ha="left", va="bottom", transform=axis.transAxes, wrap=True)
    figure.suptitle(figure_title(panels))
    figure.tight_layout()
    return figure


def draw_panels(panels: list[Panel], path: str | Path) -> Path:
    """Draw :class:`~lightning_decay.diagnostics.report.Panel` s into a PNG at ``path`` (side by side; four as a
    2 x 2 grid; :func:`render_panels`), its title also in the PNG's ``Title`` metadata."""
    figure = render_panels(panels)
    path = Path(path)
    figure.savefig(path, dpi=110, metadata={"Title": figure_title(panels)})
    return path


class TrainingReport(Callback):
    """After ``fit``: write ``filename`` (a PNG, :func:`plot_diagnostics`) beside the CSV logs, log it to W&B when
    a ``WandbLogger`` is present (key ``diagnostics``), and print where logs and picture are (and the final
    ``val/acc``). Needs a ``CSVLogger``; draws what ``WeightNormMonitor``, ``EffectiveDecayMonitor``,
    ``LearningRateMonitor`` and ``ScaleInvarianceMonitor`` logged (a panel whose keys are missing says "nothing
    logged"; the angle panel has one measured and one predicted line per decayed param group).

    ``filename``: the PNG's name (in the CSVLogger's ``log_dir``); ``max_layers``: how many layers the norm panel
    draws (those with the largest final norm), besides the total. After the fit, ``path`` is the PNG and ``panels``
    the numbers it shows (:func:`~lightning_decay.diagnostics.report.report_panels`)."""

    def __init__(self, filename: str = "diagnostics.png", max_layers: int = 12) -> None:
        if not isinstance(filename, str):
            raise TypeError(f"filename must be a string, got {type(filename).__name__} {filename!r}")
        if not filename.endswith(".png"):
            raise ValueError(f"filename must end with .png, got {filename!r}")
        self.filename = filename
        self.max_layers = check_int("max_layers", max_layers, low=1)
        #: The PNG written by the latest fit, and the panels it shows (the numbers drawn).
        self.path: Path | None = None
        self.panels: list[Panel] | None = None

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        csv_loggers = [logger for logger in trainer.loggers if isinstance(logger, CSVLogger)]
        if not csv_loggers:
            rank_zero_warn("TrainingReport needs a CSVLogger among the trainer's loggers; no picture written")
            return
        logger = csv_loggers[0]
        logger.save()
        metrics = Path(logger.log_dir) / "metrics.csv"
        if not metrics.exists():
            rank_zero_warn(
                f"TrainingReport: nothing was logged ({metrics} was never written: the fit ran"
                f" {trainer.global_step} optimizer steps, Trainer(log_every_n_steps={trainer.log_every_n_steps}));"
                " no picture written"
            )
            return
        groups = decayed_groups(pl_module, list(trainer.optimizers)) or None
        self.panels = report_panels(read_metrics_csv(metrics), self.max_layers, groups)
        self.path = draw_panels(self.panels, Path(logger.log_dir) / self.filename)
        lines = [f"metrics (CSV): {metrics}", f"diagnostics plot: {self.path}"]
        for wandb_logger in (lg for lg in trainer.loggers if isinstance(lg, WandbLogger)):
            run = wandb_logger.experiment
            mode = "offline" if getattr(run.settings, "_offline", False) or run.offline else "online"
            lines.append(f"W&B run ({mode}): {run.dir}")
            try:
                import wandb

                wandb_logger.experiment.log({"diagnostics": wandb.Image(str(self.path))})
            except Exception as error:  # an image upload must never fail the fit
                rank_zero_warn(f"TrainingReport: could not log the picture to W&B ({error})")
        accuracy = trainer.callback_metrics.get("val/acc")
        if accuracy is not None and math.isfinite(float(accuracy)):
            lines.insert(0, f"final val/acc: {float(accuracy):.4f}")
        print("\n".join(lines), flush=True)
