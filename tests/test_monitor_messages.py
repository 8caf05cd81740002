"""What the monitors do not log, they say (once per cause per fit), and what they log for one step is one row.

Real tiny Trainer runs (:class:`tests.test_callbacks.Net`: Linear -> LayerNorm -> ReLU -> Linear head); warnings
are recorded with ``warnings.catch_warnings`` and the rows read from the CSVLogger's ``metrics.csv`` as written.
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from lightning_decay.callbacks import (
    EffectiveDecayMonitor,
    MonitorWarning,
    ScaleInvarianceMonitor,
    TrainingReport,
    WeightNormMonitor,
)
from tests.test_callbacks import BATCH, STEPS, Net, classification_data

MONITOR_PREFIXES = (
    "weight_norm", "neuron_norm", "lr/", "eta/", "decay_factor", "decay_timescale", "scale_invariance/",
)


def fit_recording(
    tmp_path: Path,
    module: pl.LightningModule,
    callbacks: list[Callback],
    steps: int = STEPS,
    logger: Any = None,
    **options: Any,
) -> tuple[pl.Trainer, list[str]]:
    """A one-epoch fit of ``steps`` batches; returns the trainer and the MonitorWarning messages, in order."""
    settings: dict[str, Any] = dict(
        max_epochs=1, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    settings.update(options)
    trainer = pl.Trainer(
        logger=CSVLogger(tmp_path, name="csv") if logger is None else logger, callbacks=callbacks, **settings
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, DataLoader(classification_data(BATCH * steps), batch_size=BATCH))
    return trainer, [str(w.message) for w in caught if issubclass(w.category, MonitorWarning)]


def monitors(**kwargs: Any) -> list[Callback]:
    return [WeightNormMonitor(**kwargs), EffectiveDecayMonitor(**kwargs), ScaleInvarianceMonitor(**kwargs)]


# ----------------------------------------------------------------------------------------------------------------
# A fit too short for the logging interval
# ----------------------------------------------------------------------------------------------------------------


def test_a_run_shorter_than_the_interval_says_so_once(tmp_path: Path) -> None:
    """40 optimizer steps at Lightning's default log_every_n_steps (50): one warning, for all three monitors,
    naming the interval, the run's length and the setting; nothing is written."""
    report = TrainingReport()
    _, messages = fit_recording(tmp_path, Net("adamw"), [*monitors(), report], steps=40)
    assert messages == [
        "WeightNormMonitor, EffectiveDecayMonitor, ScaleInvarianceMonitor: nothing will be logged:"
        " log_every_n_steps=50 > the run's 40 optimizer steps (the first logging step would be optimizer step 50);"
        " set Trainer(log_every_n_steps=...) or the monitor's log_every_n_steps to at most 40"
    ]
    assert not list(tmp_path.rglob("metrics.csv")) and report.path is None

    # The setting the warning names fixes it: no warning, and the monitors log.
    fixed = tmp_path / "fixed"
    trainer, messages = fit_recording(fixed, Net("adamw"), monitors(), steps=40, log_every_n_steps=20)
    assert messages == []
    steps = {int(row["step"]) for row in csv.DictReader(open(next(fixed.rglob("metrics.csv"))))}
    assert steps == {19, 39}
    assert trainer.callbacks[0].last_metrics["weight_norm/total"] > 0


class StopAfter(Callback):
    """Stops the fit after ``steps`` optimizer steps (as early stopping would)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def test_a_fit_that_stops_before_the_first_logging_step_says_so_at_the_end(tmp_path: Path) -> None:
    """Planned: 40 steps, a monitor interval of 20; the fit stops after 10: one warning at the end, naming the
    monitor's own setting (the monitor with the trainer's interval, 1, logged and says nothing)."""
    late, early = WeightNormMonitor(log_every_n_steps=20), EffectiveDecayMonitor()
    _, messages = fit_recording(tmp_path, Net("adamw"), [late, early, StopAfter(10)], steps=40, log_every_n_steps=1)
    assert messages == [
        "WeightNormMonitor: logged nothing in this fit: log_every_n_steps=20 > the 10 optimizer steps the fit ran"
        " before it stopped; set WeightNormMonitor(log_every_n_steps=...) to at most 10"
    ]
    assert late.last_metrics == {} and early.last_metrics


def test_no_logger_and_a_layer_filter_that_matches_nothing(tmp_path: Path) -> None:
    _, messages = fit_recording(tmp_path, Net("adamw"), monitors(), logger=False, log_every_n_steps=1)
    assert messages == [
        "WeightNormMonitor, EffectiveDecayMonitor, ScaleInvarianceMonitor: the trainer has no logger"
        " (Trainer(logger=False)), so nothing is logged; give the Trainer a logger (e.g. CSVLogger) to record the"
        " monitors' values"
    ]
    _, messages = fit_recording(
        tmp_path / "filter", Net("adamw"), [WeightNormMonitor(layers=r"^encoder\.")], log_every_n_steps=1
    )
    assert messages == [
        "WeightNormMonitor: layers='^encoder\\\\.' matches none of the 5 trainable parameters (names such as"
        " net.0.weight, net.1.weight, net.1.bias), so no per-layer keys are logged; change layers= (a regex"
        " searched in the parameter names)"
    ]


# ----------------------------------------------------------------------------------------------------------------
# ScaleInvarianceMonitor: no layer passed the check / no prediction for the optimizer
# ----------------------------------------------------------------------------------------------------------------


class BiasNet(Net):
    """:class:`Net` with a bias between the first Linear and its LayerNorm: no weight is scale-invariant."""

    def __init__(self, variant: str = "adamw") -> None:
        super().__init__(variant, scheduler=False)
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))


def read_rows(directory: Path) -> list[dict[str, str]]:
    (path,) = directory.rglob("metrics.csv")
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_bias_before_layernorm_explains_the_missing_equilibrium_keys(tmp_path: Path) -> None:
    """The check runs three times (steps 0, 2, 4) and finds no invariant layer: one warning with the best loss
    change, the tolerance, the layer, the bias as the likely cause and the settings to change."""
    monitor = ScaleInvarianceMonitor(check_every_n_steps=2)
    _, messages = fit_recording(tmp_path, BiasNet(), [monitor], log_every_n_steps=1)
    assert monitor.labels == {"net.0.weight": False, "net.3.weight": False}
    assert len(messages) == 1, messages
    (message,) = messages
    match = re.search(r"best relative loss change ([0-9.e-]+) > check_tolerance 0.001, for (\S+),", message)
    assert match, message
    # The first check's numbers (the one that warned): the smallest change, the layer it belongs to.
    assert match.group(2) == "net.0.weight"
    assert 1e-3 < float(match.group(1)) < 1.0
    assert message.startswith("ScaleInvarianceMonitor: no layer passed the scale-invariance check")
    assert "scale_invariance/angular_update_equilibrium" in message and "are not logged" in message
    assert "Likely cause: a bias before a normalization breaks invariance: net.0.bias" in message
    assert "bias=False" in message and "check_every_n_steps=0" in message
    keys = {key for row in read_rows(tmp_path) for key, value in row.items() if value}
    assert "scale_invariance/angular_update/net.0.weight" in keys
    assert not any("equilibrium" in key or "effective_lr" in key for key in keys)

    # Without the bias the same model passes the check, and nothing is said.
    _, messages = fit_recording(tmp_path / "no_bias", Net("adamw", scheduler=False), [ScaleInvarianceMonitor(
        check_every_n_steps=2
    )], log_every_n_steps=1)
    assert messages == []


def test_no_equilibrium_prediction_for_adamp_says_why(tmp_path: Path) -> None:
    _, messages = fit_recording(tmp_path, Net("adamp"), [ScaleInvarianceMonitor()], log_every_n_steps=1)
    assert messages == [
        "ScaleInvarianceMonitor: no scale_invariance/angular_update_equilibrium or weight_norm_equilibrium for"
        " net.0.weight: AdamP (adamp) has no single decay factor per step (its decay is elementwise). The"
        " rotational equilibrium is derived for Adam-family rules with one decay factor per step (AdamW both"
        " conventions, ProxAdam, AdamC, torch.optim.AdamW); see docs/monitoring.md"
    ]


class RMSpropNet(Net):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(self.parameters(), lr=0.01, weight_decay=0.1)


def test_an_optimizer_without_a_decay_rule_says_its_decay_is_not_reported(tmp_path: Path) -> None:
    monitor = EffectiveDecayMonitor()
    _, messages = fit_recording(tmp_path, RMSpropNet(), [monitor], log_every_n_steps=1)
    assert len(messages) == 1 and messages[0].startswith(
        "EffectiveDecayMonitor: RMSprop has no decay rule (lightning_decay.optim.registry.rule_of), so its weight"
        " decay is not reported: only lr/ and eta/ are logged for the groups pg1"
    )
    assert sorted(monitor.last_metrics) == ["eta/pg1", "lr/pg1"]


# ----------------------------------------------------------------------------------------------------------------
# One row per step
# ----------------------------------------------------------------------------------------------------------------


def is_monitor_key(key: str) -> bool:
    return key.startswith(MONITOR_PREFIXES)


def test_each_steps_monitor_values_are_one_csv_row(tmp_path: Path) -> None:
    """Three monitors (two intervals) next to LearningRateMonitor and Lightning's own self.log: per step, one row
    holds every monitor key (those of all three monitors' ``last_metrics``), nothing else holds any."""
    weight_norm, decay = WeightNormMonitor(per_module=True), EffectiveDecayMonitor(log_every_n_steps=2)
    invariance = ScaleInvarianceMonitor(check_every_n_steps=3)
    callbacks = [LearningRateMonitor(), weight_norm, decay, invariance]
    fit_recording(tmp_path, Net("adamw"), callbacks, log_every_n_steps=1)
    rows = read_rows(tmp_path)
    monitor_rows: dict[int, list[set[str]]] = {}
    for row in rows:
        keys = {key for key, value in row.items() if value and is_monitor_key(key)}
        if keys:
            monitor_rows.setdefault(int(row["step"]), []).append(keys)
    assert sorted(monitor_rows) == list(range(STEPS))
    assert all(len(found) == 1 for found in monitor_rows.values()), monitor_rows
    last = monitor_rows[STEPS - 1][0]
    assert last == set(weight_norm.last_metrics) | set(decay.last_metrics) | set(invariance.last_metrics)
    assert any(key.startswith("scale_invariance/invariant/") for key in monitor_rows[3][0])  # the check's keys too
    assert not any(key.startswith("lr/") for key in monitor_rows[0][0])  # decay logs every 2nd step only
    # Per step: the monitors' row, Lightning's (train_loss) and LearningRateMonitor's: 3 rows, was 5.
    assert len(rows) == 3 * STEPS
