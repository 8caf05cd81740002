"""``EffectiveDecayMonitor``: per param group, what the optimizer's decay rule did in the step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_decay.callbacks.base import LayerFilter, StepMetrics, StepMonitor, steps_per_epoch, warn_once
from lightning_decay.callbacks.media import update_layer_summary
from lightning_decay.diagnostics.decay import (
    decay_mask,
    decay_metrics,
    decay_timescale,
    decays_through_gradient,
    elementwise_decay_factor,
    initial_lr,
    l2_gradient_ratio,
    preconditioned_decay,
    scalar_decay_factor,
    step_denominator,
)
from lightning_decay.diagnostics.names import param_group_names
from lightning_decay.diagnostics.sharded_norms import ShardedTensors
from lightning_decay.optim.registry import rule_of
from lightning_decay.optim.rules import DecayRule

__all__ = ["EffectiveDecayMonitor"]

#: The decay metrics computed from the optimizer state after the step (the others before it).
_AFTER_STEP = ("elementwise_factor", "preconditioned_decay", "decayed_fraction")


@dataclass
class _GroupStep:
    """What one param group was stepped with on a logging step (captured before the step: step-interval schedulers
    change ``group["lr"]`` before ``on_train_batch_end``) and which of its metrics wait for the state after it."""

    optimizer: Optimizer
    group: dict[str, Any]
    name: str
    lr: float
    initial_lr: float
    weight_decay: float
    rule: DecayRule
    metrics: tuple[str, ...]


class EffectiveDecayMonitor(StepMonitor):
    """Logs, per param group, what the optimizer's decay rule did in the step (values from the rule's own code).

    Which decay keys a group gets is its rule's record in the variant registry,
    ``REGISTRY[rule.name].decay_metrics`` (:func:`lightning_decay.diagnostics.decay.decay_metrics`; a rule outside
    the registry: inferred from its properties); the rule comes from
    :func:`lightning_decay.optim.registry.rule_of`. Keys (``<group>`` as
    :func:`~lightning_decay.diagnostics.names.param_group_names`, matching ``LearningRateMonitor``; ``<layer>`` a
    parameter name):

    * always: ``lr/<group>``, ``lr_t`` used in the step; ``eta/<group>``, ``eta_t = lr_t / alpha``.
    * ``decay_factor`` (AdamW both conventions, ProxAdam, AdamC, cautious decay, the SGD variants,
      ``torch.optim.AdamW`` and ``torch.optim.SGD``): ``decay_factor/<group>``, whatever the optimizer's
      ``decay_factor(group)`` (or the rule's) returns — e.g. ``1 - lr_t wd``, ``1 - eta_t wd``, ``1 / (1 + eta_t wd)``;
      SGD-L2's effective ``1 - lr_t wd / (1 - mu)``; cautious decay's factor on the coordinates the mask decays —
      and ``decay_timescale_steps/<group>`` = ``1 / (1 - factor)``, ``decay_timescale_epochs/<group>`` (over
      optimizer steps per epoch); timescales are omitted without decay.
    * ``elementwise_factor`` (AdamP): ``decay_factor_min|mean|max/<layer>`` of ``1 / (1 + lr_t wd / D)`` with D
      from the optimizer state after the step (the D the step used), and ``decay_factor/<group>``, the mean over
      the group's elements.
    * ``decayed_fraction`` (cautious decay): ``decayed_fraction/<group>`` and ``decayed_fraction/<layer>``, the
      fraction of coordinates the mask ``1[u_t * w >= 0]`` decays (from the first moment and the weights after the
      step).
    * ``preconditioned_decay`` (Adam with L2: AdamL2, ``torch.optim.Adam(weight_decay=...)``):
      ``preconditioned_decay_min|mean|max/<layer>`` of ``lr_t wd / D`` and ``preconditioned_decay/<group>`` (mean
      over the group's elements).
    * ``l2_grad_ratio`` (L2 rules, Adam and SGD): ``l2_grad_ratio/<layer>`` = ``wd |w| / |g|``, the size of the L2
      term next to the loss gradient (before the step).
    * optimizers without a rule: ``lr/`` and ``eta/`` only.

    Groups with ``weight_decay == 0`` get ``lr/``, ``eta/`` and ``decay_factor/`` (1) only. With a ``WandbLogger``:
    ``tables/effective_decay`` at each epoch end. An optimizer with weight decay but no rule gets a warning (once
    per fit) saying its decay is not reported.
    """

    _summary_name = "effective_decay"

    def __init__(
        self, log_every_n_steps: int | None = None, layers: LayerFilter = None, wandb_summary: bool = True
    ) -> None:
        super().__init__(log_every_n_steps, layers, wandb_summary)
        self._pending: list[_GroupStep] = []
        self._pending_metrics = StepMetrics()

    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._optimizers = [getattr(o, "_optimizer", o) for o in trainer.optimizers]
        self._group_names = param_group_names(self._optimizers)
        self._name_of = {id(self._params[i]): self._names[i] for i in range(len(self._params))}
        self._selected_ids = {id(self._params[i]) for i in self._selected}
        self._group_tensors: dict[tuple[int, int], ShardedTensors] = {}
        unknown = [
            name
            for optimizer, names in zip(self._optimizers, self._group_names)
            for group, name in zip(optimizer.param_groups, names)
            if rule_of(optimizer, group) is None and float(group.get("weight_decay", 0.0) or 0.0) > 0
        ]
        if unknown:
            classes = sorted({type(o).__name__ for o in self._optimizers if rule_of(o, o.param_groups[0]) is None})
            warn_once(
                f"EffectiveDecayMonitor: {', '.join(classes)} has no decay rule"
                " (lightning_decay.optim.registry.rule_of), so its weight decay is not reported: only lr/ and eta/"
                f" are logged for the groups {', '.join(unknown)}; decay_factor/ and the timescales need a"
                " registered variant (lightning_decay.optim.REGISTRY) or torch's Adam, AdamW or SGD"
            )

    def _tensors_of(self, optimizer_index: int, group_index: int, group: dict[str, Any]) -> ShardedTensors:
        key = (optimizer_index, group_index)
        if key not in self._group_tensors:
            self._group_tensors[key] = ShardedTensors(list(group["params"]), self._flat_group)
        return self._group_tensors[key]

    # -- before the step: lr, eta, the scalar factor, the L2 ratio ---------------------------------------------------
    def _before_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        optimizer_index = next((i for i, o in enumerate(self._optimizers) if o is optimizer), None)
        if optimizer_index is None:
            return
        metrics = self._pending_metrics
        epoch_steps = steps_per_epoch(trainer)
        for group_index, group in enumerate(optimizer.param_groups):
            name = self._group_names[optimizer_index][group_index]
            rule = rule_of(optimizer, group)
            lr, alpha = float(group["lr"]), initial_lr(optimizer, group)
            weight_decay = float(group.get("weight_decay", 0.0))
            metrics.add_scalar(f"lr/{name}", lr)
            metrics.add_scalar(f"eta/{name}", DecayRule.schedule_multiplier(lr, alpha))
            if rule is None:
                continue
            planned = decay_metrics(rule)
            if "decay_factor" in planned:
                self._scalar_factor(metrics, name, scalar_decay_factor(optimizer, group, rule), epoch_steps)
            if weight_decay <= 0:
                continue
            if "l2_grad_ratio" in planned and decays_through_gradient(rule):
                self._l2_ratio(metrics, optimizer_index, group_index, group, weight_decay)
            after = tuple(metric for metric in planned if metric in _AFTER_STEP)
            if after:
                self._pending.append(_GroupStep(optimizer, group, name, lr, alpha, weight_decay, rule, after))

    @staticmethod
    def _scalar_factor(metrics: StepMetrics, name: str, factor: float | None, epoch_steps: float | None) -> None:
        """``decay_factor/<group>`` and its timescales ``1 / (1 - factor)`` in steps and epochs."""
        if factor is None:
            return
        metrics.add_scalar(f"decay_factor/{name}", factor)
        timescale = decay_timescale(factor)
        if timescale is not None:
            metrics.add_scalar(f"decay_timescale_steps/{name}", timescale)
            if epoch_steps:
                metrics.add_scalar(f"decay_timescale_epochs/{name}", timescale / epoch_steps)

    def _l2_ratio(
        self, metrics: StepMetrics, optimizer_index: int, group_index: int, group: dict[str, Any], weight_decay: float
    ) -> None:
        """``wd |w| / |g|`` per selected layer: the L2 term next to the loss gradient (before the step)."""
        tensors = self._tensors_of(optimizer_index, group_index, group)
        params = [p for p in tensors.tensors if id(p) in self._selected_ids and p.grad is not None]
        if params:
            selected = ShardedTensors(params, self._flat_group)
            grad_norms = selected.norms(selected.local([p.grad for p in params]))
            ratio = l2_gradient_ratio(weight_decay, selected.norms(), grad_norms)
            metrics.add("l2_grad_ratio/", [self._name_of[id(p)] for p in params], ratio)

    # -- after the step: elementwise quantities from the optimizer state ------------------------------------------
    def _after_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> StepMetrics:
        metrics, self._pending_metrics = self._pending_metrics, StepMetrics()
        pending, self._pending = self._pending, []
        for step in pending:
            optimizer_index = next(i for i, o in enumerate(self._optimizers) if o is step.optimizer)
            group_index = next(i for i, g in enumerate(step.optimizer.param_groups) if g is step.group)
            tensors = self._tensors_of(optimizer_index, group_index, step.group)
            if "decayed_fraction" in step.metrics:
                self._decayed_fraction(metrics, step, tensors)
            if "elementwise_factor" in step.metrics:

                def factor(denominator: Tensor, step: _GroupStep = step) -> Tensor | None:
                    return elementwise_decay_factor(
                        step.rule, step.lr, step.initial_lr, step.weight_decay, denominator
                    )

                self._denominator_stats(metrics, step, tensors, "decay_factor", factor)
            if "preconditioned_decay" in step.metrics:

                def decay(denominator: Tensor, step: _GroupStep = step) -> Tensor | None:
                    return preconditioned_decay(step.rule, step.lr, step.weight_decay, denominator)

                self._denominator_stats(metrics, step, tensors, "preconditioned_decay", decay)
        return metrics

    def _decayed_fraction(self, metrics: StepMetrics, step: _GroupStep, tensors: ShardedTensors) -> None:
        """Cautious decay: the fraction of coordinates the rule's mask ``1[u_t * w >= 0]`` decays, per selected
        layer and over the group. ``u_t`` has the sign of the first moment after the step; ``w`` is the weight
        after the step, so the mask differs from the step's only where a weight crossed zero."""

        def mask(param: Tensor, param_state: dict[str, Any]) -> Tensor | None:
            if "decay_mask" in param_state:  # a step that keeps its own mask (Muon's cautious decay)
                return tensors.local([param_state["decay_mask"]])[0].to(torch.float32)
            if "exp_avg" not in param_state:
                return None
            first_moment, weight = tensors.local([param_state["exp_avg"], param])
            return decay_mask(step.rule, first_moment, weight)

        self._group_and_layer_stats(metrics, step, tensors, mask, "decayed_fraction/", {"mean": "decayed_fraction/"})

    def _denominator_stats(
        self,
        metrics: StepMetrics,
        step: _GroupStep,
        tensors: ShardedTensors,
        prefix: str,
        values: Callable[[Tensor], Tensor | None],
    ) -> None:
        """min/mean/max per layer (``<prefix>_min|mean|max/<layer>``) and the group mean (``<prefix>/<group>``) of
        ``values(D)``, D = Adam's denominator after the step."""
        if "betas" not in step.group:  # not an Adam state
            return
        beta2, eps = step.group["betas"][1], step.group["eps"]
        amsgrad = bool(step.group.get("amsgrad", False))

        def value(param: Tensor, param_state: dict[str, Any]) -> Tensor | None:
            if "exp_avg_sq" not in param_state:
                return None
            second_moment = param_state["max_exp_avg_sq"] if amsgrad else param_state["exp_avg_sq"]
            local_moment, local_step = tensors.local([second_moment, param_state["step"]])
            return values(step_denominator(local_moment, local_step, beta2, eps))

        layer_keys = {statistic: f"{prefix}_{statistic}/" for statistic in ("min", "mean", "max")}
        self._group_and_layer_stats(metrics, step, tensors, value, f"{prefix}/", layer_keys)

    def _group_and_layer_stats(
        self,
        metrics: StepMetrics,
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
        update_layer_summary(self._summary, values, families)
