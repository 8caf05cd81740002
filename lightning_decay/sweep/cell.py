"""One cell of a sweep: its spec, and the fit-and-test run that writes its ``result.json``.

A cell runs in its own process (``python -m lightning_decay.sweep run-cell <cell folder>/spec.json``, started by
:mod:`lightning_decay.sweep.pool`) or in the current one (``lightning-decay sweep cell``, for W&B agents). The
spec is self-locating: config paths in its ``args`` are relative to the sweep's output folder, which is two levels
above the cell folder holding ``spec.json``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_decay.cli import DecayCLI
from lightning_decay.integration.wandb_logger import AutoWandbLogger
from lightning_decay.sweep.grid import Cell, GridSpec
from lightning_decay.sweep.results import RESULT_FILE, finite, portable_path, write_json_atomic
from lightning_decay.sweep.wandb_export import wandb_mode

__all__ = ["CellRecorder", "cell_spec", "run_cell", "total_weight_norm"]


def cell_spec(grid: GridSpec, cell: Cell, fingerprint: str, threads: int | None) -> dict[str, Any]:
    """What a cell process needs (written as ``spec.json``); paths relative to the sweep's output folder."""
    return {
        "cell": cell.id,
        "variant": cell.variant.name,
        "values": cell.axis_values,
        "args": grid.cell_args(cell, config_path=lambda path: portable_path(path, grid.output)),
        "fingerprint": fingerprint,
        "metrics": dict(grid.metrics),
        "test": grid.test,
        "threads": threads,
        "group": grid.name,
        "wandb": None if grid.wandb is None else dict(grid.wandb),
        "parent_pid": os.getpid(),
    }


def total_weight_norm(module: torch.nn.Module) -> float:
    """``sqrt(sum of squares)`` of all trainable parameters of ``module`` (float64 accumulation, one sync)."""
    norms = [torch.linalg.vector_norm(p.detach(), dtype=torch.float64) for p in module.parameters() if p.requires_grad]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms])))


class CellRecorder(Callback):
    """Records the total weight norm per epoch and the training throughput of one cell.

    ``history``: ``{"epoch", "step", "weight_norm"}`` at the start of training (epoch 0) and after every training
    epoch; the norm is also logged as ``sweep/weight_norm``. ``images_per_s``: training images per second of
    training time, excluding validation and the first training step (compilation, warm-up).
    """

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.train_images = 0
        self.train_seconds = 0.0
        self._clock: float | None = None
        self._timing = False
        self._paused = False
        self.validated_step: int | None = None  # the global step of the last validation inside fit

    @staticmethod
    def _sync(pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def _stop_clock(self, pl_module: LightningModule) -> None:
        if self._clock is not None:
            self._sync(pl_module)
            self.train_seconds += time.perf_counter() - self._clock
            self._clock = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.history.append({"epoch": 0, "step": trainer.global_step, "weight_norm": total_weight_norm(pl_module)})

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._timing:  # the first step is excluded: it compiles and warms up
            self._sync(pl_module)
            self._timing = True
            self._clock = time.perf_counter()
            return
        self.train_images += _batch_size(batch)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._paused = self._clock is not None
        self._stop_clock(pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.validated_step = trainer.global_step
        if self._paused:  # validation inside fit: training resumes now
            self._paused = False
            self._sync(pl_module)
            self._clock = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        norm = total_weight_norm(pl_module)
        self.history.append({"epoch": trainer.current_epoch + 1, "step": trainer.global_step, "weight_norm": norm})
        pl_module.log("sweep/weight_norm", norm, on_step=False, on_epoch=True)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop_clock(pl_module)

    @property
    def images_per_s(self) -> float | None:
        """Training throughput, None before two timed steps."""
        return self.train_images / self.train_seconds if self.train_seconds > 0 and self.train_images else None


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = _batch_size(item)
            if size:
                return size
    return 0


def _validation_missed(
    trainer: Trainer, model: LightningModule, datamodule: LightningDataModule | None, recorder: CellRecorder
) -> bool:
    """True when the model validates but its fit ended after its last validation (``max_steps`` mid-epoch, an
    epoch skipped by ``check_val_every_n_epoch``): the cell then validates once more, on the trained model."""
    if not is_overridden("validation_step", model) or not trainer.limit_val_batches:
        return False
    if not (is_overridden("val_dataloader", model) or is_overridden("val_dataloader", datamodule)):
        return False
    return recorder.validated_step != trainer.global_step


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    out = {}
    for name, value in metrics.items():
        try:
            out[name] = finite(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


def _set_parent_death_signal(parent_pid: int | None) -> None:
    """Ask Linux to SIGTERM this process when the sweep process dies (so a killed sweep leaves no orphans)."""
    if parent_pid is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _resolve_args(args: list[str], output: Path) -> list[str]:
    """The spec's arguments with relative ``--config`` paths made relative to the current directory again."""
    resolved = list(args)
    for index in range(len(resolved) - 1):
        if resolved[index] == "--config" and not Path(resolved[index + 1]).is_absolute():
            resolved[index + 1] = str(output / resolved[index + 1])
    return resolved


def run_cell(spec: Mapping[str, Any], folder: str | Path) -> int:
    """Fit and test one cell as described by ``spec`` (:func:`cell_spec`); write ``<folder>/result.json``.

    ``folder`` is the cell's folder (``<output>/cells/<cell id>``). Returns 0 when the cell finished with
    ``status: ok``, 1 on an error, 130 when interrupted.
    """
    started = time.time()
    clock = time.perf_counter()
    _set_parent_death_signal(spec.get("parent_pid"))
    folder = Path(folder).resolve()
    result: dict[str, Any] = {
        "cell": spec["cell"], "variant": spec["variant"], "values": spec["values"], "status": "running",
        "fingerprint": spec["fingerprint"], "args": spec["args"], "host": socket.gethostname(), "pid": os.getpid(),
        "started": started, "metric_names": spec["metrics"],
    }
    threads = spec.get("threads")
    code = 1
    try:
        if threads:
            torch.set_num_threads(int(threads))
        result.update(_fit_and_test(spec, folder))
        code = 0 if result["status"] == "ok" else 1
    except (KeyboardInterrupt, SystemExit) as error:  # Ctrl-C / SIGTERM (Lightning exits after a graceful stop)
        result.update(status="interrupted", error=f"{type(error).__name__}: {error}")
        code = 130
    except Exception as error:
        result.update(status="error", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    result["wall_s"] = time.perf_counter() - clock
    result["finished"] = time.time()
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:  # a multi-device cell: rank 0 writes
        write_json_atomic(folder / RESULT_FILE, result)
    if result.get("traceback"):
        print(result["traceback"], file=sys.stderr)
    return code


def _fit_and_test(spec: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    os.environ.setdefault("WANDB_SILENT", "true")
    args = [*_resolve_args(spec["args"], folder.parent.parent), f"--trainer.default_root_dir={folder}"]
    argv = sys.argv
    sys.argv = argv[:1]  # LightningCLI warns when args and sys.argv are both given
    try:
        cli = DecayCLI(
            LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
            save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False}, args=args, run=False,
        )
    finally:
        sys.argv = argv
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    loggers: list[Any] = [CSVLogger(str(folder), name="logs", version="")]  # logs/metrics.csv, logs/config.yaml
    wandb_logger = None
    if spec.get("wandb") is not None:
        settings = {
            "project": spec["group"], "save_dir": str(folder), "job_type": "sweep-cell",
            "offline": wandb_mode() == "offline", **spec["wandb"], "group": spec["group"], "name": spec["cell"],
            "config": {"variant": spec["variant"], **spec["values"]},
        }
        wandb_logger = AutoWandbLogger(**settings)
        loggers.append(wandb_logger)
    trainer.loggers = loggers
    recorder = CellRecorder()
    trainer.callbacks.append(recorder)
    fit_started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_s = time.perf_counter() - fit_started
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted")
    metrics = _scalar_metrics(trainer.callback_metrics)
    if _validation_missed(trainer, model, datamodule, recorder):  # e.g. max_steps ended the fit mid-epoch
        for validated in trainer.validate(model, datamodule=datamodule, verbose=False):
            metrics.update(_scalar_metrics(validated))
    if spec["test"]:
        for tested in trainer.test(model, datamodule=datamodule, verbose=False):
            metrics.update(_scalar_metrics(tested))
    names = spec["metrics"]
    outcome: dict[str, Any] = {
        "metrics": metrics,
        "accuracy": metrics.get(names["accuracy"]),
        "train_loss": metrics.get(names["train_loss"]),
        "weight_norm": finite(total_weight_norm(model)),
        "norm_history": [{**h, "weight_norm": finite(h["weight_norm"])} for h in recorder.history],
        "images_per_s": recorder.images_per_s,
        "train_s": recorder.train_seconds,
        "fit_s": fit_s,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "status": "ok",
    }
    missing = [name for name in names.values() if name not in metrics]
    if missing:
        outcome.update(
            status="error",
            error=f"metric(s) {', '.join(map(repr, missing))} were not logged; logged: {', '.join(sorted(metrics))}",
        )
    if wandb_logger is not None:
        summary = {f"sweep/{key}": outcome[key] for key in ("accuracy", "train_loss", "weight_norm", "images_per_s")}
        wandb_logger.experiment.summary.update({k: v for k, v in summary.items() if v is not None})
        wandb_logger.experiment.finish()
    return outcome

