"""Lightning callbacks that show, per layer, what weight decay does to a model while it trains.

* :class:`WeightNormMonitor`: ``|w|`` per parameter (and per module), the total norm, and min/mean/max of the
  per-neuron (row / conv filter) norms.
* :class:`EffectiveDecayMonitor`: per param group the lr ``lr_t``, ``eta_t = lr_t / alpha``, the per-step decay
  factor taken from the optimizer's own rule (:mod:`lightning_decay.optim.rules`) and its timescale
  ``1 / (1 - factor)`` in steps and epochs; AdamP's elementwise factor ``1 / (1 + lr_t wd / D)`` per layer
  (min/mean/max); AdamL2's preconditioned decay ``lr_t wd / D`` and the ratio ``wd |w| / |g|``.
* :class:`ScaleInvarianceMonitor`: ``cos(w, g)``, ``|dw| / |w|``, the angular update per step next to the
  rotational-equilibrium prediction (Kosson et al. 2024), the effective lr, and a periodic numerical test that
  labels each layer scale-invariant (loss on a fixed batch unchanged when the layer's weights are scaled by c).
* :func:`check_scale_freeness`: the blog's scale-freeness test as a tool (run on ``loss`` and on ``c * loss``).

All numbers go through ``trainer.loggers`` (CSV, TensorBoard, W&B, ...) every ``log_every_n_steps`` optimizer
steps (default: the trainer's), at the step Lightning's own ``self.log`` uses, on global rank 0. Per-layer values
are computed as tensors with multi-tensor kernels and moved to the host once per logging step; non-logging steps
cost one integer comparison. Norms of sharded parameters (FSDP) are exact: see :mod:`lightning_decay.diagnostics.sharded_norms`.
Key names and the derivations are in ``docs/monitoring.md``.
"""

from __future__ import annotations

import copy
import math
import re
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_decay.optim.rules import AdamL2Rule as _AdamL2Rule
from lightning_decay.optim.rules import AdamWTorchRule, DecayRule, KernelDecayRule, adam_denominator
from lightning_decay.diagnostics.sharded_norms import ShardedTensors

try:  # the SGD rules arrived later; keep working without them
    from lightning_decay.optim.rules import SGDL2Rule as _SGDL2Rule
except ImportError:  # pragma: no cover
    _SGDL2Rule = None  # type: ignore[assignment,misc]

__all__ = [
    "WeightNormMonitor",
    "EffectiveDecayMonitor",
    "ScaleInvarianceMonitor",
    "check_scale_freeness",
    "ScaleFreenessReport",
    "scale_check",
    "param_group_names",
    "rule_of_optimizer",
    "LayerFilter",
]

#: Which layers (parameters, by cleaned name) get per-layer keys: a regex (``re.search``), several regexes (any
#: matches), a predicate ``(name, parameter) -> bool``, or None (the monitor's default).
LayerFilter = str | Sequence[str] | Callable[[str, Tensor], bool] | None

_WRAPPER_PARTS = re.compile(r"(?:^|(?<=\.))(?:_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")
_TINY = 1e-30


# --------------------------------------------------------------------------------------------------------------
# Names, rules and layer selection
# --------------------------------------------------------------------------------------------------------------


def _clean_name(name: str) -> str:
    """A parameter name without the wrapper parts FSDP1, activation checkpointing and ``torch.compile`` insert."""
    return _WRAPPER_PARTS.sub("", name)


def param_group_names(optimizers: Sequence[Optimizer]) -> list[list[str]]:
    """Names of every param group, matching Lightning's ``LearningRateMonitor``.

    A group's ``"name"`` key, else ``pg<i>`` (1-based), as ``LearningRateMonitor`` names them after ``lr-<Opt>/``.
    With several optimizers the name is prefixed by the optimizer's class, numbered like ``LearningRateMonitor``
    does (``Adam/pg1``, ``Adam-1/pg1``, ...). Unlike ``LearningRateMonitor``, a single unnamed group is still
    ``pg1`` (every key needs a group part) and scheduler-config names are not used.
    """
    seen: defaultdict[type, int] = defaultdict(int)
    names = []
    for optimizer in optimizers:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # LightningOptimizer / DeepSpeed wrappers
        groups = [group.get("name") or f"pg{index + 1}" for index, group in enumerate(optimizer.param_groups)]
        if len(optimizers) > 1:
            seen[type(optimizer)] += 1
            count = seen[type(optimizer)]
            prefix = type(optimizer).__name__ + (f"-{count - 1}" if count > 1 else "")
            groups = [f"{prefix}/{group}" for group in groups]
        names.append(groups)
    return names


def rule_of_optimizer(optimizer: Optimizer, group: Mapping[str, Any] | None = None) -> DecayRule | None:
    """The decay rule an optimizer applies to ``group``, or None when no rule describes it.

    This package's optimizers say so themselves (``optimizer.rule_for(group)``, else ``optimizer.decay_rule``).
    torch's own optimizers are mapped to the rule they implement exactly: ``torch.optim.AdamW`` (and
    ``Adam(decoupled_weight_decay=True)``) is the torch-convention AdamW rule, ``torch.optim.Adam`` the Adam L2 rule,
    ``torch.optim.SGD`` the SGD L2 rule. Anything else gets None: the monitors then log only what needs no rule
    (lr, norms, cosines).
    """
    if group is not None and callable(getattr(optimizer, "rule_for", None)):
        rule = optimizer.rule_for(group)  # type: ignore[attr-defined]
        if isinstance(rule, DecayRule):
            return rule
    rule = getattr(optimizer, "decay_rule", None)
    if isinstance(rule, DecayRule):
        return rule
    if isinstance(optimizer, torch.optim.AdamW):
        return AdamWTorchRule()
    if isinstance(optimizer, torch.optim.Adam):
        decoupled = bool((group or optimizer.defaults).get("decoupled_weight_decay", False))
        return AdamWTorchRule() if decoupled else _AdamL2Rule()
    if isinstance(optimizer, torch.optim.SGD) and _SGDL2Rule is not None:
        return _SGDL2Rule()
    return None


def _scalar_decay_factor(optimizer: Optimizer, group: Mapping[str, Any], rule: DecayRule) -> float | None:
    """This step's decay factor of ``group`` from the optimizer's (or the rule's) own code, as a float.

    None when the factor is elementwise through Adam's denominator (AdamP: see the elementwise keys) or when the rule
    has no multiplicative decay to report (Adam with L2: the preconditioned decay is reported instead). For
    cautious decay this is the factor on the coordinates the mask decays.
    """
    if isinstance(rule, _AdamL2Rule):
        return None
    lr, initial_lr, weight_decay = float(group["lr"]), _initial_lr(optimizer, group), float(group["weight_decay"])
    try:
        if callable(getattr(optimizer, "decay_factor", None)):
            factor = optimizer.decay_factor(group)  # type: ignore[attr-defined]
        elif _SGDL2Rule is not None and isinstance(rule, _SGDL2Rule):
            factor = rule.decay_factor(
                lr, initial_lr, weight_decay, momentum=group.get("momentum", 0.0), dampening=group.get("dampening", 0.0)
            )
        else:
            factor = rule.decay_factor(lr, initial_lr, weight_decay)
    except ValueError:  # needs Adam's denominator
        return None
    return None if isinstance(factor, Tensor) else float(factor)


def _timescale(factor: float) -> float | None:
    """``1 / (1 - factor)`` steps, the EMA timescale of a per-step decay factor (``DecayRule.timescale_steps``'s
    definition, applied to the factor that is logged so the two keys agree); None without decay."""
    shrink = 1.0 - factor
    return 1.0 / shrink if shrink > 0.0 else None


def _initial_lr(optimizer: Optimizer, group: Mapping[str, Any]) -> float:
    """The blog's alpha: the optimizer's own bookkeeping when it has it, else the scheduler's ``initial_lr``."""
    if hasattr(optimizer, "initial_lr"):
        return float(optimizer.initial_lr(group))  # type: ignore[attr-defined]
    return float(group.get("initial_lr", group["lr"]))


def _decoupled(rule: DecayRule | None, lr: float, initial_lr: float, weight_decay: float) -> bool:
    """True for rules whose decay is one scalar factor per step (AdamW both conventions, ProxAdam)."""
    return isinstance(rule, KernelDecayRule) and rule.kernel_settings(lr, initial_lr, weight_decay).decoupled


def _is_l2(rule: DecayRule | None, lr: float, initial_lr: float, weight_decay: float) -> bool:
    """True for rules whose decay enters through the gradient (AdamL2)."""
    return isinstance(rule, KernelDecayRule) and not rule.kernel_settings(lr, initial_lr, weight_decay).decoupled


def _layer_matcher(layers: LayerFilter, default: Callable[[str, Tensor], bool]) -> Callable[[str, Tensor], bool]:
    if layers is None:
        return default
    if callable(layers):
        return layers
    patterns = [re.compile(layers)] if isinstance(layers, str) else [re.compile(p) for p in layers]
    return lambda name, _param: any(p.search(name) for p in patterns)


def _all_layers(_name: str, _param: Tensor) -> bool:
    return True


def _weight_layers(_name: str, param: Tensor) -> bool:
    """Weight matrices and conv filters (``ndim >= 2``): the tensors a normalization layer can make scale-invariant."""
    return param.ndim >= 2


def _flat_shard_group(trainer: pl.Trainer) -> Any:
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


def _wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def _logging_step_index(trainer: pl.Trainer) -> int:
    """The step Lightning's own ``self.log`` values are logged at (optimizer steps completed before this batch)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def _steps_per_epoch(trainer: pl.Trainer) -> float | None:
    """Optimizer steps per training epoch, or None when the epoch length is unknown (iterable data)."""
    batches = trainer.num_training_batches
    if not isinstance(batches, int | float) or not math.isfinite(batches) or batches <= 0:
        return None
    return float(math.ceil(batches / max(1, trainer.accumulate_grad_batches)))


class _Metrics:
    """Keys and values of one logging step; tensor values are moved to the host together, once."""

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._tensors: list[Tensor] = []
        self.floats: dict[str, float] = {}

    def add(self, prefix: str, names: Sequence[str], values: Tensor) -> None:
        """``prefix + name -> values[i]`` for a 1-D tensor of ``len(names)`` values."""
        if not names:
            return
        self._keys.extend(prefix + name for name in names)
        self._tensors.append(values.detach().reshape(-1).double())

    def add_scalar(self, key: str, value: float | Tensor) -> None:
        if isinstance(value, Tensor):
            self.add(key, [""], value)
        else:
            self.floats[key] = float(value)

    def resolve(self) -> dict[str, float]:
        values: list[float] = []
        if self._tensors:
            values = torch.cat([t.to("cpu", non_blocking=False) for t in self._tensors]).tolist()
        metrics = dict(zip(self._keys, values))
        metrics.update(self.floats)
        return metrics


def _bar_image(title: str, layers: Sequence[str], series: Mapping[str, Sequence[float]]) -> Any:
    """A horizontal bar chart (one bar per layer and series) as a ``wandb.Image`` (matplotlib, Agg, no pyplot)."""
    import numpy as np
    import wandb
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 1.2 + 0.22 * max(1, len(layers))), dpi=80)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    height = 0.8 / max(1, len(series))
    positions = np.arange(len(layers))
    for offset, (label, values) in enumerate(series.items()):
        axes.barh(positions + offset * height, [v if math.isfinite(v) else 0.0 for v in values], height, label=label)
    axes.set_yticks(positions + height * (len(series) - 1) / 2, list(layers), fontsize=7)
    axes.invert_yaxis()
    axes.set_title(title)
    axes.legend(fontsize=7)
    figure.tight_layout()
    canvas.draw()
    return wandb.Image(np.asarray(canvas.buffer_rgba())[..., :3].copy(), caption=title)


# --------------------------------------------------------------------------------------------------------------
# The shared step / logging logic
# --------------------------------------------------------------------------------------------------------------


class _StepMonitor(Callback):
    """Runs ``_before_step`` (grads ready, weights not yet updated) and ``_after_step`` (weights updated) on
    logging steps only, and logs what ``_after_step`` returns through every logger of the trainer."""

    _default_layers: Callable[[str, Tensor], bool] = staticmethod(_all_layers)
    #: Prefix of the W&B summary table / plot keys at epoch end.
    _summary_name = "monitor"

    def __init__(
        self, log_every_n_steps: int | None = None, layers: LayerFilter = None, wandb_summary: bool = True
    ) -> None:
        if log_every_n_steps is not None and log_every_n_steps < 0:
            raise ValueError(f"log_every_n_steps must be >= 0 or None, got {log_every_n_steps}")
        self.log_every_n_steps = log_every_n_steps
        self.layers = layers
        self.wandb_summary = wandb_summary
        self._match = _layer_matcher(layers, self._default_layers)
        self._stepped = False
        self._logging = False
        #: The metrics of the latest logging step (on every rank), for programmatic use.
        self.last_metrics: dict[str, float] = {}
        #: layer -> column -> latest value, for the W&B epoch summary.
        self._summary: dict[str, dict[str, float]] = {}

    # -- setup ---------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        named = [(_clean_name(n), p) for n, p in pl_module.named_parameters() if p.requires_grad]
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._flat_group = _flat_shard_group(trainer)
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
        return (_logging_step_index(trainer) + 1) % every == 0

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

    def _after_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> _Metrics:
        raise NotImplementedError

    # -- output --------------------------------------------------------------------------------------------------
    def _emit(self, trainer: pl.Trainer, metrics: _Metrics) -> None:
        values = metrics.resolve()
        self.last_metrics = values
        if not trainer.is_global_zero:
            return
        step = _logging_step_index(trainer)
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
        wandb_loggers = _wandb_loggers(trainer)
        if wandb_loggers:
            if self.wandb_summary:
                self._update_summary(values)
            extra = self._wandb_step_media(values)
            if extra:
                for logger in wandb_loggers:
                    logger.log_metrics(extra, step=step)

    def _update_summary(self, values: Mapping[str, float]) -> None:
        """Keep the latest per-layer values for the epoch-end W&B table."""

    def _wandb_step_media(self, values: Mapping[str, float]) -> dict[str, Any]:
        """W&B-only objects (histograms) to log with a logging step's numbers."""
        return {}

    def _summary_plot_columns(self) -> list[str]:
        return []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.wandb_summary and self._summary and trainer.is_global_zero):
            return
        wandb_loggers = _wandb_loggers(trainer)
        if not wandb_loggers:
            return
        import wandb

        layers = sorted(self._summary)
        columns = sorted({column for row in self._summary.values() for column in row})
        data = [[layer, *[self._summary[layer].get(column) for column in columns]] for layer in layers]
        media: dict[str, Any] = {f"tables/{self._summary_name}": wandb.Table(columns=["layer", *columns], data=data)}
        plot_columns = [c for c in self._summary_plot_columns() if c in columns]
        if plot_columns:
            series = {c: [self._summary[layer].get(c, math.nan) for layer in layers] for c in plot_columns}
            title = f"{self._summary_name} (epoch {trainer.current_epoch})"
            media[f"plots/{self._summary_name}"] = _bar_image(title, layers, series)
        step = _logging_step_index(trainer)
        for logger in wandb_loggers:
            logger.log_metrics(media, step=step)


def _per_layer_summary(
    summary: dict[str, dict[str, float]], values: Mapping[str, float], families: Mapping[str, str]
) -> None:
    """``summary[layer][column] = values[prefix + layer]`` for every ``column -> prefix`` in ``families``."""
    for column, prefix in families.items():
        for key, value in values.items():
            if key.startswith(prefix):
                summary.setdefault(key[len(prefix) :], {})[column] = value


# --------------------------------------------------------------------------------------------------------------
# WeightNormMonitor
# --------------------------------------------------------------------------------------------------------------


class WeightNormMonitor(_StepMonitor):
    """Logs parameter norms every ``log_every_n_steps`` optimizer steps (after the step).

    Keys (``<layer>`` is the parameter name, e.g. ``layer1.0.conv1.weight``):

    * ``weight_norm/<layer>``: ``|w| = sqrt(sum_i w_i^2)``; ``weight_norm/total``: ``sqrt(sum_layers |w|^2)`` over
      all trainable parameters (the filter only selects which per-layer keys appear).
    * ``weight_norm_module/<module>`` (``per_module=True``): ``sqrt`` of the summed squares of the selected
      parameters directly owned by the module.
    * ``neuron_norm_min|mean|max/<layer>`` for weights with ``ndim >= 2``: statistics of the row norms
      ``|w[j, ...]|`` (output neurons of a Linear, filters of a conv).
    * with a ``WandbLogger``: ``histograms/weight_norm`` (the per-layer norms) each logging step and, at epoch
      end, ``tables/weight_norm`` and ``plots/weight_norm``.
    """

    _summary_name = "weight_norm"

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        layers: LayerFilter = None,
        per_module: bool = False,
        neuron_norms: bool = True,
        wandb_histogram: bool = True,
        wandb_summary: bool = True,
    ) -> None:
        super().__init__(log_every_n_steps, layers, wandb_summary)
        self.per_module = per_module
        self.neuron_norms = neuron_norms
        self.wandb_histogram = wandb_histogram

    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tensors = ShardedTensors(self._params, self._flat_group)
        self._selected_names = [self._names[i] for i in self._selected]
        self._selected_index = torch.tensor(self._selected, dtype=torch.long)
        shapes_known = self._flat_group is None
        self._matrices = [i for i in self._selected if shapes_known and self._params[i].ndim >= 2]
        modules = [self._names[i].rpartition(".")[0] or "root" for i in self._selected]
        self._module_names = list(dict.fromkeys(modules))
        self._module_of = torch.tensor([self._module_names.index(m) for m in modules], dtype=torch.long)

    def _after_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> _Metrics:
        metrics = _Metrics()
        squares = self._tensors.squared_norms()
        metrics.add_scalar("weight_norm/total", squares.sum().sqrt())
        selected = squares.index_select(0, self._selected_index.to(squares.device))
        metrics.add("weight_norm/", self._selected_names, selected.sqrt())
        if self.per_module and self._module_names:
            module_squares = selected.new_zeros(len(self._module_names))
            module_squares.index_add_(0, self._module_of.to(selected.device), selected)
            metrics.add("weight_norm_module/", self._module_names, module_squares.sqrt())
        if self.neuron_norms and self._matrices:
            stats = self._tensors.row_norm_stats(self._matrices)
            if stats is not None:
                names = [self._names[i] for i in self._matrices]
                for column, statistic in enumerate(("min", "mean", "max")):
                    metrics.add(f"neuron_norm_{statistic}/", names, stats[:, column])
        return metrics

    def _update_summary(self, values: Mapping[str, float]) -> None:
        families = {"norm": "weight_norm/", "neuron_norm_min": "neuron_norm_min/"}
        families.update({"neuron_norm_mean": "neuron_norm_mean/", "neuron_norm_max": "neuron_norm_max/"})
        _per_layer_summary(self._summary, {k: v for k, v in values.items() if k != "weight_norm/total"}, families)

    def _wandb_step_media(self, values: Mapping[str, float]) -> dict[str, Any]:
        if not self.wandb_histogram:
            return {}
        import wandb

        norms = [values["weight_norm/" + name] for name in self._selected_names]
        norms = [v for v in norms if math.isfinite(v)]
        return {"histograms/weight_norm": wandb.Histogram(norms)} if norms else {}

    def _summary_plot_columns(self) -> list[str]:
        return ["norm"]


# --------------------------------------------------------------------------------------------------------------
# EffectiveDecayMonitor
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _GroupStep:
    """What one param group was stepped with on a logging step (captured before the step: step-interval schedulers
    change ``group["lr"]`` before ``on_train_batch_end``)."""

    optimizer: Optimizer
    group: dict[str, Any]
    name: str
    lr: float
    initial_lr: float
    weight_decay: float
    rule: DecayRule


class EffectiveDecayMonitor(_StepMonitor):
    """Logs, per param group, what the optimizer's decay rule did in the step (values from the rule's own code).

    Keys (``<group>`` as :func:`param_group_names`, matching ``LearningRateMonitor``; ``<layer>`` a parameter name):

    * ``lr/<group>``: ``lr_t`` used in the step; ``eta/<group>``: ``eta_t = lr_t / alpha``.
    * rules with one factor per step — AdamW (both conventions), ProxAdam, AdamC, the SGD variants,
      ``torch.optim.AdamW`` and ``torch.optim.SGD`` (L2 through momentum: its effective factor):
      ``decay_factor/<group>``, whatever the optimizer's ``decay_factor(group)`` (or the rule's) returns — e.g.
      ``1 - lr_t wd``, ``1 - eta_t wd``, ``1 / (1 + eta_t wd)``; for cautious decay the factor on the coordinates
      the mask decays — and ``decay_timescale_steps/<group>`` = ``1 / (1 - factor)``,
      ``decay_timescale_epochs/<group>`` (over optimizer steps per epoch); timescales are omitted without decay.
    * AdamP: ``decay_factor_min|mean|max/<layer>`` of the elementwise ``1 / (1 + lr_t wd / D)`` with D from the
      optimizer state after the step (the D the step used), and ``decay_factor/<group>`` = mean over the group's
      elements.
    * cautious decay: ``decayed_fraction/<group>`` and ``decayed_fraction/<layer>``, the fraction of coordinates
      the mask ``1[u_t * w >= 0]`` decays (from the first moment and the weights after the step).
    * Adam with L2 (AdamL2, ``torch.optim.Adam(weight_decay=...)``): ``preconditioned_decay_min|mean|max/<layer>``
      of ``lr_t wd / D`` and ``preconditioned_decay/<group>`` (mean over the group's elements); every L2 rule:
      ``l2_grad_ratio/<layer>`` = ``wd |w| / |g|``, the size of the L2 term next to the loss gradient.
    * optimizers without a rule (see :func:`rule_of_optimizer`): ``lr/`` and ``eta/`` only.
    """

    _summary_name = "decay"

    def __init__(
        self, log_every_n_steps: int | None = None, layers: LayerFilter = None, wandb_summary: bool = True
    ) -> None:
        super().__init__(log_every_n_steps, layers, wandb_summary)
        self._pending: list[_GroupStep] = []
        self._pending_metrics = _Metrics()

    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._optimizers = [getattr(o, "_optimizer", o) for o in trainer.optimizers]
        self._group_names = param_group_names(self._optimizers)
        self._name_of = {id(self._params[i]): self._names[i] for i in range(len(self._params))}
        self._selected_ids = {id(self._params[i]) for i in self._selected}
        self._group_tensors: dict[tuple[int, int], ShardedTensors] = {}

    def _tensors_of(self, optimizer_index: int, group_index: int, group: dict[str, Any]) -> ShardedTensors:
        key = (optimizer_index, group_index)
        if key not in self._group_tensors:
            self._group_tensors[key] = ShardedTensors(list(group["params"]), self._flat_group)
        return self._group_tensors[key]

    def _before_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        optimizer_index = next((i for i, o in enumerate(self._optimizers) if o is optimizer), None)
        if optimizer_index is None:
            return
        metrics = self._pending_metrics
        steps_per_epoch = _steps_per_epoch(trainer)
        for group_index, group in enumerate(optimizer.param_groups):
            name = self._group_names[optimizer_index][group_index]
            rule = rule_of_optimizer(optimizer, group)
            lr, initial_lr = float(group["lr"]), _initial_lr(optimizer, group)
            weight_decay = float(group.get("weight_decay", 0.0))
            metrics.add_scalar(f"lr/{name}", lr)
            metrics.add_scalar(f"eta/{name}", DecayRule.schedule_multiplier(lr, initial_lr))
            if rule is None:
                continue
            factor = _scalar_decay_factor(optimizer, group, rule)
            if factor is not None:
                metrics.add_scalar(f"decay_factor/{name}", factor)
                timescale = _timescale(factor)
                if timescale is not None:
                    metrics.add_scalar(f"decay_timescale_steps/{name}", timescale)
                    if steps_per_epoch:
                        metrics.add_scalar(f"decay_timescale_epochs/{name}", timescale / steps_per_epoch)
            if weight_decay <= 0:
                continue
            l2 = _is_l2(rule, lr, initial_lr, weight_decay)
            needs_denominator = factor is None and not l2
            masked = callable(getattr(rule, "decay_mask", None))  # cautious decay: the decayed fraction
            if needs_denominator or masked or (l2 and callable(getattr(rule, "preconditioned_decay", None))):
                self._pending.append(_GroupStep(optimizer, group, name, lr, initial_lr, weight_decay, rule))
            if l2:
                self._l2_ratio(metrics, optimizer_index, group_index, group, weight_decay)

    def _l2_ratio(
        self, metrics: _Metrics, optimizer_index: int, group_index: int, group: dict[str, Any], weight_decay: float
    ) -> None:
        """``wd |w| / |g|`` per selected layer: the L2 term next to the loss gradient (before the step)."""
        tensors = self._tensors_of(optimizer_index, group_index, group)
        params = [p for p in tensors.tensors if id(p) in self._selected_ids and p.grad is not None]
        if params:
            sub = ShardedTensors(params, self._flat_group)
            grad_norms = sub.norms(sub.local([p.grad for p in params]))
            ratio = weight_decay * sub.norms() / grad_norms.clamp_min(_TINY)
            metrics.add("l2_grad_ratio/", [self._name_of[id(p)] for p in params], ratio)

    def _after_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> _Metrics:
        metrics, self._pending_metrics = self._pending_metrics, _Metrics()
        pending, self._pending = self._pending, []
        for step in pending:
            optimizer_index = next(i for i, o in enumerate(self._optimizers) if o is step.optimizer)
            group_index = next(i for i, g in enumerate(step.optimizer.param_groups) if g is step.group)
            tensors = self._tensors_of(optimizer_index, group_index, step.group)
            if callable(getattr(step.rule, "decay_mask", None)):
                self._decayed_fraction(metrics, step, tensors)
                continue
            if not _is_l2(step.rule, step.lr, step.initial_lr, step.weight_decay):
                prefix = "decay_factor"  # elementwise through D (AdamP)

                def values(denominator: Tensor, step: _GroupStep = step) -> Tensor:
                    return step.rule.decay_factor(step.lr, step.initial_lr, step.weight_decay, denominator)

            else:  # L2 in Adam: the decay is preconditioned by D
                prefix = "preconditioned_decay"

                def values(denominator: Tensor, step: _GroupStep = step) -> Tensor:
                    return step.rule.preconditioned_decay(  # type: ignore[attr-defined]
                        step.lr, step.weight_decay, denominator
                    )

            self._elementwise(metrics, step, prefix, values, tensors)
        return metrics

    def _decayed_fraction(self, metrics: _Metrics, step: _GroupStep, tensors: ShardedTensors) -> None:
        """Cautious decay: the fraction of coordinates the rule's mask ``1[u_t * w >= 0]`` decays, per selected
        layer and over the group. ``u_t`` has the sign of the first moment after the step (Adam's denominator and
        bias correction are positive); ``w`` is the weight after the step, so the mask differs from the step's only
        where a weight crossed zero."""

        def mask(param: Tensor, param_state: dict[str, Any]) -> Tensor | None:
            if "exp_avg" not in param_state:
                return None
            first_moment, weight = tensors.local([param_state["exp_avg"], param])
            return step.rule.decay_mask(first_moment, weight).to(torch.float32)  # type: ignore[attr-defined]

        self._group_and_layer_stats(metrics, step, tensors, mask, "decayed_fraction/", {"mean": "decayed_fraction/"})

    def _elementwise(
        self,
        metrics: _Metrics,
        step: _GroupStep,
        prefix: str,
        values: Callable[[Tensor], Tensor],
        tensors: ShardedTensors,
    ) -> None:
        """min/mean/max per layer and the group mean of ``values(D)``, D = Adam's denominator after the step."""
        if "betas" not in step.group:  # not an Adam state
            return
        beta2, eps = step.group["betas"][1], step.group["eps"]
        amsgrad = bool(step.group.get("amsgrad", False))

        def value(param: Tensor, param_state: dict[str, Any]) -> Tensor | None:
            if "exp_avg_sq" not in param_state:
                return None
            second_moment = param_state["max_exp_avg_sq"] if amsgrad else param_state["exp_avg_sq"]
            (local_moment, local_step) = tensors.local([second_moment, param_state["step"]])
            step_count = torch.as_tensor(local_step, dtype=torch.float64, device=local_moment.device)
            result = values(adam_denominator(local_moment, (1 - beta2**step_count).sqrt(), eps))
            return result if isinstance(result, Tensor) else None

        layer_keys = {statistic: f"{prefix}_{statistic}/" for statistic in ("min", "mean", "max")}
        self._group_and_layer_stats(metrics, step, tensors, value, f"{prefix}/", layer_keys)

    def _group_and_layer_stats(
        self,
        metrics: _Metrics,
        step: _GroupStep,
        tensors: ShardedTensors,
        local_value: Callable[[Tensor, dict[str, Any]], Tensor | None],
        group_key: str,
        layer_keys: Mapping[str, str],
    ) -> None:
        """An elementwise quantity, ``local_value(param, state)`` (this rank's shard; None to skip the parameter),
        over the group's parameters with optimizer state: the mean over all their elements as ``group_key<group>``
        and, per selected layer, the statistics named in ``layer_keys`` (``min``/``mean``/``max`` -> key prefix)."""
        indices, local_values, numels = [], [], []
        for index, param in enumerate(tensors.tensors):
            param_state = step.optimizer.state.get(param)
            value = local_value(param, param_state) if param_state else None
            if value is not None:
                indices.append(index)
                local_values.append(value)
                numels.append(param.numel())
        if not indices:
            return
        stats = tensors.elementwise_stats(local_values, indices).double()
        counts = stats.new_tensor(numels)
        metrics.add(group_key, [step.name], (stats[:, 1] * counts).sum().reshape(1) / counts.sum())
        chosen = [row for row, index in enumerate(indices) if id(tensors.tensors[index]) in self._selected_ids]
        if chosen:
            names = [self._name_of.get(id(tensors.tensors[indices[row]]), "?") for row in chosen]
            rows = stats.index_select(0, torch.tensor(chosen, dtype=torch.long, device=stats.device))
            for column, statistic in enumerate(("min", "mean", "max")):
                if statistic in layer_keys:
                    metrics.add(layer_keys[statistic], names, rows[:, column])

    def _update_summary(self, values: Mapping[str, float]) -> None:
        """Rows are param groups (lr, eta, factor, timescales) and layers (elementwise statistics, L2 ratio)."""
        families = {
            "lr": "lr/",
            "eta": "eta/",
            "decay_factor": "decay_factor/",
            "decay_timescale_steps": "decay_timescale_steps/",
            "decay_timescale_epochs": "decay_timescale_epochs/",
            "preconditioned_decay": "preconditioned_decay/",
            "decay_factor_mean": "decay_factor_mean/",
            "preconditioned_decay_mean": "preconditioned_decay_mean/",
            "l2_grad_ratio": "l2_grad_ratio/",
            "decayed_fraction": "decayed_fraction/",
        }
        _per_layer_summary(self._summary, values, families)


# --------------------------------------------------------------------------------------------------------------
# ScaleInvarianceMonitor
# --------------------------------------------------------------------------------------------------------------


def _momentum_factor(beta1: float) -> float:
    """``(1 - beta1) / (1 + beta1)``: the variance of an EMA (coefficient beta1) of i.i.d. unit-variance inputs."""
    return (1.0 - beta1) / (1.0 + beta1)


def _equilibrium(
    optimizer: Optimizer, group: Mapping[str, Any], numel: int
) -> tuple[float, float, float, bool]:
    """``(angular update*, |w|*, lr', adam_like)`` of the rotational equilibrium for one layer in ``group``.

    For rules whose step is ``w <- f w - lr' u`` (f, lr' from the rule's own code; u the Adam direction) and a
    scale-invariant layer in the random-walk regime (Kosson et al. 2024, see docs/monitoring.md):
    ``|w|* = lr' sqrt(C / (1 - f^2))``, ``angle* = atan(sqrt(k (1 - f^2)) / f)``, ``k = (1 - beta1) / (1 + beta1)``;
    for torch-convention AdamW this is ``sqrt(lr C / (2 wd))`` and ``sqrt(2 lr wd k)`` to first order in ``lr wd``.
    NaN where not derived (AdamL2, AdamP, no decay, optimizers without Adam's ``betas``). ``adam_like``: the
    group has Adam's ``betas`` (its effective lr is ``lr' / |w|``, else ``lr / |w|^2``).
    """
    rule = rule_of_optimizer(optimizer, group)
    lr = float(group["lr"])
    if rule is None or "betas" not in group:  # not an Adam-family step: the derivation does not apply
        return math.nan, math.nan, lr, False
    initial_lr, weight_decay = _initial_lr(optimizer, group), float(group.get("weight_decay", 0.0))
    if not _decoupled(rule, lr, initial_lr, weight_decay):
        return math.nan, math.nan, lr, True
    assert isinstance(rule, KernelDecayRule)
    kernel_lr = rule.kernel_settings(lr, initial_lr, weight_decay).lr
    if hasattr(optimizer, "decay_factor"):
        factor = float(optimizer.decay_factor(group))  # type: ignore[attr-defined]
    else:
        factor = float(rule.decay_factor(lr, initial_lr, weight_decay))
    shrink = 1.0 - factor * factor
    if shrink <= 0.0 or factor <= 0.0:
        return math.nan, math.nan, kernel_lr, True
    k = _momentum_factor(float(group["betas"][0]))
    angle = math.atan(math.sqrt(k * shrink) / factor)
    norm = kernel_lr * math.sqrt(numel / shrink)
    return angle, norm, kernel_lr, True


def _training_step_loss(pl_module: pl.LightningModule, batch: Any) -> Tensor:
    """The loss ``training_step(batch, 0)`` returns, with its ``self.log`` calls switched off."""

    def no_log(*_args: Any, **_kwargs: Any) -> None:
        return None

    pl_module.log = no_log  # type: ignore[method-assign]
    pl_module.log_dict = no_log  # type: ignore[method-assign]
    try:
        output = pl_module.training_step(batch, 0)
    finally:
        del pl_module.log
        del pl_module.log_dict
    if isinstance(output, Mapping):
        output = output["loss"]
    if not isinstance(output, Tensor):
        raise TypeError(
            "ScaleInvarianceMonitor: training_step did not return a loss tensor; pass loss_fn=(module, batch) -> loss"
        )
    return output


class _NotPortable(Exception):
    """A fixed check batch holds a value ``torch.load(weights_only=True)`` cannot read back."""


#: Leaf types of a fixed check batch that a ``weights_only`` checkpoint holds as they are.
_PORTABLE_LEAVES = (bool, int, float, complex, str, bytes, type(None))


def _portable_batch(value: Any) -> Any:
    """``value`` with every tensor copied to the CPU, for a checkpoint that ``torch.load(weights_only=True)`` reads:
    plain tensors, numbers, strings and None in lists, tuples and dicts. Raises :class:`_NotPortable` for anything
    else (named tuples, dataclasses, tensor subclasses, ...), naming it."""
    kind = type(value)
    if kind is Tensor:
        return value.detach().to("cpu", copy=True)
    if kind in _PORTABLE_LEAVES:
        return value
    if kind in (list, tuple):
        return kind(_portable_batch(v) for v in value)
    if kind in (dict, OrderedDict) and all(type(k) in _PORTABLE_LEAVES for k in value):
        return kind((k, _portable_batch(v)) for k, v in value.items())
    raise _NotPortable(f"{kind.__module__}.{kind.__qualname__}")


def _batch_to_device(value: Any, device: torch.device) -> Any:
    """A batch from :func:`_portable_batch` with its tensors on ``device`` (the same objects where already there)."""
    kind = type(value)
    if kind is Tensor:
        return value.to(device)
    if kind in (list, tuple):
        return kind(_batch_to_device(v, device) for v in value)
    if kind in (dict, OrderedDict):
        return kind((k, _batch_to_device(v, device)) for k, v in value.items())
    return value


class ScaleInvarianceMonitor(_StepMonitor):
    """Per layer: is its loss scale-invariant, and is it in rotational equilibrium?

    Keys (``<layer>``: a parameter name; default layers: weights with ``ndim >= 2``):

    * ``scale_invariance/cos/<layer>``: ``<w, g> / (|w| |g|)`` before the step (0 for a scale-invariant loss:
      ``L(c w) = L(w)`` implies ``<grad L(w), w> = 0``).
    * ``scale_invariance/relative_update/<layer>``: ``|w_{t+1} - w_t| / |w_t|``.
    * ``scale_invariance/angular_update/<layer>``: the angle between ``w_t`` and ``w_{t+1}`` in radians, computed
      stably as ``atan2(sqrt(|w|^2 |d|^2 - <w, d>^2), |w|^2 + <w, d>)``, ``d = w_{t+1} - w_t``.
    * ``scale_invariance/angular_update_equilibrium/<layer>`` and ``scale_invariance/weight_norm_equilibrium/<layer>``:
      the rotational-equilibrium predictions (Kosson et al. 2024) for Adam-family rules with a scalar decay factor
      (AdamW both conventions, ProxAdam, AdamC, ``torch.optim.AdamW``); omitted for AdamL2, AdamP, cautious decay
      and SGD (not derived, see docs/monitoring.md).
    * ``scale_invariance/effective_lr/<layer>``: ``lr' / |w|`` (Adam family: the angle per unit of normalized
      update) or ``lr / |w|^2`` (other optimizers, e.g. SGD); for layers labeled scale-invariant (all monitored
      layers while no check has run or when checks are off).
    * ``scale_invariance/invariant/<layer>`` (1/0) and ``scale_invariance/loss_change/<layer>``
      (``|L(c w) - L(w)| / |L(w)|``) on steps the numerical check runs: on a fixed batch (the first training batch,
      its first ``check_batch_size`` samples), each layer's weights are scaled by ``check_scale`` in turn, the loss
      recomputed (train mode, same RNG seed, buffers such as BatchNorm statistics restored), and the layer labeled
      invariant when the relative change is ``<= check_tolerance``.

    ``check_every_n_steps``: the check runs after the first optimizer step of training (a one-time start-up cost:
    one forward pass per monitored layer on the fixed batch) and then every ``check_every_n_steps`` optimizer steps
    (default 1000; 0: never); its keys are logged with the next logging step. ``loss_fn(module, batch) -> loss``
    defaults to the module's ``training_step`` (its ``self.log`` calls muted, under ``torch.no_grad``: a module
    that updates metrics in ``training_step`` should skip that when grad is off, as ``ImageClassifier`` does);
    pass one for manual optimization. Update metrics assume one optimizer step per batch.

    Resume: the checkpoint holds the fixed batch (tensors on the CPU, moved to the module's device for the next
    check), the labels, when the check last ran and results not yet logged, so a run resumed mid-epoch logs the
    same values as the uninterrupted one. Under DDP the checkpoint is rank 0's: after a resume every rank checks on
    rank 0's batch (rank 0, which logs, continues exactly).
    """

    _default_layers = staticmethod(_weight_layers)
    _summary_name = "scale_invariance"

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        layers: LayerFilter = None,
        check_every_n_steps: int = 1000,
        check_scale: float = 2.0,
        check_tolerance: float = 1e-3,
        check_batch_size: int | None = 16,
        loss_fn: Callable[[pl.LightningModule, Any], Tensor] | None = None,
        wandb_summary: bool = True,
    ) -> None:
        super().__init__(log_every_n_steps, layers, wandb_summary)
        if check_every_n_steps < 0:
            raise ValueError(f"check_every_n_steps must be >= 0, got {check_every_n_steps}")
        if not (check_scale > 0 and check_scale != 1.0):
            raise ValueError(f"check_scale must be > 0 and != 1, got {check_scale}")
        self.check_every_n_steps = check_every_n_steps
        self.check_scale = float(check_scale)
        self.check_tolerance = float(check_tolerance)
        self.check_batch_size = check_batch_size
        self.loss_fn = loss_fn
        self._fixed_batch: Any = None
        #: The fixed batch came from a checkpoint (tensors on the CPU) and is not yet on the module's device.
        self._fixed_batch_on_cpu = False
        self._snapshot: list[Tensor] | None = None
        self._before: dict[str, Tensor] = {}
        #: layer -> (invariant, relative loss change) of the latest check.
        self.labels: dict[str, bool] = {}
        self.loss_changes: dict[str, float] = {}
        self._last_check_step: int | None = None
        self._pending_check: list[tuple[str, list[str], Tensor]] = []
        self._check_off_reason: str | None = None
        self._warned_unportable = False

    @property
    def _checks_enabled(self) -> bool:
        return self.check_every_n_steps != 0

    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = [self._params[i] for i in self._selected]
        self._layer_names = [self._names[i] for i in self._selected]
        self._tensors = ShardedTensors(params, self._flat_group)
        self._numels = [p.numel() for p in params]
        owner: dict[int, tuple[Optimizer, dict[str, Any]]] = {}
        for optimizer in trainer.optimizers:
            optimizer = getattr(optimizer, "_optimizer", optimizer)
            for group in optimizer.param_groups:
                for param in group["params"]:
                    owner[id(param)] = (optimizer, group)
        self._owner = [owner.get(id(p)) for p in params]
        self._check_off_reason = None
        if self._flat_group is not None and self.loss_fn is None and self._checks_enabled:
            # FSDP1 unshards parameters in the wrapped module's forward, which training_step called from here bypasses.
            self._check_off_reason = "FSDP1 (FSDPStrategy) needs loss_fn=(module, batch) -> loss that runs the model"
            rank_zero_warn(f"ScaleInvarianceMonitor: numerical scale check off: {self._check_off_reason}")

    # -- the fixed batch -----------------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._fixed_batch is None and self._checks_enabled:
            size = self.check_batch_size

            def take(value: Any) -> Any:
                if isinstance(value, Tensor):
                    value = value.detach()
                    return (value[:size] if size and value.ndim else value).clone()
                if isinstance(value, Mapping):
                    return type(value)({k: take(v) for k, v in value.items()})  # type: ignore[call-arg]
                if isinstance(value, tuple) and hasattr(value, "_fields"):
                    return type(value)(*[take(v) for v in value])
                if isinstance(value, list | tuple):
                    return type(value)(take(v) for v in value)
                return copy.copy(value)

            self._fixed_batch = take(batch)

    # -- before / after the step -------------------------------------------------------------------------------
    def _before_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        if self._snapshot is not None or not len(self._tensors):  # already taken for this step (several optimizers)
            return
        tensors = self._tensors
        weights = tensors.local()
        grads = tensors.local([p.grad if p.grad is not None else torch.zeros_like(p) for p in tensors.tensors])
        has_grad = torch.tensor([p.grad is not None for p in tensors.tensors])
        weight_norms = tensors.norms(weights)
        grad_norms = tensors.norms(grads)
        cos = tensors.dots(weights, grads) / (weight_norms * grad_norms).clamp_min(_TINY)
        cos = torch.where(has_grad.to(cos.device), cos, torch.full_like(cos, math.nan))
        self._snapshot = [w.detach().clone() for w in weights]
        predictions = [
            _equilibrium(owner[0], owner[1], numel) if owner is not None else (math.nan, math.nan, math.nan, False)
            for owner, numel in zip(self._owner, self._numels)
        ]
        self._before = {
            "cos": cos,
            "weight_norm": weight_norms,
            "angle_eq": torch.tensor([p[0] for p in predictions], dtype=torch.float64),
            "norm_eq": torch.tensor([p[1] for p in predictions], dtype=torch.float64),
            "lr": torch.tensor([p[2] for p in predictions], dtype=torch.float64),
            "adam_like": torch.tensor([p[3] for p in predictions]),
        }

    def _after_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> _Metrics:
        metrics = _Metrics()
        snapshot, before = self._snapshot, self._before
        self._snapshot, self._before = None, {}
        if snapshot is None:
            return metrics
        tensors, names = self._tensors, self._layer_names
        new = tensors.local()
        difference = torch._foreach_sub(new, snapshot)
        old_norm = before["weight_norm"].double()
        difference_norm = tensors.norms(difference).double()
        new_norm = tensors.norms(new).double()
        along = tensors.dots(snapshot, difference).double()
        sine_part = (old_norm.square() * difference_norm.square() - along.square()).clamp_min(0.0).sqrt()
        angle = torch.atan2(sine_part, old_norm.square() + along)
        metrics.add("scale_invariance/cos/", names, before["cos"])
        metrics.add("scale_invariance/relative_update/", names, difference_norm / old_norm.clamp_min(_TINY))
        metrics.add("scale_invariance/angular_update/", names, angle)
        for prefix, names_, values in self._pending_check:  # the latest check's results, if not yet logged
            metrics.add(prefix, names_, values)
        self._pending_check = []
        # Equilibrium predictions and the effective lr concern scale-invariant layers: those the latest check
        # labeled so, or every monitored layer while no check has run (or checks are off).
        invariant = [i for i, name in enumerate(names) if self.labels.get(name, not self.labels)]
        derived = [i for i in invariant if math.isfinite(float(before["angle_eq"][i]))]
        if derived:
            index = torch.tensor(derived, dtype=torch.long)
            chosen = [names[i] for i in derived]
            metrics.add("scale_invariance/angular_update_equilibrium/", chosen, before["angle_eq"][index])
            metrics.add("scale_invariance/weight_norm_equilibrium/", chosen, before["norm_eq"][index])
        effective = [i for i in invariant if self._owner[i] is not None]
        if effective:
            index = torch.tensor(effective, dtype=torch.long)
            norm = new_norm.cpu()[index]
            lr = before["lr"][index]
            adam_like = before["adam_like"][index]
            value = torch.where(adam_like, lr / norm.clamp_min(_TINY), lr / norm.square().clamp_min(_TINY))
            metrics.add("scale_invariance/effective_lr/", [names[i] for i in effective], value)
        return metrics

    # -- the numerical check -------------------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._stepped and self._check_due(trainer):
            with torch.no_grad():
                self._run_check(trainer, pl_module)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _check_due(self, trainer: pl.Trainer) -> bool:
        if not self._checks_enabled or self._fixed_batch is None or not len(self._tensors) or self._check_off_reason:
            return False
        step = _logging_step_index(trainer)
        return self._last_check_step is None or step - self._last_check_step >= self.check_every_n_steps

    def _run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_check_step = _logging_step_index(trainer)
        if self._fixed_batch_on_cpu:  # restored from a checkpoint: to the module's device (once)
            self._fixed_batch = _batch_to_device(self._fixed_batch, pl_module.device)
            self._fixed_batch_on_cpu = False
        changes = scale_check(
            pl_module,
            self._tensors.tensors,
            self.loss_fn or _training_step_loss,
            self._fixed_batch,
            self.check_scale,
        )
        values = changes.tolist()
        self.loss_changes = dict(zip(self._layer_names, values))
        self.labels = {name: value <= self.check_tolerance for name, value in self.loss_changes.items()}
        invariant = torch.tensor([float(self.labels[n]) for n in self._layer_names])
        self._pending_check = [
            ("scale_invariance/loss_change/", self._layer_names, changes),
            ("scale_invariance/invariant/", self._layer_names, invariant),
        ]

    # -- resume / summary ----------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        """Distinct per configuration, so that several instances in one Trainer keep separate checkpoint state."""
        return self._generate_state_key(
            log_every_n_steps=self.log_every_n_steps, layers=repr(self.layers), check_every=self.check_every_n_steps
        )

    def state_dict(self) -> dict[str, Any]:
        """The latest labels, when the check last ran, its results not yet logged, and the fixed check batch (its
        tensors copied to the CPU), so that a resumed run checks on the same batch and logs the same values.

        Everything is plain (tensors, numbers, strings, lists, dicts): ``torch.load(weights_only=True)`` reads it,
        as Lightning's resume does by default. A fixed batch that holds anything else (a named tuple, a dataclass,
        a tensor subclass) is left out with a warning; a run resumed from that checkpoint re-captures its fixed
        batch from the first batch after the resume, as checkpoints without ``fixed_batch`` do."""
        state: dict[str, Any] = {
            "labels": dict(self.labels),
            "loss_changes": dict(self.loss_changes),
            "last_check_step": self._last_check_step,
            "pending_check": [
                [prefix, list(names), values.detach().cpu()] for prefix, names, values in self._pending_check
            ],
        }
        if self._fixed_batch is not None:
            try:
                state["fixed_batch"] = _portable_batch(self._fixed_batch)
            except _NotPortable as error:
                if not self._warned_unportable:
                    self._warned_unportable = True
                    rank_zero_warn(
                        f"ScaleInvarianceMonitor: the fixed check batch holds a {error}, which a weights_only"
                        " checkpoint cannot hold; it is not saved, and a resumed run checks on another batch"
                    )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.labels = dict(state_dict.get("labels", {}))
        self.loss_changes = dict(state_dict.get("loss_changes", {}))
        self._last_check_step = state_dict.get("last_check_step")
        pending = state_dict.get("pending_check", [])
        self._pending_check = [(prefix, list(names), values) for prefix, names, values in pending]
        if "fixed_batch" in state_dict:  # older checkpoints have none: the batch is re-captured
            self._fixed_batch = state_dict["fixed_batch"]
            self._fixed_batch_on_cpu = True

    def _update_summary(self, values: Mapping[str, float]) -> None:
        families = {
            column: f"scale_invariance/{column}/"
            for column in ("cos", "relative_update", "angular_update", "angular_update_equilibrium", "invariant")
        }
        _per_layer_summary(self._summary, values, families)

    def _summary_plot_columns(self) -> list[str]:
        return ["angular_update", "angular_update_equilibrium"]


@torch.no_grad()
def scale_check(
    module: nn.Module,
    params: Sequence[Tensor],
    loss_fn: Callable[[Any, Any], Tensor],
    batch: Any,
    scale: float = 2.0,
    seed: int = 0,
) -> Tensor:
    """``|L(c w_l) - L(w)| / |L(w)|`` for each parameter ``w_l`` of ``params`` scaled alone by ``c = scale``.

    The loss is ``loss_fn(module, batch)`` in the module's current mode with the RNG seeded identically for every
    evaluation; parameters and buffers (e.g. BatchNorm running statistics) are restored exactly afterwards.
    """
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []

    def loss() -> Tensor:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            value = loss_fn(module, batch)
        return value.detach().float().reshape(())

    try:
        base = loss()
        losses = []
        for param in params:
            saved = param.detach().clone()
            param.mul_(scale)
            try:
                losses.append(loss())
            finally:
                param.copy_(saved)
    finally:
        for buffer, saved_buffer in buffers:
            buffer.copy_(saved_buffer)
    if not losses:
        return torch.zeros(0)
    return ((torch.stack(losses) - base).abs() / base.abs().clamp_min(_TINY)).cpu()


# --------------------------------------------------------------------------------------------------------------
# check_scale_freeness
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ScaleFreenessReport:
    """How far the trajectories on ``loss`` and on ``scale * loss`` drifted apart.

    ``difference[t]`` = ``|theta_t - theta'_t| / |theta_t - theta_0|`` after step t+1 (all parameters together,
    relative to how far the unscaled run moved); ``relative_to_weights[t]`` = ``|theta_t - theta'_t| / |theta_t|``;
    ``per_layer`` the final ``difference`` per parameter. ``scale_free`` is ``max(difference) <= tolerance``.
    """

    scale: float
    steps: int
    tolerance: float
    difference: list[float] = field(default_factory=list)
    relative_to_weights: list[float] = field(default_factory=list)
    per_layer: dict[str, float] = field(default_factory=dict)

    @property
    def max_difference(self) -> float:
        return max(self.difference, default=0.0)

    @property
    def scale_free(self) -> bool:
        return self.max_difference <= self.tolerance

    def __str__(self) -> str:
        verdict = "scale-free" if self.scale_free else "NOT scale-free"
        return (
            f"{verdict}: loss x {self.scale:g}, {self.steps} steps, max trajectory difference "
            f"{self.max_difference:.3g} of the distance moved (tolerance {self.tolerance:g})"
        )


def check_scale_freeness(
    model: nn.Module,
    make_optimizer: Callable[[nn.Module], Optimizer],
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Sequence[Any],
    *,
    scale: float = 1024.0,
    steps: int = 5,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> ScaleFreenessReport:
    """The blog's scale-freeness test: train two copies of ``model`` for ``steps`` steps, one on
    ``loss_fn(model, batch)`` and one on ``scale * loss_fn(model, batch)``, and compare the weights.

    A scale-free method (Adam, AdamW, ProxAdam with ``eps -> 0``) gives the same trajectory; AdamL2 and AdamP do
    not (their decay does not scale with the loss). ``make_optimizer(model)`` builds a fresh optimizer (any param
    groups); ``batches`` are cycled. The default scale is a power of two so that scaling is exact in floating
    point and only the method (and ``eps``) can make the runs differ. ``model`` itself is not modified.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not batches:
        raise ValueError("batches is empty")
    runs = []
    for factor in (1.0, float(scale)):
        copy_ = copy.deepcopy(model)
        copy_.train(model.training)
        runs.append((copy_, make_optimizer(copy_), factor))
    names = [_clean_name(n) for n, p in model.named_parameters() if p.requires_grad]
    start = [p.detach().clone() for p in runs[0][0].parameters() if p.requires_grad]
    report = ScaleFreenessReport(scale=float(scale), steps=steps, tolerance=tolerance)
    for step in range(steps):
        batch = batches[step % len(batches)]
        for run_model, optimizer, factor in runs:
            optimizer.zero_grad(set_to_none=True)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + step)
                loss = loss_fn(run_model, batch) * factor
            loss.backward()
            optimizer.step()
        first = [p.detach() for p in runs[0][0].parameters() if p.requires_grad]
        second = [p.detach() for p in runs[1][0].parameters() if p.requires_grad]
        gap = torch.stack(torch._foreach_norm(torch._foreach_sub(first, second), 2, dtype=torch.float64))
        moved = torch.stack(torch._foreach_norm(torch._foreach_sub(first, start), 2, dtype=torch.float64))
        size = torch.stack(torch._foreach_norm(first, 2, dtype=torch.float64))
        total_gap = gap.square().sum().sqrt()
        report.difference.append(float(total_gap / moved.square().sum().sqrt().clamp_min(_TINY)))
        report.relative_to_weights.append(float(total_gap / size.square().sum().sqrt().clamp_min(_TINY)))
        if step == steps - 1:
            report.per_layer = dict(zip(names, (gap / moved.clamp_min(_TINY)).tolist()))
    return report

