"""No setting silently lost: settings a model drops, an optimizer the mixin did not build, LightningCLI's top-level
``optimizer:`` key, the startup summary (variant, convention, schedule, groups, parameter names) and its timescale
notes (also in the CSV hyperparameters and a W&B offline run's summary). Real Trainer runs, real LightningCLI parses."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_decay.cli import run_cli
from lightning_decay.integration import DecayMixin, DecaySettings
from lightning_decay.optim import REGISTRY

SAMPLES = 40  # batches of 4: 10 optimizer steps per epoch


def batches(samples: int = SAMPLES) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, 4, generator=generator)
    return DataLoader(TensorDataset(inputs, torch.randint(0, 2, (samples,), generator=generator)), batch_size=4)


class TinyMLP(DecayMixin, LightningModule):
    """The usual pattern: ``**kwargs`` reach the mixin. Parameters: net.0 (decay), net.1 = LayerNorm, net.2."""

    def __init__(self, hidden: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.LayerNorm(hidden), nn.Linear(hidden, 2))

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        return nn.functional.cross_entropy(self.net(inputs), labels)

    def train_dataloader(self) -> DataLoader:
        return batches()


class TinyData(LightningDataModule):
    """For ``lightning-decay``'s CLI, which picks the data by class_path too."""

    def train_dataloader(self) -> DataLoader:
        return batches()


class NoForward(TinyMLP):
    """Accepts ``**kwargs`` but calls ``super().__init__`` without them: the settings never arrive."""

    def __init__(self, hidden: int = 8, **kwargs) -> None:
        super().__init__(hidden)


class NamedNoForward(TinyMLP):
    """Names ``decay`` and drops it."""

    def __init__(self, decay: DecaySettings = DecaySettings()) -> None:  # noqa: B008
        super().__init__()


class Outer(NoForward):
    """Forwards everything to ``NoForward``, which drops it: the error names ``NoForward.__init__``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)


class Transforms(TinyMLP):
    """Passes on a changed copy of the settings: they arrived (nothing is lost)."""

    def __init__(self, decay: DecaySettings = DecaySettings(), **kwargs) -> None:  # noqa: B008
        super().__init__(decay=decay.replace(lr=decay.lr / 2), **kwargs)


class OwnAdam(TinyMLP):
    """Its own ``configure_optimizers`` never calls the mixin's."""

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class SkipsFitStart(OwnAdam):
    """Overrides ``on_fit_start`` without ``super()``: the check still runs before the first step."""

    def on_fit_start(self) -> None:
        pass


def quiet_trainer(**kwargs) -> Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, max_epochs=1,
    )
    return Trainer(**{**defaults, **kwargs})


def unfused(variant: str, **settings) -> DecaySettings:
    """Settings for ``variant`` that run torch's eager kernels (no compiled step: seconds saved per test)."""
    kwargs = {"fused": False} if "fused" in inspect.signature(REGISTRY[variant].optimizer).parameters else {}
    return DecaySettings(optimizer=variant, optimizer_kwargs=kwargs, **settings)


# --- 1(a): settings a model's __init__ drops -----------------------------------------------------------------------


def test_settings_dropped_by_the_models_init_are_an_error_naming_the_class() -> None:
    """Before: NoForward(decay=proxadam, lr 3e-4) trained with AdamW, lr 1e-3, wd 0.01."""
    with pytest.raises(ValueError) as raised:
        NoForward(decay=DecaySettings(optimizer="proxadam", lr=3e-4))
    message = str(raised.value)
    assert message.startswith(
        "NoForward: NoForward.__init__ received decay=DecaySettings(optimizer='proxadam', lr=0.0003) but did not pass "
        "it on to DecayMixin, so the model would train with optimizer='adamw', lr=0.001, weight_decay=the "
        "optimizer's default instead."
    )
    assert "Pass it on: super().__init__(**kwargs) (or super().__init__(decay=decay))" in message

    with pytest.raises(ValueError, match=r"NamedNoForward: NamedNoForward.__init__ received decay=.*'adamw-paper'"):
        NamedNoForward(decay=DecaySettings(optimizer="adamw-paper"))
    with pytest.raises(ValueError, match=r"^Outer: NoForward.__init__ received decay="):
        Outer(decay={"optimizer": "proxadam"})  # a plain dict, as in hparams
    with pytest.raises(ValueError, match=r"NoForward.__init__ received optimizer_callable=functools.partial"):
        NoForward(optimizer_callable=functools.partial(torch.optim.SGD, lr=0.1))

    # what arrives is fine: nothing given, the defaults given, a changed copy passed on
    assert NoForward().decay_settings == DecaySettings()
    assert NoForward(decay=DecaySettings()).decay_settings == DecaySettings()
    assert Transforms(decay=DecaySettings(lr=0.2)).decay_settings.lr == pytest.approx(0.1)
    assert TinyMLP(decay=DecaySettings(optimizer="proxadam")).decay_settings.optimizer == "proxadam"


# --- 1(b): the model's own configure_optimizers ---------------------------------------------------------------------


def test_own_configure_optimizers_given_decay_settings_stops_the_fit(caplog: pytest.LogCaptureFixture) -> None:
    """Before: OwnAdam(decay=proxadam) trained with its own torch.optim.Adam, the settings ignored."""
    model = OwnAdam(decay=DecaySettings(optimizer="proxadam", lr=3e-4))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError) as raised:
        quiet_trainer().fit(model)
    assert str(raised.value) == (
        "OwnAdam: OwnAdam.configure_optimizers returned Adam, not DecayMixin's optimizer; ignored: "
        "decay.optimizer='proxadam', decay.lr=0.0003. Instead: return self.configure_decay_optimizers() from "
        "OwnAdam.configure_optimizers (or delete it), or do not pass these settings; to train with Adam anyway, set "
        "decay.allow_external_optimizer=True"
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # stopped before any step

    trainer = quiet_trainer(max_steps=2)
    trainer.fit(OwnAdam())  # no settings given: nothing is lost, the model's own optimizer trains
    assert type(trainer.optimizers[0]) is torch.optim.Adam

    allowed = OwnAdam(decay=DecaySettings(optimizer="proxadam", allow_external_optimizer=True))
    trainer = quiet_trainer(max_steps=2)
    with caplog.at_level(logging.INFO):
        trainer.fit(allowed)
    assert type(trainer.optimizers[0]) is torch.optim.Adam and trainer.global_step == 2
    assert any(
        "OwnAdam.configure_optimizers returned Adam" in r.getMessage() and "training with it anyway" in r.getMessage()
        for r in caplog.records
    )


def test_the_optimizer_check_runs_before_the_first_step_when_on_fit_start_skips_the_mixin() -> None:
    model = SkipsFitStart(decay=DecaySettings(weight_decay=0.1))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"SkipsFitStart.configure_optimizers returned Adam.*decay.weight_decay=0.1"):
        quiet_trainer().fit(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# --- 1(c): LightningCLI's top-level optimizer: key ------------------------------------------------------------------

CLI_ARGS = [
    "fit",
    f"--model={__name__}.TinyMLP",
    f"--data={__name__}.TinyData",
    "--trainer.max_steps=2",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture
def cli_argv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """LightningCLI reads sys.argv too: only the program name is left; runs in a fresh folder."""
    monkeypatch.setattr(sys, "argv", ["lightning-decay"])
    monkeypatch.chdir(tmp_path)


def test_lightning_decay_top_level_optimizer_key_is_a_parse_error_unless_allowed(
    cli_argv: None, capsys: pytest.CaptureFixture
) -> None:
    """Before: the top-level key replaced the mixin's optimizer and its groups; only a generic Lightning warning."""
    with pytest.raises(SystemExit) as exited, pytest.warns(UserWarning, match="will be overridden"):
        run_cli([*CLI_ARGS, "--optimizer=torch.optim.SGD", "--optimizer.lr=0.1", "--model.decay.lr=0.01"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert (
        "error: TinyMLP: LightningCLI's top-level `optimizer:` key replaced DecayMixin's optimizer with SGD on "
        "model.parameters(): one parameter group, so biases and normalization weights decay and the named groups are "
        "lost; ignored: decay.lr=0.01. Instead: set the variant in the model's decay block"
    ) in error
    assert "set decay.allow_external_optimizer: true" in error

    with pytest.warns(UserWarning, match="will be overridden"):
        cli = run_cli([*CLI_ARGS, "--optimizer=torch.optim.SGD", "--model.decay.allow_external_optimizer=true"])
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is torch.optim.SGD and len(optimizer.param_groups) == 1  # what the user opted into
    assert cli.trainer.global_step == 2


# --- 2: the startup summary ---------------------------------------------------------------------------------------


def test_startup_summary_names_variant_convention_schedule_and_parameter_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: ``TinyMLP: AdamW, parameter groups:`` and one line per group."""
    model = TinyMLP(decay=unfused("adamw-paper", weight_decay=0.01, warmup_steps=10, verbose=True))
    trainer = quiet_trainer(max_epochs=3)
    with caplog.at_level(logging.INFO):
        trainer.fit(model)
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TinyMLP: ")]
    assert summaries == [model.decay_summary]  # printed once
    lines = model.decay_summary.splitlines()
    assert lines[0] == "TinyMLP: AdamW (adamw-paper), paper convention, one step: w <- (1 - eta_t*wd) w - lr_t u_t"
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert (schedule.warmup_steps, schedule.total_steps) == (10, 30)
    assert lines[1] == (
        "  schedule: warmup 10 steps, then cosine to 0 at step 30, stepped every optimizer step; the fit plans 30 steps"
    )
    assert lines[2:] == [  # verbose: a table of every parameter, its group and why
        "  parameter groups:",
        "    decay: 2 tensors, 48 parameters, weight_decay=0.01 at lr=0.001, timescale 100 steps = 10 epochs",
        "    no_decay: 4 tensors, 26 parameters, weight_decay=0 at lr=0.001",
        "  parameters:",
        "    parameter     group     reason",
        "    net.0.weight  decay     default (decay)",
        "    net.2.weight  decay     default (decay)",
        "    net.0.bias    no_decay  bias",
        "    net.1.weight  no_decay  normalization layer (LayerNorm)",
        "    net.1.bias    no_decay  bias",
        "    net.2.bias    no_decay  bias",
    ]
    assert model.resolved_decay["decay/variant"] == "adamw-paper"
    assert model.resolved_decay["decay/timescale_steps/decay"] == pytest.approx(100.0)


def test_summary_reads_the_schedule_the_scheduler_got() -> None:
    """A warmup longer than a 5-step run: the summary shows the schedule that runs, not the configured numbers."""
    model = TinyMLP(decay=unfused("adamw", warmup_steps=50, schedule="linear", min_lr_ratio=0.1))
    trainer = quiet_trainer(max_steps=5)
    with pytest.warns(UserWarning, match="warmup"):
        trainer.fit(model)
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert schedule.warmup_steps < 50
    assert model.decay_summary.splitlines()[1] == (
        f"  schedule: warmup {schedule.warmup_steps} steps, then linear to 0.1 x lr at step {schedule.total_steps}, "
        "stepped every optimizer step; the fit plans 5 steps"
    )


def test_same_number_in_another_variant_shows_in_the_timescale_line() -> None:
    """adamp -> adamw-paper with the same weight decay 0.01: an lr_t*wd/D decay becomes an eta_t*wd one."""
    lines = {}
    for variant in ("adamp", "adamw-paper", "adamw", "adaml2"):
        model = TinyMLP(decay=DecaySettings(optimizer=variant, weight_decay=0.01, total_steps=30))
        model.configure_decay_optimizers()  # no fit: nothing is compiled
        lines[variant] = model.decay_summary.splitlines()
    assert lines["adamp"][0] == (
        "TinyMLP: AdamP (adamp), torch convention, one step: w <- (w - lr_t u_t) / (1 + lr_t*wd/D), elementwise"
    )
    assert lines["adamp"][3].endswith(
        "weight_decay=0.01 at lr=0.001, timescale D x 100000 steps per coordinate (D/(lr*wd) with Adam's "
        "D = sqrt(v_hat) + eps: no single timescale)"
    )
    assert lines["adamw-paper"][3].endswith("weight_decay=0.01 at lr=0.001, timescale 100 steps")
    assert lines["adamw"][3].endswith("weight_decay=0.01 at lr=0.001, timescale 100000 steps")
    assert lines["adaml2"][0].startswith("TinyMLP: AdamL2 (adaml2), L2 penalty in the gradient, one step: g <- g")
    assert "D x 100000 steps per coordinate" in lines["adaml2"][3]


# --- 6 (edges): a decay that cannot act -----------------------------------------------------------------------------


def cosine_shrink(lr: float, weight_decay: float, steps: int) -> float:
    """1 - prod(1 - lr_t * wd) over a cosine schedule without warmup (torch-convention AdamW), independently."""
    kept = 1.0
    for step in range(steps):
        kept *= 1.0 - lr * 0.5 * (1.0 + math.cos(math.pi * step / steps)) * weight_decay
    return 1.0 - kept


def test_timescale_far_beyond_the_fit_is_noted_in_summary_hparams_and_wandb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AdamW, lr 1e-3, wd 0.5: timescale 2000 steps for an 80-step fit (the quickstart: 20000 for 790)."""
    from lightning.pytorch.loggers import WandbLogger

    from lightning_decay.diagnostics.wandb_files import find_run_file, iter_records, wait_until_written

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb_logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="notes")
    model = TinyMLP(decay=unfused("adamw", weight_decay=0.5))
    trainer = quiet_trainer(max_epochs=8, logger=[CSVLogger(tmp_path, name="csv", version=0), wandb_logger])
    trainer.fit(model)
    wandb_logger.experiment.finish()

    shrink = cosine_shrink(1e-3, 0.5, 80)
    note = (
        "group 'decay': decay timescale 2,000 steps is 25x the 80 planned steps, so over the whole fit the decay "
        f"shrinks these weights by {100 * shrink:.2g}% and barely acts (Wang & Aitchison 2024: the weights average "
        "their updates over ~timescale steps)"
    )
    assert f"{100 * shrink:.2g}" == "2"
    assert model.decay_summary.splitlines()[-1] == f"  note: {note}"
    hparams = yaml.safe_load((tmp_path / "csv" / "version_0" / "hparams.yaml").read_text())
    assert hparams["decay/note/decay"] == note
    summary = {}
    for record in iter_records(wait_until_written(find_run_file(tmp_path))):
        if record.WhichOneof("record_type") == "summary":
            summary.update({item.key: item.value_json for item in record.summary.update if item.key})
    assert yaml.safe_load(summary["decay/note/decay"]) == note


def test_timescale_shorter_than_an_epoch_is_noted_and_a_fitting_one_is_not() -> None:
    short = TinyMLP(decay=unfused("adamw-paper", weight_decay=0.2))  # timescale 1/0.2 = 5 steps, 10 steps per epoch
    quiet_trainer(max_epochs=1).fit(short)
    assert short.decay_summary.splitlines()[-1] == (
        "  note: group 'decay': decay timescale 5 steps is shorter than one epoch (10 steps): these weights forget "
        "their updates within an epoch (Wang & Aitchison 2024: they average their updates over ~timescale steps)"
    )
    fitting = TinyMLP(decay=unfused("adamw-paper", weight_decay=0.05))  # 20 steps: two epochs of a 2-epoch fit
    quiet_trainer(max_epochs=2).fit(fitting)
    assert "note:" not in fitting.decay_summary
    assert not any(key.startswith("decay/note/") for key in fitting.resolved_decay)
