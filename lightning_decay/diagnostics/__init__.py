"""Diagnostics of weight decay, free of Lightning: the math and readers behind the monitoring callbacks.

Modules: :mod:`~lightning_decay.diagnostics.names` (parameter and param-group names in keys),
:mod:`~lightning_decay.diagnostics.sharded_norms` (norms that are exact across FSDP shards),
:mod:`~lightning_decay.diagnostics.decay` (what a decay rule did in one step),
:mod:`~lightning_decay.diagnostics.equilibrium` (rotation per step, rotational equilibrium),
:mod:`~lightning_decay.diagnostics.scale_freeness` (the scale checks), :mod:`~lightning_decay.diagnostics.metrics_csv`
and :mod:`~lightning_decay.diagnostics.wandb_files` (logged rows read back from a CSVLogger / an offline W&B run),
:mod:`~lightning_decay.diagnostics.report` (what ``TrainingReport``'s picture draws, as numbers).

Depends on :mod:`lightning_decay.optim`; :mod:`lightning_decay.callbacks` builds on it, never the other way.
"""

from lightning_decay.diagnostics.decay import (
    decay_metrics,
    decay_timescale,
    infer_decay_metrics,
    initial_lr,
    scalar_decay_factor,
)
from lightning_decay.diagnostics.equilibrium import (
    EquilibriumPrediction,
    angular_update,
    effective_lr,
    equilibrium_not_derived,
    momentum_factor,
    rotational_equilibrium,
)
from lightning_decay.diagnostics.metrics_csv import read_metrics_csv
from lightning_decay.diagnostics.names import clean_parameter_name, param_group_names
from lightning_decay.diagnostics.report import report_panels
from lightning_decay.diagnostics.scale_freeness import ScaleFreenessReport, check_scale_freeness, scale_check
from lightning_decay.diagnostics.sharded_norms import ShardedTensors, is_sharded
from lightning_decay.diagnostics.wandb_files import find_run_file, iter_records, read_history, wait_until_written

__all__ = [
    "check_scale_freeness",
    "ScaleFreenessReport",
    "scale_check",
    "ShardedTensors",
    "is_sharded",
    "clean_parameter_name",
    "param_group_names",
    "initial_lr",
    "decay_metrics",
    "infer_decay_metrics",
    "scalar_decay_factor",
    "decay_timescale",
    "momentum_factor",
    "EquilibriumPrediction",
    "rotational_equilibrium",
    "equilibrium_not_derived",
    "angular_update",
    "effective_lr",
    "read_metrics_csv",
    "report_panels",
    "read_history",
    "find_run_file",
    "iter_records",
    "wait_until_written",
]
