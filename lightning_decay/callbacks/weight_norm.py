"""``WeightNormMonitor``: parameter norms per layer, per module and per neuron, after the optimizer step."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_decay.callbacks.base import LayerFilter, StepMetrics, StepMonitor
from lightning_decay.callbacks.media import update_layer_summary
from lightning_decay.diagnostics.sharded_norms import ShardedTensors
from lightning_decay.integration.parameter_names import clean_parameter_name
from lightning_decay.integration.transposed import transposed_weights
from lightning_decay.validation import check_bool

__all__ = ["WeightNormMonitor"]


class WeightNormMonitor(StepMonitor):
    """Logs parameter norms every ``log_every_n_steps`` optimizer steps (after the step).

    Keys (``<layer>`` is the parameter name, e.g. ``layer1.0.conv1.weight``):

    * ``weight_norm/<layer>``: ``|w| = sqrt(sum_i w_i^2)``; ``weight_norm/total``: ``sqrt(sum_layers |w|^2)`` over
      all trainable parameters (the filter only selects which per-layer keys appear).
    * ``weight_norm_module/<module>`` (``per_module=True``): ``sqrt`` of the summed squares of the selected
      parameters directly owned by the module.
    * ``neuron_norm_min|mean|max/<layer>`` for weights with ``ndim >= 2``: statistics of the row norms
      ``|w[j, ...]|`` (output neurons of a Linear, filters of a conv); of the columns ``|w[:, j]|`` for weights
      stored ``in x out`` (transformers' ``Conv1D``, ``decay.groups.transposed``; the model's ``decay_plan`` says
      which, else they are recognised by class).
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
        self.per_module = check_bool("per_module", per_module)
        self.neuron_norms = check_bool("neuron_norms", neuron_norms)
        self.wandb_histogram = check_bool("wandb_histogram", wandb_histogram)

    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tensors = ShardedTensors(self._params, self._flat_group)
        self._selected_names = [self._names[i] for i in self._selected]
        self._selected_index = torch.tensor(self._selected, dtype=torch.long)
        shapes_known = self._flat_group is None
        self._matrices = [i for i in self._selected if shapes_known and self._params[i].ndim >= 2]
        transposed = transposed_names(pl_module)
        self._transposed = [i for i in self._matrices if self._names[i] in transposed]
        modules = [self._names[i].rpartition(".")[0] or "root" for i in self._selected]
        self._module_names = list(dict.fromkeys(modules))
        self._module_of = torch.tensor([self._module_names.index(m) for m in modules], dtype=torch.long)

    def _after_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> StepMetrics:
        metrics = StepMetrics()
        squares = self._tensors.squared_norms()
        metrics.add_scalar("weight_norm/total", squares.sum().sqrt())
        selected = squares.index_select(0, self._selected_index.to(squares.device))
        metrics.add("weight_norm/", self._selected_names, selected.sqrt())
        if self.per_module and self._module_names:
            module_squares = selected.new_zeros(len(self._module_names))
            module_squares.index_add_(0, self._module_of.to(selected.device), selected)
            metrics.add("weight_norm_module/", self._module_names, module_squares.sqrt())
        if self.neuron_norms and self._matrices:
            stats = self._tensors.row_norm_stats(self._matrices, self._transposed)
            if stats is not None:
                names = [self._names[i] for i in self._matrices]
                for column, statistic in enumerate(("min", "mean", "max")):
                    metrics.add(f"neuron_norm_{statistic}/", names, stats[:, column])
        return metrics

    def _update_summary(self, values: Mapping[str, float]) -> None:
        families = {"norm": "weight_norm/", "neuron_norm_min": "neuron_norm_min/"}
        families.update({"neuron_norm_mean": "neuron_norm_mean/", "neuron_norm_max": "neuron_norm_max/"})
        update_layer_summary(self._summary, {k: v for k, v in values.items() if k != "weight_norm/total"}, families)

    def _wandb_step_media(self, values: Mapping[str, float]) -> dict[str, Any]:
        if not self.wandb_histogram:
            return {}
        import wandb

        norms = [values["weight_norm/" + name] for name in self._selected_names]
        norms = [v for v in norms if math.isfinite(v)]
        return {"histograms/weight_norm": wandb.Histogram(norms)} if norms else {}

    def _summary_plot_columns(self) -> list[str]:
        return ["norm"]


def transposed_names(module: pl.LightningModule) -> set[str]:
    """The (cleaned) names of ``module``'s weights stored ``in x out``: its ``decay_plan``'s (DecayMixin), else
    the layers recognised by class."""
    plan = getattr(module, "decay_plan", None)
    names = plan.transposed if plan is not None else transposed_weights(module)
    return {clean_parameter_name(name) for name in names}
