"""What the monitors share: the logging cadence, the hooks around the optimizer step, the collection of one
logging step's values, and the choice of layers.

A monitor subclasses :class:`StepMonitor` and implements ``_after_step`` (weights updated), optionally
``_before_step`` (gradients final, weights not yet updated); both run on logging steps only, every
``log_every_n_steps`` optimizer steps (default: the trainer's), at the step number Lightning's own ``self.log``
uses. The values of all monitors of a fit for one step go through every logger of the trainer on global rank 0 in
one ``log_metrics`` call: the monitors share one row per step, their one shared source
(:class:`~lightning_decay.callbacks.step_row.MonitorsOfFit`), whatever their order in the callback list;
non-logging steps cost one integer comparison.

What a monitor will not log, it says once per fit (a :class:`MonitorWarning`): a fit too short for its interval,
a trainer without loggers, a ``layers=`` filter that matches nothing (and, per monitor, the checks it runs).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer

from lightning_decay.callbacks.media import epoch_summary_media, wandb_loggers
from lightning_decay.callbacks.step_row import MonitorsOfFit
from lightning_decay.diagnostics.names import clean_parameter_name
from lightning_decay.validation import check_bool, check_int

__all__ = [
    "LayerFilter",
    "MonitorWarning",
    "StepMetrics",
    "StepMonitor",
    "all_layers",
    "weight_layers",
    "layer_matcher",
    "flat_shard_group",
    "logging_step_index",
    "steps_per_epoch",
]

#: Which layers (parameters, by cleaned name) get per-layer keys: a regex (``re.search``), several regexes (any
#: matches), a predicate ``(name, parameter) -> bool``, or None (the monitor's default).
LayerFilter = str | Sequence[str] | Callable[[str, Tensor], bool] | None


def all_layers(_name: str, _param: Tensor) -> bool:
    """Every trainable parameter."""
    return True


def weight_layers(_name: str, param: Tensor) -> bool:
    """Weight matrices and conv filters (``ndim >= 2``): the tensors a normalization layer can make scale-invariant."""
    return param.ndim >= 2


def layer_matcher(layers: LayerFilter, default: Callable[[str, Tensor], bool]) -> Callable[[str, Tensor], bool]:
    """``layers`` as a predicate ``(name, parameter) -> bool`` (``default`` when None)."""
    if layers is None:
        return default
    if callable(layers):
        return layers
    patterns = [re.compile(layers)] if isinstance(layers, str) else [re.compile(p) for p in layers]
    return lambda name, _param: any(p.search(name) for p in patterns)


def flat_shard_group(trainer: pl.Trainer) -> Any:
    """The sharding process group of FSDP1 (Lightning's ``FSDPStrategy``), whose parameters are flat local slices;
    None for every other strategy (DTensor parameters of FSDP2 carry their own mesh)."""
    try:
        from lightning.pytorch.strategies import FSDPStrategy
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    for module in trainer.strategy.model.modules():
        if isinstance(module, FullyShardedDataParallel):
            if module.sharding_strategy == ShardingStrategy.NO_SHARD:
                return None
            return module.process_group
    return None


def logging_step_index(trainer: pl.Trainer) -> int:
    """The step Lightning's own ``self.log`` values are logged at (optimizer steps completed before this batch)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def steps_per_epoch(trainer: pl.Trainer) -> float | None:
    """Optimizer steps per training epoch, ``ceil(batches / accumulate_grad_batches)``, or None when the epoch
    length is unknown (iterable data)."""
    batches = trainer.num_training_batches
    if not isinstance(batches, int | float) or not math.isfinite(batches) or batches <= 0:
        return None
    return float(math.ceil(batches / max(1, trainer.accumulate_grad_batches)))


class MonitorWarning(UserWarning):
    """What a monitor does not log, and why (issued once per cause per fit, on global rank 0)."""


def warn_once(message: str) -> None:
    """A :class:`MonitorWarning` on global rank 0."""
    rank_zero_warn(message, category=MonitorWarning, stacklevel=5)  # the monitor's line


def _monitor_names(monitors: Sequence[Callback]) -> str:
    return ", ".join(dict.fromkeys(type(monitor).__name__ for monitor in monitors))


class StepMetrics:
    """Keys and values of one logging step; tensor values are moved to the host together, once."""

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._tensors: list[Tensor] = []
        self.floats: dict[str, float] = {}

    def add(self, prefix: str, names: Sequence[str], values: Tensor) -> None:
        """``prefix + names[i] -> values[i]`` for a 1-D tensor of ``len(names)`` values."""
        if not names:
            return
        self._keys.extend(prefix + name for name in names)
        self._tensors.append(values.detach().reshape(-1).double())

    def add_scalar(self, key: str, value: float | Tensor) -> None:
        """``key -> value`` (a tensor value waits for the one transfer of :meth:`resolve`)."""
        if isinstance(value, Tensor):
            self.add(key, [""], value)
        else:
            self.floats[key] = float(value)

    def resolve(self) -> dict[str, float]:
        """Every key with its value as a float (one device-to-host copy for all tensor values)."""
        values: list[float] = []
        if self._tensors:
            values = torch.cat([t.to("cpu", non_blocking=False) for t in self._tensors]).tolist()
        metrics = dict(zip(self._keys, values))
        metrics.update(self.floats)
        return metrics


def _step_monitors(trainer: pl.Trainer) -> list[StepMonitor]:
    return [callback for callback in trainer.callbacks if isinstance(callback, StepMonitor)]


class StepMonitor(Callback):
    """Runs ``_before_step`` (grads ready, weights not yet updated) and ``_after_step`` (weights updated) on
    logging steps only, and logs what ``_after_step`` returns through every logger of the trainer: the values of
    all monitors of the fit for one step in one ``log_metrics`` call (:class:`MonitorsOfFit`).

    With a ``WandbLogger`` (and ``wandb_summary``), the latest per-layer values kept by ``_update_summary`` are
    logged at each epoch end as ``tables/<_summary_name>`` and, for ``_summary_plot_columns``, a bar chart
    ``plots/<_summary_name>``. Each key gets its family's ``define_metric`` (step metric, run summary) before its
    first row, and one multi-line chart per key family (``charts/<family>``) is logged at each epoch end and at
    the end of the fit (:mod:`~lightning_decay.callbacks.media`).
    """

    _default_layers: Callable[[str, Tensor], bool] = staticmethod(all_layers)
    #: Prefix of the W&B summary table / plot keys at epoch end.
    _summary_name = "monitor"

    def __init__(
        self, log_every_n_steps: int | None = None, layers: LayerFilter = None, wandb_summary: bool = True
    ) -> None:
        if log_every_n_steps is not None:
            log_every_n_steps = check_int("log_every_n_steps", log_every_n_steps, low=0)
        self.log_every_n_steps = log_every_n_steps
        self.layers = layers
        self.wandb_summary = check_bool("wandb_summary", wandb_summary)
        self._match = layer_matcher(layers, self._default_layers)
        self._stepped = False
        self._logging = False
        #: The metrics of the latest logging step (on every rank), for programmatic use.
        self.last_metrics: dict[str, float] = {}
        #: layer -> column -> latest value, for the W&B epoch summary.
        self._summary: dict[str, dict[str, float]] = {}
        #: The fit's monitors and their shared row (joined at the fit's start).
        self._fit = MonitorsOfFit(1)
        #: Logging steps of the current fit, and whether the cadence warning named this monitor.
        self._logged_steps = 0
        self._cadence_warned = False
        self._start_step = 0

    # -- setup ---------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        named = [(clean_parameter_name(n), p) for n, p in pl_module.named_parameters() if p.requires_grad]
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._flat_group = flat_shard_group(trainer)
        self._selected = [i for i, (n, p) in enumerate(named) if self._match(n, p)]
        self._start_step = logging_step_index(trainer)
        self._logged_steps = 0
        self._cadence_warned = False
        self._fit = MonitorsOfFit.join(trainer, self, len(_step_monitors(trainer)))
        if self._fit.complete:  # the last monitor to join speaks for all of them
            self._warn_cadence(trainer, self._fit.members)
        if not self._selected:
            self._warn_no_layers(trainer)
        self._setup(trainer, pl_module)

    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Per-monitor setup, after the parameters are known."""

    # -- what is not logged ------------------------------------------------------------------------------------
    def _warn_no_layers(self, trainer: pl.Trainer) -> None:
        """No layer selected: warn when ``layers=`` was given (the default selection of a monitor that needs
        layers warns in the subclass)."""
        if self.layers is None or not self._names:
            return
        warn_once(
            f"{type(self).__name__}: layers={self.layers!r} matches none of the {len(self._names)} trainable"
            f" parameters (names such as {', '.join(self._names[:3])}), so no per-layer keys are logged;"
            " change layers= (a regex searched in the parameter names)"
        )

    def _interval_setting(self) -> str:
        """Where this monitor's interval comes from, as a setting to change."""
        if self.log_every_n_steps is None:
            return "Trainer(log_every_n_steps=...) or the monitor's log_every_n_steps"
        return f"{type(self).__name__}(log_every_n_steps=...)"

    def _logs_when_due(self, trainer: pl.Trainer) -> bool:
        """Logging is on (an interval > 0, not a ``fast_dev_run``): a fit in which it logs nothing deserves a word."""
        return self._interval(trainer) > 0 and not getattr(trainer, "fast_dev_run", False)

    def _warn_cadence(self, trainer: pl.Trainer, monitors: Sequence[StepMonitor]) -> None:
        """Once per fit, for all monitors of the trainer: nothing will be logged because the trainer has no logger,
        or because no step of this fit is a logging step of the monitor's interval."""
        active = [m for m in monitors if m._logs_when_due(trainer)]
        if not active:
            return
        if not trainer.loggers:
            for monitor in active:
                monitor._cadence_warned = True
            warn_once(
                f"{_monitor_names(active)}: the trainer has no logger (Trainer(logger=False)), so nothing is logged;"
                " give the Trainer a logger (e.g. CSVLogger) to record the monitors' values"
            )
            return
        try:
            total = trainer.estimated_stepping_batches
        except Exception:  # an epoch length Lightning cannot estimate: judged at the end of the fit instead
            return
        if not isinstance(total, int | float) or not math.isfinite(total):
            return
        total, start = int(total), self._start_step
        by_interval: dict[tuple[int, str], list[StepMonitor]] = {}
        for monitor in active:
            every = monitor._interval(trainer)
            if total // every <= start // every:  # no (step + 1) % every == 0 for step in [start, total)
                by_interval.setdefault((every, monitor._interval_setting()), []).append(monitor)
        for (every, setting), silent in by_interval.items():
            for monitor in silent:
                monitor._cadence_warned = True
            span = f"the run's {total} optimizer steps" if start == 0 else (
                f"the {total - start} optimizer steps left in this fit (steps {start + 1}-{total})"
            )
            first = (start // every + 1) * every
            warn_once(
                f"{_monitor_names(silent)}: nothing will be logged: log_every_n_steps={every} > {span} (the first"
                f" logging step would be optimizer step {first}); set {setting} to at most {max(1, total - start)}"
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._fit.end(trainer, self, logging_step_index(trainer)):
            return  # the last monitor to end speaks for all of them
        monitors = self._fit.members
        done = logging_step_index(trainer) - self._start_step
        silent = [
            m for m in monitors
            if m._logs_when_due(trainer) and trainer.loggers and not m._logged_steps and not m._cadence_warned
        ]
        by_interval: dict[tuple[int, str], list[StepMonitor]] = {}
        for monitor in silent:
            by_interval.setdefault((monitor._interval(trainer), monitor._interval_setting()), []).append(monitor)
        for (every, setting), quiet in by_interval.items():
            if done <= 0:
                continue
            warn_once(
                f"{_monitor_names(quiet)}: logged nothing in this fit: log_every_n_steps={every} > the {done}"
                f" optimizer steps the fit ran before it stopped; set {setting} to at most {done}"
            )

    # -- cadence -------------------------------------------------------------------------------------------------
    def _interval(self, trainer: pl.Trainer) -> int:
        return trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps

    def _is_logging_step(self, trainer: pl.Trainer) -> bool:
        """Same cadence as Lightning's own logging: ``(steps done + 1) % every == 0``."""
        every = self._interval(trainer)
        if every <= 0 or not trainer.loggers:
            return False
        return (logging_step_index(trainer) + 1) % every == 0

    # -- hooks ---------------------------------------------------------------------------------------------------
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if not self._stepped:  # first optimizer step of this batch
            self._stepped = True
            self._logging = self._is_logging_step(trainer)
        if self._logging:
            with torch.no_grad():
                self._before_step(trainer, pl_module, getattr(optimizer, "_optimizer", optimizer))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stepped, logging = self._stepped, self._logging
        self._stepped = self._logging = False
        if stepped and logging:
            with torch.no_grad():
                metrics = self._after_step(trainer, pl_module)
            self._emit(trainer, metrics)
        self._fit.batch_done(trainer, self)

    def _before_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        """Called on logging steps before each optimizer step (grads final, weights not updated)."""

    def _after_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> StepMetrics:
        """Called on logging steps after the batch's optimizer steps: the values to log."""
        raise NotImplementedError

    # -- output --------------------------------------------------------------------------------------------------
    def _emit(self, trainer: pl.Trainer, metrics: StepMetrics) -> None:
        """Add this step's values to the fit's shared row (written once every monitor has finished the batch)."""
        values = metrics.resolve()
        self.last_metrics = values
        self._logged_steps += 1
        if not trainer.is_global_zero:
            return
        media: dict[str, Any] = {}
        if wandb_loggers(trainer):
            if self.wandb_summary:
                self._update_summary(values)
            media = self._wandb_step_media(values)
        self._fit.row.add(trainer, logging_step_index(trainer), values, media)

    def _update_summary(self, values: Mapping[str, float]) -> None:
        """Keep the latest per-layer values for the epoch-end W&B table."""

    def _wandb_step_media(self, values: Mapping[str, float]) -> dict[str, Any]:
        """W&B-only objects (histograms) to log with a logging step's numbers."""
        return {}

    def _summary_plot_columns(self) -> list[str]:
        """Columns of the epoch-end table drawn as bars (none by default)."""
        return []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit.epoch_done(trainer, logging_step_index(trainer))  # every batch of the epoch is written
        if not (self.wandb_summary and self._summary and trainer.is_global_zero):
            return
        loggers = wandb_loggers(trainer)
        if not loggers:
            return
        media = epoch_summary_media(
            self._summary_name, self._summary, self._summary_plot_columns(), trainer.current_epoch
        )
        step = logging_step_index(trainer)
        for logger in loggers:
            logger.log_metrics(media, step=step)
