"""``TrainingReport``: the numbers its picture draws (not pixels), from real tiny fits, and its documentation."""

from __future__ import annotations

import inspect
import math
import re
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from lightning_decay.callbacks import EffectiveDecayMonitor, TrainingReport, WeightNormMonitor
from lightning_decay.diagnostics import read_metrics_csv, report_panels
from tests.test_callbacks import BATCH, classification_data

REPO = Path(__file__).resolve().parents[1]
STEPS = 30
WEIGHT_LR = 0.01


class ZeroBiasNet(pl.LightningModule):
    """Two Linear layers whose biases start at exactly zero and grow many times over (no decay, a large lr), while
    the weights change by a few percent."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        for layer in (self.net[0], self.net[2]):
            nn.init.zeros_(layer.bias)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        weights = [p for p in self.parameters() if p.ndim >= 2]
        biases = [p for p in self.parameters() if p.ndim < 2]
        groups = [
            {"params": weights, "name": "decay", "lr": WEIGHT_LR},
            {"params": biases, "name": "no_decay", "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=0.05, weight_decay=0.1)


def fit_with_report(
    tmp_path: Path, log_every_n_steps: int = 1, steps: int = STEPS, lr_monitor: bool = True
) -> TrainingReport:
    report = TrainingReport(max_layers=4)
    callbacks = [LearningRateMonitor()] if lr_monitor else []
    trainer = pl.Trainer(
        max_epochs=1, log_every_n_steps=log_every_n_steps, logger=CSVLogger(tmp_path, name="csv"),
        callbacks=[*callbacks, WeightNormMonitor(), EffectiveDecayMonitor(), report],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    trainer.fit(ZeroBiasNet(), DataLoader(classification_data(BATCH * steps), batch_size=BATCH))
    return report


def test_norm_panel_stays_readable_when_biases_start_at_zero(tmp_path: Path) -> None:
    """Zero-initialised biases grow many times over: relative to the first logged value (the old panel) they
    stretch the axis and squeeze every other line; relative to each layer's maximum every line spans [0, 1]."""
    report = fit_with_report(tmp_path)
    assert report.path is not None and report.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    series = read_metrics_csv(report.path.parent / "metrics.csv")
    norms, decay, lr, _angle = report.panels
    assert decay.yscale == "symlog"
    lines = {line.label.split(" (")[0]: line for line in norms.lines}
    assert set(lines) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "total"}
    assert lines["total"].bold
    for name, line in lines.items():
        logged = [value for _, value in series[f"weight_norm/{name}"]]
        assert line.steps == tuple(step for step, _ in series[f"weight_norm/{name}"])
        assert line.values == pytest.approx([value / max(logged) for value in logged], rel=1e-12)  # the logged data
        assert all(0.0 <= value <= 1.0 for value in line.values) and max(line.values) == 1.0
        assert line.label == f"{name} ({logged[0]:.3g} -> {logged[-1]:.3g})"  # absolute norms in the legend

    # The scenario of the issue: relative to the first logged value (the old panel) the biases grow > 4x and the
    # y axis, fitted to the lines, spans that growth; the weights' lines use a 3-4x larger share of the new axis.
    old = {name: [v / series[f"weight_norm/{name}"][0][1] for _, v in series[f"weight_norm/{name}"]] for name in lines}

    def share(values: list[float] | tuple[float, ...], every: list[list[float]]) -> float:
        """The share of the axis height (fitted to all lines) that a line's range uses."""
        return (max(values) - min(values)) / (max(map(max, every)) - min(map(min, every)))

    old_lines = list(old.values())
    new_lines = [list(line.values) for line in lines.values()]
    assert max(map(max, old_lines)) > 4
    bias = lines["net.0.bias"].values
    assert bias[0] < 0.3 and max(bias) == 1.0  # the growth is still shown
    for name in ("net.0.weight", "net.2.weight", "total"):
        old_share, new_share = share(old[name], old_lines), share(lines[name].values, new_lines)
        assert new_share > 3 * old_share, (name, old_share, new_share)
    assert {line.label for line in decay.lines} == {"decay", "no_decay"}
    assert dict(zip(*zip(*[(line.label, line.values[0]) for line in decay.lines]))) == pytest.approx(
        {"decay": WEIGHT_LR * 0.1, "no_decay": 0.0}
    )
    assert {line.label for line in lr.lines} == {"lr-AdamW/decay", "lr-AdamW/no_decay"}


def test_a_norm_that_starts_at_exactly_zero_is_drawn() -> None:
    """A series whose first logged value is 0 (no ratio to its first value exists) is drawn from 0 to 1."""
    series = {
        "weight_norm/w": [(0, 2.0), (1, 1.9), (2, 1.8)],
        "weight_norm/b": [(0, 0.0), (1, 0.5), (2, 0.9)],
        "weight_norm/total": [(0, 2.0), (1, 1.96), (2, 2.01)],
    }
    (norms, decay, lr, angle) = report_panels(series)
    lines = {line.label.split(" (")[0]: line.values for line in norms.lines}
    assert lines["b"] == pytest.approx((0.0, 0.5 / 0.9, 1.0))
    assert lines["w"] == pytest.approx((1.0, 0.95, 0.9))
    assert all(math.isfinite(v) for values in lines.values() for v in values)
    assert decay.lines == () and lr.lines == () and angle.lines == ()  # drawn as "nothing logged"


def test_nothing_logged_is_said(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = fit_with_report(tmp_path, log_every_n_steps=50, steps=5, lr_monitor=False)
    assert report.path is None
    messages = [str(w.message) for w in caught if str(w.message).startswith("TrainingReport")]
    assert len(messages) == 1 and "nothing was logged" in messages[0]
    assert "the fit ran 5 optimizer steps, Trainer(log_every_n_steps=50)" in messages[0]


def test_training_report_is_documented() -> None:
    """docs/monitoring.md has a TrainingReport section that names every argument with its default, the three
    panels and what is printed; the quickstart config uses it."""
    text = (REPO / "docs" / "monitoring.md").read_text()
    section = text.split("## `TrainingReport`", 1)[1].split("\n## ", 1)[0]
    for name, parameter in inspect.signature(TrainingReport.__init__).parameters.items():
        if name == "self":
            continue
        assert re.search(rf"\| `{name}` \| `{re.escape(repr(parameter.default))}` \|", section.replace('"', "'")), name
    for words in ("weight norms", "per-step decay", "learning rate", "diagnostics plot:", "CSVLogger", "report.panels"):
        assert words in section, words
    assert "lightning_decay.callbacks.TrainingReport" in (REPO / "configs" / "quickstart.yaml").read_text()


class NormalizedNet(pl.LightningModule):
    """A bias-free Linear before a LayerNorm (scale-invariant: it gets the rotational-equilibrium prediction) and a
    classifier head (not invariant: no prediction), both in the decayed group ``decay`` of AdamW; biases in
    ``no_decay`` (no angle panel line)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(6, 16, bias=False), nn.LayerNorm(16, elementwise_affine=False), nn.Tanh(), nn.Linear(16, 3)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        weights = [p for p in self.parameters() if p.ndim >= 2]
        biases = [p for p in self.parameters() if p.ndim < 2]
        groups = [{"params": weights, "name": "decay"}, {"params": biases, "name": "no_decay", "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=0.01, weight_decay=0.1)


def test_angle_panel_draws_the_measured_angle_next_to_its_equilibrium_prediction(tmp_path: Path) -> None:
    """The fourth panel: per decayed group, the mean over its layers of the logged angular update and (dashed) the
    mean of the logged prediction over the layers that have one — the numbers of metrics.csv, per step."""
    from lightning_decay.callbacks import ScaleInvarianceMonitor

    report = TrainingReport()
    trainer = pl.Trainer(
        max_epochs=1, log_every_n_steps=2, logger=CSVLogger(tmp_path, name="csv"),
        callbacks=[WeightNormMonitor(), EffectiveDecayMonitor(), ScaleInvarianceMonitor(), report],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    trainer.fit(NormalizedNet(), DataLoader(classification_data(BATCH * 12), batch_size=BATCH))
    series = read_metrics_csv(report.path.parent / "metrics.csv")
    angle = report.panels[3]
    assert angle.title == "angular update per step vs rotational equilibrium (per decayed group)"
    lines = {line.label: line for line in angle.lines}
    assert set(lines) == {"decay: measured", "decay: equilibrium prediction"}  # no_decay: no weight_decay
    assert lines["decay: equilibrium prediction"].dashed and not lines["decay: measured"].dashed
    assert angle.note == ""
    layers = ("net.0.weight", "net.3.weight")
    measured = [dict(series[f"scale_invariance/angular_update/{layer}"]) for layer in layers]
    steps = sorted(measured[0])
    assert len(steps) == 6 and lines["decay: measured"].steps == tuple(steps)
    assert lines["decay: measured"].values == pytest.approx([(measured[0][s] + measured[1][s]) / 2 for s in steps])
    # only the LayerNorm'd weight was labeled scale-invariant, so the prediction is that layer's alone
    assert "scale_invariance/angular_update_equilibrium/net.3.weight" not in series
    predicted = series["scale_invariance/angular_update_equilibrium/net.0.weight"]
    assert lines["decay: equilibrium prediction"].steps == tuple(s for s, _ in predicted)
    assert lines["decay: equilibrium prediction"].values == pytest.approx([v for _, v in predicted])
    assert all(v > 0 for v in lines["decay: equilibrium prediction"].values)


def test_angle_panel_says_when_no_prediction_was_logged() -> None:
    """A group whose layers have no prediction (the quickstart's ResNet20 without normalization) keeps its measured
    line, and the note names it; without groups, all layers form one group."""
    from lightning_decay.diagnostics.report import angle_panel

    series = {
        "scale_invariance/angular_update/a": [(1, 0.1), (3, 0.3)],
        "scale_invariance/angular_update/b": [(1, 0.3), (3, 0.5)],
    }
    panel = angle_panel(series, {"decay": ["a", "b"], "other": ["c"]})
    assert [(line.label, line.values) for line in panel.lines] == [("decay: measured", pytest.approx((0.2, 0.4)))]
    assert panel.note.startswith("no prediction logged for decay: no layer labeled scale-invariant")
    assert [line.label for line in angle_panel(series).lines] == ["all layers: measured"]
