"""What the monitors share: the logging cadence, the hooks around the optimizer step, the collection of one
logging step's values, and the choice of layers.

A monitor subclasses :class:`StepMonitor` and implements ``_after_step`` (weights updated), optionally
``_before_step`` (gradients final, weights not yet updated); both run on logging steps only, every
``log_every_n_steps`` optimizer steps (default: the trainer's), at the step number Lightning's own ``self.log``
uses. The values go through every logger of the trainer on global rank 0; non-logging steps cost one integer
comparison.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.optim import Optimizer

from lightning_decay.callbacks.media import epoch_summary_media, wandb_loggers
from lightning_decay.diagnostics.names import clean_parameter_name
from lightning_decay.validation import check_bool, check_int

__all__ = [
    "LayerFilter",
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


class StepMonitor(Callback):
    """Runs ``_before_step`` (grads ready, weights not yet updated) and ``_after_step`` (weights updated) on
    logging steps only, and logs what ``_after_step`` returns through every logger of the trainer.

    With a ``WandbLogger`` (and ``wandb_summary``), the latest per-layer values kept by ``_update_summary`` are
    logged at each epoch end as ``tables/<_summary_name>`` and, for ``_summary_plot_columns``, a bar chart
    ``plots/<_summary_name>``.
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

    # -- setup ---------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        named = [(clean_parameter_name(n), p) for n, p in pl_module.named_parameters() if p.requires_grad]
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._flat_group = flat_shard_group(trainer)
        self._selected = [i for i, (n, p) in enumerate(named) if self._match(n, p)]
        self._setup(trainer, pl_module)

    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Per-monitor setup, after the parameters are known."""

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
        if not (stepped and logging):
            return
        with torch.no_grad():
            metrics = self._after_step(trainer, pl_module)
        self._emit(trainer, metrics)

    def _before_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        """Called on logging steps before each optimizer step (grads final, weights not updated)."""

    def _after_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> StepMetrics:
        """Called on logging steps after the batch's optimizer steps: the values to log."""
        raise NotImplementedError

    # -- output --------------------------------------------------------------------------------------------------
    def _emit(self, trainer: pl.Trainer, metrics: StepMetrics) -> None:
        values = metrics.resolve()
        self.last_metrics = values
        if not trainer.is_global_zero:
            return
        step = logging_step_index(trainer)
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
        loggers = wandb_loggers(trainer)
        if loggers:
            if self.wandb_summary:
                self._update_summary(values)
            extra = self._wandb_step_media(values)
            if extra:
                for logger in loggers:
                    logger.log_metrics(extra, step=step)

    def _update_summary(self, values: Mapping[str, float]) -> None:
        """Keep the latest per-layer values for the epoch-end W&B table."""

    def _wandb_step_media(self, values: Mapping[str, float]) -> dict[str, Any]:
        """W&B-only objects (histograms) to log with a logging step's numbers."""
        return {}

    def _summary_plot_columns(self) -> list[str]:
        """Columns of the epoch-end table drawn as bars (none by default)."""
        return []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
