"""DecayMixin on real models with real Trainer runs, checkpoints and LightningCLI parses."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_decay.integration import DecayMixin, DecaySettings, WarmupSchedule
from lightning_decay.integration.param_groups import GroupOverride, ParamGroupSettings
from lightning_decay.optim import REGISTRY, VARIANTS, AdamL2, AdamW, ProxAdam, resolve_variant
from lightning_decay.optim.combined import CombinedOptimizer
from tests.test_param_groups import FrozenBackbone, SmallCNN, TinyTransformer


def no_compile(cls: type) -> dict:
    """``fused=False`` where the class takes it: no compiled kernel (seconds to build) in these tests."""
    return {"fused": False} if "fused" in inspect.signature(cls).parameters else {}


def token_batches(count: int = 4) -> DataLoader:
    tokens = torch.randint(0, 11, (4 * count, 7), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(tokens), batch_size=4)


def image_batches(count: int = 4) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4 * count, 3, 6, 6, generator=generator)
    return DataLoader(TensorDataset(images, torch.randint(0, 3, (4 * count,), generator=generator)), batch_size=4)


class TransformerLM(DecayMixin, LightningModule):
    """The usual pattern: ``**kwargs`` pass the decay settings on, ``save_hyperparameters()`` stores them."""

    def __init__(self, vocab: int = 11, **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.net = TinyTransformer(vocab)

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        logits = self.net(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        self.log("loss", loss)
        return loss

    def train_dataloader(self) -> DataLoader:
        return token_batches()


class CNNClassifier(DecayMixin, LightningModule):
    """Names ``decay`` in its own signature."""

    def __init__(self, num_classes: int = 3, decay: DecaySettings = DecaySettings()) -> None:  # noqa: B008
        super().__init__(decay=decay)
        self.save_hyperparameters()
        self.net = SmallCNN(num_classes)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return nn.functional.cross_entropy(self.net(images), labels)

    def train_dataloader(self) -> DataLoader:
        return image_batches()


class LegacyFineTune(DecayMixin, LightningModule):
    """An existing model, unchanged except for the base class: no ``decay`` argument, no save_hyperparameters."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.net = FrozenBackbone(num_classes)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return nn.functional.cross_entropy(self.net(images), labels)

    def train_dataloader(self) -> DataLoader:
        return image_batches()


def quiet_trainer(**kwargs) -> Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, max_steps=2,
    )
    return Trainer(**{**defaults, **kwargs})


def group_table(optimizer: torch.optim.Optimizer) -> list[tuple]:
    """What must match between two optimizer configurations (everything but the tensors' values)."""
    return [
        (
            g["name"], g.get("initial_lr", g["lr"]), g["weight_decay"], tuple(g.get("betas", ())), g.get("eps"),
            [tuple(p.shape) for p in g["params"]],
        )
        for g in optimizer.param_groups
    ]


# --- training ------------------------------------------------------------------------------------------------------


def test_default_is_adamw_torch_convention_with_named_groups() -> None:
    model = TransformerLM()
    before = model.net.block.mlp[0].weight.detach().clone()
    trainer = quiet_trainer()
    trainer.fit(model)
    optimizer = trainer.optimizers[0]
    assert type(optimizer) is AdamW and optimizer.convention == "torch"
    assert [(g["name"], g["weight_decay"], g["initial_lr"]) for g in optimizer.param_groups] == [
        ("decay", 0.01, 1e-3),
        ("no_decay", 0.0, 1e-3),
    ]
    config = trainer.lr_scheduler_configs[0]
    assert config.interval == "step" and config.scheduler.lr_lambdas[0] == WarmupSchedule(total_steps=2)
    assert not torch.equal(before, model.net.block.mlp[0].weight)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_fits(variant: str) -> None:
    cls, fixed = resolve_variant(variant)
    muon = REGISTRY[variant].family == "muon"  # Muon steps the hidden matrices, others (AdamW) the rest
    others = {"optimizer": "adamw", "lr": 0.01} if muon else None
    model = TransformerLM(decay=DecaySettings(optimizer=variant, lr=0.01, optimizer_kwargs=no_compile(cls),
                                              others=others))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(model)
    optimizer = trainer.optimizers[0]
    if muon:
        assert type(optimizer) is CombinedOptimizer and type(optimizer.parts[0]) is cls
        assert [g["name"] for g in optimizer.param_groups] == ["muon/decay", "others/decay", "others/no_decay"]
    else:
        assert type(optimizer) is cls
        assert [g["name"] for g in optimizer.param_groups] == ["decay", "no_decay"]
    assert torch.isfinite(trainer.callback_metrics["loss"])
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_cnn_with_batchnorm_and_a_frozen_backbone_fit() -> None:
    cnn = CNNClassifier(decay=DecaySettings(optimizer="proxadam", lr=0.01, weight_decay=0.1, schedule="linear"))
    quiet_trainer().fit(cnn)
    assert cnn.trainer.optimizers[0].param_groups[1]["params"][0] is cnn.net.bn1.weight

    frozen = LegacyFineTune()
    backbone = [p.detach().clone() for p in frozen.net.backbone.parameters()]
    trainer = quiet_trainer()
    trainer.fit(frozen)
    in_optimizer = [p for g in trainer.optimizers[0].param_groups for p in g["params"]]
    assert len(in_optimizer) == 2 and in_optimizer[0] is frozen.net.head.weight
    assert all(torch.equal(a, b) for a, b in zip(backbone, frozen.net.backbone.parameters()))


def test_own_configure_optimizers_can_reach_the_mixin() -> None:
    class TwoConfigs(TransformerLM):
        def configure_optimizers(self):
            config = DecayMixin.configure_optimizers(self)
            assert self.configure_decay_optimizers()["optimizer"].param_groups[0]["name"] == "decay"
            config["lr_scheduler"]["name"] = "custom"
            return config

    model = TwoConfigs(decay=DecaySettings(optimizer="adamw-paper", weight_decay=1e-4))
    trainer = quiet_trainer()
    trainer.fit(model)
    assert trainer.optimizers[0].convention == "paper"
    assert trainer.lr_scheduler_configs[0].name == "custom"


def test_mixin_must_come_before_lightning_module() -> None:
    with pytest.raises(TypeError, match="list DecayMixin before LightningModule"):

        class Wrong(LightningModule, DecayMixin):
            pass


# --- checkpoints ---------------------------------------------------------------------------------------------------

RICH_SETTINGS = DecaySettings(
    optimizer="adamw",
    lr=0.02,
    decay_timescale_epochs=3.0,
    betas=(0.8, 0.99),
    warmup_steps=1,
    min_lr_ratio=0.1,
    groups=ParamGroupSettings(
        no_decay_embeddings=True, overrides=[GroupOverride("head", patterns=["net.head"], lr_scale=0.5)]
    ),
)


@pytest.mark.parametrize(
    "make",
    [
        lambda: TransformerLM(decay=RICH_SETTINGS),
        lambda: CNNClassifier(decay=RICH_SETTINGS.replace(groups=ParamGroupSettings())),
        lambda: LegacyFineTune().set_decay(RICH_SETTINGS.replace(groups=ParamGroupSettings())),
    ],
    ids=["kwargs", "explicit-argument", "no-argument"],
)
def test_checkpoint_reload_rebuilds_the_identical_optimizer(make, tmp_path: Path) -> None:
    model = make()
    trainer = quiet_trainer(max_epochs=1, max_steps=-1, default_root_dir=tmp_path)
    trainer.fit(model)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)  # plain hyperparameters: the safe loader reads them
    assert saved["hyper_parameters"]["decay"] == model.decay_settings.to_dict()

    reloaded = type(model).load_from_checkpoint(path)
    assert reloaded.decay_settings == model.decay_settings
    resumed = quiet_trainer(max_epochs=2, max_steps=-1, default_root_dir=tmp_path)
    resumed.fit(reloaded, ckpt_path=path)  # loading the optimizer state needs the same groups, in the same order
    assert group_table(resumed.optimizers[0]) == group_table(trainer.optimizers[0])
    schedule = resumed.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert schedule == trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    planned = "decay/planned_steps"  # the resumed fit plans 2 epochs, the first one 1
    assert {k: v for k, v in reloaded.resolved_decay.items() if k != planned} == {
        k: v for k, v in model.resolved_decay.items() if k != planned
    }


def test_timescale_is_resolved_logged_and_printed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """4 batches with accumulation 2: 2 steps per epoch; 3 epochs = 6 steps -> wd = 1 / (0.02 * 6)."""
    model = TransformerLM(decay=DecaySettings(lr=0.02, decay_timescale_epochs=3.0))
    trainer = quiet_trainer(
        max_epochs=1, max_steps=-1, accumulate_grad_batches=2, logger=CSVLogger(tmp_path, name="run", version=0)
    )
    with caplog.at_level(logging.INFO):
        trainer.fit(model)
    weight_decay = 1 / (0.02 * 6)
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == pytest.approx(weight_decay)
    assert model.resolved_decay["decay/weight_decay"] == pytest.approx(weight_decay)
    assert model.resolved_decay["decay/steps_per_epoch"] == 2
    assert model.resolved_decay["decay/timescale_epochs/decay"] == pytest.approx(3.0)
    hparams = yaml.safe_load((tmp_path / "run" / "version_0" / "hparams.yaml").read_text())
    assert hparams["decay/weight_decay"] == pytest.approx(weight_decay)
    assert hparams["decay"]["decay_timescale_epochs"] == 3.0
    messages = [r.getMessage() for r in caplog.records if "decay timescale" in r.getMessage()]
    assert len(messages) == 1
    assert "decay timescale 3 epochs at 2 steps/epoch" in messages[0]
    assert "decay: " in messages[0] and "weight_decay=8.33333 at lr=0.02, timescale 6 steps = 3 epochs" in messages[0]


def test_settings_are_plain_data_and_take_classes_and_names() -> None:
    settings = DecaySettings(
        optimizer=torch.optim.SGD, lr=0.1, weight_decay=1e-4, optimizer_kwargs={"momentum": 0.9},
        groups={"overrides": [{"name": "head", "modules": [nn.Linear], "lr_scale": 0.1}]},
    )
    assert settings.optimizer == "torch.optim.sgd.SGD"
    assert settings.groups.overrides[0].modules == ("torch.nn.modules.linear.Linear",)
    plain = settings.to_dict()
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain
    assert DecaySettings.coerce(plain) == settings
    assert DecaySettings.coerce("proxadam") == DecaySettings(optimizer="proxadam")
    assert TransformerLM(decay="adamw-paper").decay_settings.optimizer == "adamw-paper"
    model = CNNClassifier(decay=settings)
    model.set_decay(lr=0.05)
    assert model.decay_settings.lr == 0.05 and model.hparams["decay"]["lr"] == 0.05
    with pytest.raises(ValueError, match="total_steps"):
        model.configure_decay_optimizers()  # outside a fit, a cosine schedule needs total_steps
    config = model.set_decay(total_steps=10).configure_decay_optimizers()
    assert type(config["optimizer"]) is torch.optim.SGD
    by_name = {g["name"]: g for g in config["optimizer"].param_groups}
    assert by_name["head"]["initial_lr"] == pytest.approx(0.005) and by_name["head"]["weight_decay"] == 1e-4
    assert by_name["head_no_decay"]["weight_decay"] == 0.0 and by_name["no_decay"]["initial_lr"] == 0.05


# --- bad settings --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: DecaySettings(lr=-0.1), ValueError, "DecaySettings: lr must be a finite number >= 0"),
        (lambda: DecaySettings(optimizer="adamx"), ValueError, "valid variants: " + ", ".join(VARIANTS)),
        (lambda: DecaySettings(decay_timescale_epochs=0), ValueError, "decay_timescale_epochs must be a finite"),
        (lambda: DecaySettings(decay_timescale_epochs=-2.0), ValueError, "decay_timescale_epochs must be a finite"),
        (
            lambda: DecaySettings(optimizer="adaml2", decay_timescale_epochs=5),
            ValueError,
            "decay_timescale_epochs: variant 'adaml2' has no decay timescale",
        ),
        (lambda: DecaySettings(weight_decay=0.1, decay_timescale_epochs=5), ValueError, "not both"),
        (lambda: DecaySettings(lr=0.5, weight_decay=3.0), ValueError, "lr \\* weight_decay = 1.5 >= 1"),
        (lambda: DecaySettings(betas=(0.9,)), TypeError, "betas must be a pair"),
        (lambda: DecaySettings(optimizer_kwargs={"nesterov": True}), ValueError, "AdamW takes no argument 'nesterov'"),
        (lambda: DecaySettings(schedule="step"), ValueError, "schedule must be one of"),
        (lambda: DecaySettings(warmup_ratio=1.5), ValueError, "warmup_ratio must be"),
        (lambda: DecaySettings(groups={"no_decay_bais": True}), ValueError, "no_decay_bais"),
        (lambda: TransformerLM(decay={"lrr": 0.1}), ValueError, "decay.lrr: unknown key; valid keys: optimizer, lr"),
        (lambda: TransformerLM(decay=3), TypeError, "decay must be DecaySettings"),
        (
            lambda: TransformerLM(decay=DecaySettings(lr=0.1), optimizer_callable=functools.partial(AdamW)),
            ValueError,
            "decay.lr would be ignored",
        ),
        (lambda: TransformerLM(optimizer_callable="adamw"), TypeError, "optimizer_callable must be callable"),
        (
            lambda: TransformerLM(
                optimizer_callable=functools.partial(torch.optim.RMSprop, lr=0.1),
                decay=DecaySettings(decay_timescale_epochs=2.0),
            ),
            ValueError,
            "decay_timescale_epochs: the optimizer has no decay rule",
        ),
        (
            lambda: TransformerLM(lr_scheduler_callable=torch.optim.lr_scheduler.ReduceLROnPlateau),
            ValueError,
            "lr_scheduler_monitor",
        ),
        (
            lambda: TransformerLM(
                decay=DecaySettings(warmup_steps=3), lr_scheduler_callable=torch.optim.lr_scheduler.ExponentialLR
            ),
            ValueError,
            "decay.warmup_steps would be ignored",
        ),
        (lambda: LegacyFineTune().set_decay(lr=-1.0), ValueError, "lr must be a finite number >= 0"),
    ],
)
def test_bad_settings_fail_before_training_naming_the_setting(make, error, message) -> None:
    with pytest.raises(error, match=message):
        make()


def test_injected_scheduler_replaces_the_builtin_one() -> None:
    model = TransformerLM(
        decay=DecaySettings(lr_scheduler_interval="step"),  # the default is Lightning's: every epoch
        optimizer_callable=functools.partial(ProxAdam, lr=0.05, weight_decay=0.2),
        lr_scheduler_callable=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
    )
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(model)
    assert trainer.lr_scheduler_configs[0].interval == "step"
    assert "schedule: StepLR (lr_scheduler_callable), stepped every optimizer step" in model.decay_summary
    assert type(trainer.optimizers[0]) is ProxAdam
    assert [g["weight_decay"] for g in trainer.optimizers[0].param_groups] == [0.2, 0.0]
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**3)


# --- LightningCLI --------------------------------------------------------------------------------------------------

TRAINER_DEFAULTS = dict(
    accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False, max_steps=2,
)


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI reads sys.argv too; leave only the program name so ``args`` are the whole command line."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


def make_cli(args: list[str], model_class: type = TransformerLM) -> LightningCLI:
    return LightningCLI(
        model_class, run=False, args=args, trainer_defaults=TRAINER_DEFAULTS, save_config_callback=None,
        seed_everything_default=False,
    )


def test_cli_settings_keys_from_args_and_yaml(tmp_path: Path) -> None:
    cli = make_cli([
        "--model.decay.optimizer", "proxadam", "--model.decay.lr", "0.01", "--model.decay.weight_decay", "0.2",
        "--model.decay.groups.no_decay_embeddings", "true", "--model.decay.warmup_steps", "1",
    ])
    assert cli.model.decay_settings == DecaySettings(
        optimizer="proxadam", lr=0.01, weight_decay=0.2, warmup_steps=1,
        groups=ParamGroupSettings(no_decay_embeddings=True),
    )
    cli.trainer.fit(cli.model)
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is ProxAdam
    assert [(g["name"], g["weight_decay"]) for g in optimizer.param_groups] == [("decay", 0.2), ("no_decay", 0.0)]
    assert any(p is cli.model.net.embed.weight for p in optimizer.param_groups[1]["params"])

    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({
            "model": {
                "decay": {
                    "optimizer": "adamw-paper",
                    "weight_decay": 1e-4,
                    "schedule": "linear",
                    "groups": {"overrides": [{"name": "head", "patterns": ["net.head"], "lr_scale": 2.0}]},
                }
            }
        })
    )
    from_yaml = make_cli(["--config", str(config)])
    settings = from_yaml.model.decay_settings
    assert settings.optimizer == "adamw-paper" and settings.schedule == "linear"
    assert settings.groups.overrides == (GroupOverride("head", patterns=("net.head",), lr_scale=2.0),)


def test_cli_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--model.decay.optimizer", "adamw", "--model.decay.decay_timescale_epochs", "4",
            "--model.decay.groups.no_decay", "[pos_embed]", "--model.decay.betas", "[0.9, 0.95]"]
    with pytest.raises(SystemExit):
        make_cli([*args, "--print_config"])
    printed = capsys.readouterr().out
    assert "decay_timescale_epochs: 4" in printed
    config = tmp_path / "printed.yaml"
    config.write_text(printed)
    assert make_cli(["--config", str(config)]).model.decay_settings == make_cli(args).model.decay_settings


def test_cli_dependency_injection_keeps_groups_and_reloads(tmp_path: Path) -> None:
    cli = make_cli([
        "--model.optimizer_callable", "lightning_decay.AdamW", "--model.optimizer_callable.lr", "0.01",
        "--model.optimizer_callable.weight_decay", "0.05", "--model.optimizer_callable.convention", "paper",
        "--model.optimizer_callable.fused", "false",
    ])
    cli.trainer.fit(cli.model)
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is AdamW and optimizer.convention == "paper"
    assert [(g["name"], g["weight_decay"], g["initial_lr"]) for g in optimizer.param_groups] == [
        ("decay", 0.05, 0.01),
        ("no_decay", 0.0, 0.01),
    ]
    assert cli.model.hparams["optimizer_callable"]["class_path"].endswith("AdamW")
    path = tmp_path / "cli.ckpt"
    cli.trainer.save_checkpoint(path)
    reloaded = TransformerLM.load_from_checkpoint(path)
    rebuilt = reloaded.optimizer_callable([torch.nn.Parameter(torch.zeros(2))])
    assert type(rebuilt) is AdamW and rebuilt.convention == "paper" and rebuilt.defaults["weight_decay"] == 0.05

    config = tmp_path / "inject.yaml"
    config.write_text(
        yaml.safe_dump({
            "model": {
                "optimizer_callable": {"class_path": "lightning_decay.AdamL2", "init_args": {"weight_decay": 1e-3}},
                "lr_scheduler_callable": {
                    "class_path": "torch.optim.lr_scheduler.ExponentialLR", "init_args": {"gamma": 0.9}
                },
            }
        })
    )
    from_yaml = make_cli(["--config", str(config)])
    from_yaml.trainer.fit(from_yaml.model)
    assert type(from_yaml.trainer.optimizers[0]) is AdamL2
    assert [g["weight_decay"] for g in from_yaml.trainer.optimizers[0].param_groups] == [1e-3, 0.0]
    assert type(from_yaml.trainer.lr_scheduler_configs[0].scheduler) is torch.optim.lr_scheduler.ExponentialLR


def test_cli_top_level_optimizer_key_stops_the_fit_unless_allowed() -> None:
    """LightningCLI's top-level ``optimizer:`` replaces configure_optimizers and builds one group on
    model.parameters(), biases and norms decaying: a plain LightningCLI's fit stops at its start, naming the class."""
    with pytest.warns(UserWarning, match="configure_optimizers` will be overridden"):
        cli = make_cli(["--optimizer", "torch.optim.AdamW", "--optimizer.weight_decay", "0.1"])
    before = [p.detach().clone() for p in cli.model.parameters()]
    with pytest.raises(ValueError, match=r"^TransformerLM: LightningCLI's top-level `optimizer:` key replaced "
                       r"DecayMixin's optimizer with AdamW on model.parameters\(\): one parameter group"):
        cli.trainer.fit(cli.model)
    assert all(torch.equal(a, b) for a, b in zip(before, cli.model.parameters()))

    with pytest.warns(UserWarning, match="configure_optimizers` will be overridden"):
        cli = make_cli(["--optimizer", "torch.optim.AdamW", "--model.decay.allow_external_optimizer", "true"])
    cli.trainer.fit(cli.model)  # opted in: what the top-level key builds trains
    assert len(cli.trainer.optimizers[0].param_groups) == 1
    assert "name" not in cli.trainer.optimizers[0].param_groups[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model.decay.lr", "-1"], "DecaySettings: lr must be a finite number >= 0"),
        (["--model.decay.optimizer", "adam-w"], "valid variants: " + ", ".join(VARIANTS)),
        (["--model.decay.decay_timescale_epochs", "0"], "decay_timescale_epochs must be a finite number > 0"),
        (["--model.decay.groups.overrides", "[{name: head}]"], "GroupOverride 'head': give patterns or modules"),
    ],
)
def test_cli_bad_values_fail_before_training_naming_the_setting(args: list[str], message: str) -> None:
    """Values are checked when LightningCLI builds the model (before the trainer exists, let alone fits)."""
    with pytest.raises(ValueError, match=message):
        make_cli(args)


def test_cli_unknown_key_is_a_parse_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        make_cli(["--model.decay.lrr", "0.1"])
    assert "unrecognized arguments: --model.decay.lrr" in capsys.readouterr().err
