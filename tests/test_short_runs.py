"""Lightning's smoke-test modes run with every config: ``fast_dev_run``, ``overfit_batches``, ``limit_train_batches``
and a short ``max_steps`` shorten a warmup longer than the run to fit, with one warning naming ``warmup_steps``, the
run's total and the warmup used; ``warmup_steps >= total_steps`` given together stays an error.

Real parts: the quickstart config through the LightningCLI, and a small ``DecayMixin`` model in a real ``Trainer``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_decay.integration import DecayMixin, DecaySettings, WarmupSchedule, build_lr_scheduler
from lightning_decay.optim import AdamW

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
#: tests/test_cli.py's tiny overrides, without its ``warmup_steps=0`` and ``max_steps``: the config's warmup (20) stays
SMALL = [
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
    '--trainer.logger={"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "logs"}}',
    "--data.init_args.data_dir=null",
    "--data.init_args.train_subset=40",
    "--data.init_args.test_subset=20",
    "--data.init_args.batch_size=8",
]
SHORTENED = r"warmup_steps=(\d+) is longer than this run: (\d+) optimizer step\(s\) in total .* shortened to (\d+) step"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def shortening_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "is longer than this run" in str(w.message)]


def run_quickstart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> tuple[Any, list[str]]:
    from lightning_decay.cli import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = run_cli(["fit", "--config", str(QUICKSTART), *SMALL, *overrides])
    return cli, shortening_warnings(caught)


def test_fast_dev_run_on_the_quickstart_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once ``ValueError: warmup_steps (20) must be < total_steps (1) for a cosine schedule``; now one step at the
    peak lr, and one warning saying so."""
    cli, shortened = run_quickstart(tmp_path, monkeypatch, "--trainer.fast_dev_run=true")
    assert cli.trainer.global_step == 1
    assert len(shortened) == 1
    assert "warmup_steps=20 is longer than this run: 1 optimizer step(s) in total" in shortened[0]
    assert "shortened to 0 step(s)" in shortened[0]
    assert cli.trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0] == WarmupSchedule(total_steps=1)
    assert all(p.isfinite().all() for p in cli.model.parameters())


def test_short_max_steps_on_the_quickstart_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--trainer.max_steps=20`` with the config's ``warmup_steps: 20`` (ResNet20 swapped for the small CNN to keep
    20 steps quick): the warmup ends at the run's last step."""
    cli, shortened = run_quickstart(
        tmp_path, monkeypatch, "--trainer.max_steps=20", "--model.init_args.architecture=small_cnn"
    )
    assert cli.trainer.global_step == 20
    assert len(shortened) == 1 and "warmup_steps=20 is longer than this run: 20 optimizer step(s)" in shortened[0]
    schedule = cli.trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert schedule == WarmupSchedule(total_steps=20, warmup_steps=19)


# --------------------------------------------------------------------------------------------------------------
# A user's model with warmup_steps: 5 in every smoke-test mode
# --------------------------------------------------------------------------------------------------------------


class Regressor(DecayMixin, LightningModule):
    """A two-layer regression on 16 samples of 4 features (4 batches of 4 per epoch)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        generator = torch.Generator().manual_seed(1)
        self.data = TensorDataset(torch.randn(16, 4, generator=generator), torch.randn(16, 1, generator=generator))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=4)


def fit(settings: DecaySettings, **trainer_options: Any) -> tuple[Trainer, list[str]]:
    options: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_epochs=3,
    )
    options.update(trainer_options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(**options)
        trainer.fit(Regressor(decay=settings))
    return trainer, shortening_warnings(caught)


@pytest.mark.parametrize(
    ("options", "total"),
    [
        ({"fast_dev_run": True}, 1),
        ({"fast_dev_run": 3}, 3),
        ({"limit_train_batches": 1}, 3),  # 1 batch x 3 epochs
        ({"overfit_batches": 1, "max_epochs": 2}, 2),
        ({"max_steps": 4}, 4),
        ({"limit_train_batches": 2, "accumulate_grad_batches": 2}, 3),  # 1 optimizer step per epoch
    ],
    ids=["fast_dev_run", "fast_dev_run=3", "limit_train_batches", "overfit_batches", "max_steps", "accumulation"],
)
def test_smoke_test_modes_shorten_the_warmup(options: dict[str, Any], total: int) -> None:
    """``estimated_stepping_batches`` counts every mode; a warmup of 5 is cut to ``total - 1`` steps, once warned."""
    trainer, shortened = fit(DecaySettings(lr=0.01, warmup_steps=5, min_lr_ratio=0.1), **options)
    assert trainer.estimated_stepping_batches == total == trainer.global_step
    assert len(shortened) == 1
    assert f"warmup_steps=5 is longer than this run: {total} optimizer step(s) in total" in shortened[0]
    assert f"shortened to {total - 1} step(s)" in shortened[0]
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert schedule == WarmupSchedule(total_steps=total, warmup_steps=total - 1, min_lr_ratio=0.1)


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_other_schedules_in_a_short_run(schedule: str) -> None:
    """Linear: shortened as cosine. Constant: no total needed, nothing shortened (its warmup may outlast the run)."""
    trainer, shortened = fit(DecaySettings(lr=0.01, warmup_steps=5, schedule=schedule), fast_dev_run=True)
    assert trainer.global_step == 1
    assert len(shortened) == (1 if schedule == "linear" else 0)


def test_runs_long_enough_and_fixed_totals_are_left_alone() -> None:
    """No warning when the warmup fits, nor when ``total_steps`` is given (the schedule is the user's; a smoke test
    runs its first steps)."""
    trainer, shortened = fit(DecaySettings(lr=0.01, warmup_steps=5), max_steps=6)
    assert not shortened
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0] == WarmupSchedule(total_steps=6, warmup_steps=5)
    trainer, shortened = fit(DecaySettings(lr=0.01, warmup_steps=5, total_steps=100), fast_dev_run=True)
    assert not shortened
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0] == WarmupSchedule(total_steps=100, warmup_steps=5)


def test_warmup_ratio_in_a_short_run() -> None:
    """A warmup from ``warmup_ratio`` is a fraction of the run: at most ``total - 1`` steps, no warning."""
    trainer, shortened = fit(DecaySettings(lr=0.01, warmup_ratio=0.5), fast_dev_run=True)
    assert not shortened and trainer.global_step == 1
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0] == WarmupSchedule(total_steps=1, warmup_steps=0)
    trainer, shortened = fit(DecaySettings(lr=0.01, warmup_ratio=0.5), max_steps=6)
    assert not shortened
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0] == WarmupSchedule(total_steps=6, warmup_steps=3)
    scheduler = build_lr_scheduler(AdamW(nn.Linear(2, 2).parameters()), warmup_ratio=0.95, total_steps=10)
    assert scheduler.lr_lambdas[0].warmup_steps == 9  # round(9.5) = 10 would not fit


def test_contradictory_settings_given_together_stay_an_error() -> None:
    """``warmup_steps >= total_steps`` in the same settings is rejected when the settings are made, naming both."""
    with pytest.raises(ValueError, match=r"warmup_steps \(5\) must be < total_steps \(5\) for a cosine schedule"):
        DecaySettings(warmup_steps=5, total_steps=5)
    with pytest.raises(ValueError, match=r"^warmup_steps \(8\) must be < total_steps \(3\) for a linear schedule"):
        build_lr_scheduler(AdamW(nn.Linear(2, 2).parameters()), "linear", warmup_steps=8, total_steps=3)
    DecaySettings(warmup_steps=5, total_steps=5, schedule="constant")  # a constant schedule has no decay to fit
