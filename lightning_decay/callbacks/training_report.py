"""``TrainingReport``: at the end of ``fit``, a PNG of per-layer weight norms and effective decay factors.

It reads what the monitoring callbacks logged to the run's ``CSVLogger`` (``weight_norm/<layer>`` and
``decay_factor/<group>`` keys, and ``LearningRateMonitor``'s ``lr-*``), draws them against the step, writes
``diagnostics.png`` next to ``metrics.csv`` and prints where the logs and the picture are.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from lightning_decay.diagnostics.metrics_csv import Series, read_metrics_csv
from lightning_decay.validation import check_int

__all__ = ["TrainingReport", "plot_diagnostics"]


def plot_diagnostics(series: Series, path: str | Path, max_layers: int = 12) -> Path:
    """Three panels against the step: per-layer weight norms ``|w_t| / |w_0|`` (relative to the first logged value;
    the ``max_layers`` largest), the per-step decay ``1 - factor`` per param group, and the lr. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def keys(prefix: str) -> list[str]:
        return sorted(k for k in series if k.startswith(prefix) and "/" not in k[len(prefix) :])

    norms = [k for k in keys("weight_norm/") if k != "weight_norm/total"]
    norms = sorted(norms, key=lambda k: -series[k][-1][1])[:max_layers]
    factors = keys("decay_factor/")
    rates = sorted(k for k in series if k.startswith("lr-"))
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for key in norms + (["weight_norm/total"] if "weight_norm/total" in series else []):
        steps, values = zip(*series[key])
        relative = [v / values[0] if values[0] else float("nan") for v in values]
        axes[0].plot(steps, relative, label=key.removeprefix("weight_norm/"), lw=2.5 if key.endswith("total") else 1.2)
    axes[0].set(
        title=f"weight norm / first logged value (largest {len(norms)} layers)", xlabel="step", ylabel="|w_t| / |w_0|"
    )
    for key in factors:
        steps, values = zip(*series[key])
        axes[1].plot(steps, [1.0 - v for v in values], label=key.removeprefix("decay_factor/"))
    axes[1].set(title="per-step decay 1 - factor (per param group)", xlabel="step", yscale="symlog")
    axes[1].set_yscale("symlog", linthresh=1e-8)
    for key in rates:
        steps, values = zip(*series[key])
        axes[2].plot(steps, values, label=key)
    axes[2].set(title="learning rate", xlabel="step")
    for axis in axes:
        if axis.lines:
            axis.legend(fontsize=7, loc="best")
        else:
            axis.text(0.5, 0.5, "nothing logged", ha="center", transform=axis.transAxes)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


class TrainingReport(Callback):
    """After ``fit``: write ``filename`` (a PNG, :func:`plot_diagnostics`) beside the CSV logs, log it to W&B when
    a ``WandbLogger`` is present, and print where logs and picture are (and the final ``val/acc``)."""

    def __init__(self, filename: str = "diagnostics.png", max_layers: int = 12) -> None:
        if not isinstance(filename, str):
            raise TypeError(f"filename must be a string, got {type(filename).__name__} {filename!r}")
        if not filename.endswith(".png"):
            raise ValueError(f"filename must end with .png, got {filename!r}")
        self.filename = filename
        self.max_layers = check_int("max_layers", max_layers, low=1)
        self.path: Path | None = None

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
            rank_zero_warn(f"TrainingReport: {metrics} does not exist; no picture written")
            return
        series = read_metrics_csv(metrics)
        self.path = plot_diagnostics(series, Path(logger.log_dir) / self.filename, self.max_layers)
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
