"""The configure_optimizers factory: variants by name, schedules, totals from the trainer, named groups in the
LearningRateMonitor, and clear errors."""

from __future__ import annotations

import csv
import functools
import inspect
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_decay.integration import WarmupSchedule, build_lr_scheduler, build_optimizer, build_optimizer_config
from lightning_decay.integration.factory import resolve_optimizer
from lightning_decay.integration.param_groups import GroupOverride, ParamGroupSettings
from lightning_decay.optim import VARIANTS, AdamW, ProxAdam, resolve_variant
from tests.test_param_groups import SmallCNN, TinyTransformer
from tests.variant_lists import ANY_TENSOR


def no_compile(cls: type) -> dict:
    """``fused=False`` where the class takes it: no compiled kernel (seconds to build) in these tests."""
    return {"fused": False} if "fused" in inspect.signature(cls).parameters else {}


# --- schedules -----------------------------------------------------------------------------------------------------


def test_warmup_then_cosine_values() -> None:
    schedule = WarmupSchedule(total_steps=14, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # no step at lr 0, the last at the peak
    assert schedule(4) == 1.0
    assert schedule(9) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert schedule(14) == pytest.approx(0.1) and schedule(100) == pytest.approx(0.1)
    values = [schedule(s) for s in range(4, 15)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_linear_and_constant_values() -> None:
    linear = WarmupSchedule(total_steps=10, warmup_steps=0, schedule="linear")
    assert [linear(s) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    constant = WarmupSchedule(total_steps=1, warmup_steps=2, schedule="constant")
    assert [constant(s) for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]


def test_scheduler_state_round_trips_the_schedule() -> None:
    model = nn.Linear(2, 2)
    first = build_lr_scheduler(AdamW(model.parameters()), "linear", warmup_steps=3, total_steps=50, min_lr_ratio=0.2)
    second = build_lr_scheduler(AdamW(model.parameters()), "cosine", total_steps=7)
    second.load_state_dict(first.state_dict())
    assert second.lr_lambdas[0] == WarmupSchedule(total_steps=50, warmup_steps=3, schedule="linear", min_lr_ratio=0.2)


def test_warmup_ratio_is_a_fraction_of_total() -> None:
    scheduler = build_lr_scheduler(AdamW(nn.Linear(2, 2).parameters()), warmup_ratio=0.1, total_steps=200)
    assert scheduler.lr_lambdas[0].warmup_steps == 20


# --- optimizers by name, class, path or callable ---------------------------------------------------------------------


@pytest.mark.parametrize("variant", ANY_TENSOR)
def test_every_variant_by_name(variant: str) -> None:
    cls, fixed = resolve_variant(variant)
    model = SmallCNN()
    config = build_optimizer_config(
        model, variant, lr=0.01, weight_decay=0.001, optimizer_kwargs=no_compile(cls), total_steps=10
    )
    optimizer = config["optimizer"]
    assert type(optimizer) is cls and optimizer.decay_rule.name == variant
    for key, value in fixed.items():
        assert getattr(optimizer, "decay_rule" if key == "rule" else key) == value
    assert [(g["name"], g["weight_decay"], g["initial_lr"]) for g in optimizer.param_groups] == [
        ("decay", 0.001, 0.01),
        ("no_decay", 0.0, 0.01),
    ]
    assert config["lr_scheduler"]["interval"] == "step"


def test_class_path_callable_and_class_forms() -> None:
    model = SmallCNN()
    sgd = build_optimizer(model, "torch.optim.SGD", lr=0.1, weight_decay=1e-4, optimizer_kwargs={"momentum": 0.9})
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9
    assert [g["weight_decay"] for g in sgd.param_groups] == [1e-4, 0.0]

    injected = build_optimizer(model, functools.partial(ProxAdam, lr=0.02, weight_decay=0.3))
    assert type(injected) is ProxAdam
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in injected.param_groups] == [
        ("decay", 0.02, 0.3),
        ("no_decay", 0.02, 0.0),
    ]
    paper = build_optimizer(model, AdamW, lr=0.1, optimizer_kwargs={"convention": "paper"})
    assert paper.convention == "paper" and paper.param_groups[0]["weight_decay"] == pytest.approx(1e-3)  # default


def test_lr_scale_with_an_injected_optimizer_uses_its_lr() -> None:
    settings = ParamGroupSettings(overrides=[GroupOverride("head", patterns=["head"], lr_scale=5.0)])
    optimizer = build_optimizer(SmallCNN(), functools.partial(AdamW, lr=0.002), groups=settings)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert by_name["head"]["lr"] == pytest.approx(0.01) and by_name["head_no_decay"]["lr"] == pytest.approx(0.01)
    assert by_name["decay"]["lr"] == 0.002


def test_adamc_groups_marked_not_normalized_keep_adamw_decay() -> None:
    """An override with ``normalized: false`` (the head) decays by AdamW's ``1 - lr_t wd``; the other decayed
    groups by AdamC's ``1 - lr_t^2 / lr_max wd``: checked on a real step with zero gradients (then ``u = 0`` and
    the step is the decay alone), at half the peak lr."""
    model = SmallCNN().double()
    head = {"name": "head", "patterns": ["head"], "normalized": False}
    optimizer = build_optimizer(model, "adamc", lr=0.1, weight_decay=0.5, groups={"overrides": [head]})
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert [by_name[n]["normalized"] for n in ("decay", "no_decay", "head", "head_no_decay")] == [1, 1, 0, 0]
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = 0.1, 0.05  # what a scheduler at half the peak leaves
    before = {id(p): p.detach().clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    expected = {"decay": 1 - 0.05**2 / 0.1 * 0.5, "head": 1 - 0.05 * 0.5, "no_decay": 1.0, "head_no_decay": 1.0}
    for name, factor in expected.items():
        for p in by_name[name]["params"]:
            torch.testing.assert_close(p.detach(), before[id(p)] * factor, rtol=1e-14, atol=0)
    with pytest.warns(UserWarning, match=r"normalized on group\(s\) \['head', 'head_no_decay'\].*AdamW ignores"):
        build_optimizer(SmallCNN(), "adamw", groups={"overrides": [head]})
    with pytest.raises(TypeError, match="GroupOverride 'head': normalized must be True, False or None"):
        GroupOverride("head", patterns=["head"], normalized="no")  # type: ignore[arg-type]


def test_timescale_resolves_per_group_through_the_rule() -> None:
    settings = ParamGroupSettings(overrides=[GroupOverride("head", patterns=["head"], lr_scale=10.0)])
    torch_conv = build_optimizer(SmallCNN(), "adamw", lr=1e-3, decay_timescale_steps=500, groups=settings)
    got = {g["name"]: g["weight_decay"] for g in torch_conv.param_groups}
    # torch convention tau = 1/(lr wd): the 10x lr head gets a 10x smaller wd, so both decay over 500 steps
    assert got == {"decay": pytest.approx(2.0), "no_decay": 0.0, "head": pytest.approx(0.2), "head_no_decay": 0.0}
    paper = build_optimizer(SmallCNN(), "adamw-paper", lr=1e-3, decay_timescale_steps=500, groups=settings)
    assert {g["name"]: g["weight_decay"] for g in paper.param_groups}["head"] == pytest.approx(1 / 500)
    injected = build_optimizer(SmallCNN(), functools.partial(AdamW, lr=0.01), decay_timescale_steps=50)
    assert injected.param_groups[0]["weight_decay"] == pytest.approx(2.0)


def test_plain_parameter_lists_are_used_as_given() -> None:
    model = SmallCNN()
    one_group = build_optimizer(model.parameters(), "adamw", lr=0.01, weight_decay=0.1)
    assert len(one_group.param_groups) == 1 and len(one_group.param_groups[0]["params"]) == 11
    given = build_optimizer([{"params": [model.conv1.weight], "name": "conv"}], "proxadam", weight_decay=0.5)
    assert given.param_groups[0]["name"] == "conv" and given.param_groups[0]["weight_decay"] == 0.5


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: build_optimizer(m, "adamww"), ValueError, "valid variants: " + ", ".join(VARIANTS)),
        (lambda m: build_optimizer(m, "adamw", lr=-0.1), ValueError, "lr must be a finite number >= 0"),
        (lambda m: build_optimizer(m, "adamw", weight_decay=-1.0), ValueError, "weight_decay must be"),
        (lambda m: build_optimizer(m, "adamw", lr=0.1, weight_decay=20.0), ValueError, "lr \\* weight_decay = 2"),
        (lambda m: build_optimizer(m, "adamw", betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be .* < 1"),
        (lambda m: build_optimizer(m, "torch.optim.SGD", lr=0.1, betas=(0.9, 0.99)), ValueError, "betas: SGD takes"),
        (lambda m: build_optimizer(m, "adamw", optimizer_kwargs={"momentun": 0.9}), ValueError, "'momentun'"),
        (lambda m: build_optimizer(m, "adamw-paper", optimizer_kwargs={"convention": "torch"}), ValueError, "fixes"),
        (lambda m: build_optimizer(m, "torch.nn.Linear"), ValueError, "not a torch.optim.Optimizer"),
        (lambda m: build_optimizer(m, "no.such.Optim"), ValueError, "neither a variant"),
        (lambda m: build_optimizer(m, functools.partial(AdamW), lr=0.1), ValueError, "set \\['lr'\\] in the callable"),
        (lambda m: build_optimizer(m, "adamw", weight_decay=0.1, decay_timescale_steps=10), ValueError, "not both"),
        (lambda m: build_optimizer(m, "adamw", decay_timescale_steps=1.0), ValueError, "decay_timescale_steps"),
        (lambda m: build_optimizer(m, "adaml2", decay_timescale_steps=100), ValueError, "no decay timescale"),
        (lambda m: build_optimizer_config(m, schedule="cosin", total_steps=5), ValueError, "schedule must be one of"),
        (lambda m: build_optimizer_config(m), ValueError, "total_steps: a cosine schedule needs total_steps"),
        (lambda m: build_optimizer_config(m, total_steps=5, warmup_steps=5), ValueError, "warmup_steps \\(5\\)"),
        (lambda m: build_optimizer_config(m, warmup_steps=2, warmup_ratio=0.1), ValueError, "not both"),
        (lambda m: build_optimizer_config(m, warmup_steps=-1), ValueError, "warmup_steps must be >= 0"),
        (lambda m: build_optimizer_config(m, total_steps=0), ValueError, "total_steps must be >= 1"),
        (lambda m: build_optimizer_config(m, min_lr_ratio=2.0), ValueError, "min_lr_ratio must be"),
        (lambda m: build_optimizer_config(m, decay_timescale_epochs=0.0), ValueError, "decay_timescale_epochs must"),
        (lambda m: build_optimizer_config(m, decay_timescale_epochs=2.0), ValueError, "needs steps_per_epoch"),
        (
            lambda m: build_optimizer_config(m, decay_timescale_epochs=0.5, steps_per_epoch=2, total_steps=9),
            ValueError,
            "it must be more than 1 step",
        ),
        (
            lambda m: build_optimizer_config(
                m, lr_scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau)
            ),
            ValueError,
            "lr_scheduler_monitor",
        ),
    ],
)
def test_bad_settings_are_named(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call(SmallCNN())


def test_resolve_optimizer_lists_every_registered_variant() -> None:
    with pytest.raises(ValueError) as raised:
        resolve_optimizer("adam-w")
    for name in VARIANTS:
        assert name in str(raised.value)
    assert resolve_optimizer("AdamW_Paper") == VARIANTS["adamw-paper"]


# --- with a real Trainer -------------------------------------------------------------------------------------------


class LanguageModel(LightningModule):
    """TinyTransformer on random tokens; configure_optimizers uses the factory with the given options."""

    def __init__(self, batches: int = 5, **options) -> None:
        super().__init__()
        self.net = TinyTransformer()
        self.options = options
        self.batches = batches

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        logits = self.net(tokens[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    def train_dataloader(self) -> DataLoader:
        tokens = torch.randint(0, 11, (4 * self.batches, 7), generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(tokens), batch_size=4)

    def configure_optimizers(self):
        return build_optimizer_config(self, trainer=self.trainer, **self.options)


def quiet_trainer(**kwargs) -> Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    return Trainer(**{**defaults, **kwargs})


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_lr_monitor_shows_group_names_and_the_schedule(tmp_path: Path) -> None:
    """A real fit: 5 batches x 2 epochs with accumulation 2 is 6 optimizer steps (total from the trainer); the
    CSV has one lr column per named group, following warmup + cosine."""
    model = LanguageModel(optimizer="adamw", lr=0.01, weight_decay=0.1, warmup_steps=2, min_lr_ratio=0.1)
    trainer = quiet_trainer(
        max_epochs=2, accumulate_grad_batches=2, logger=CSVLogger(tmp_path, name="run", version=0),
        callbacks=[LearningRateMonitor(logging_interval="step")], log_every_n_steps=1,
    )
    trainer.fit(model)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.lr_lambdas[0] == WarmupSchedule(total_steps=6, warmup_steps=2, min_lr_ratio=0.1)
    rows = [r for r in read_csv(tmp_path / "run" / "version_0" / "metrics.csv") if r.get("lr-AdamW/decay")]
    assert {"lr-AdamW/decay", "lr-AdamW/no_decay"} <= set(rows[0])
    rows = list({int(r["step"]): r for r in reversed(rows)}.values())[::-1]  # one row per optimizer step
    lrs = [float(r["lr-AdamW/decay"]) for r in rows]
    expected = [0.01 * scheduler.lr_lambdas[0](step) for step in range(6)]
    assert lrs == pytest.approx(expected)
    assert [float(r["lr-AdamW/no_decay"]) for r in rows] == pytest.approx(expected)
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == 0.1


def test_timescale_in_epochs_from_the_trainer() -> None:
    """5 batches, accumulation 2: 3 optimizer steps per epoch; tau = 4 epochs = 12 steps -> wd = 1/(lr * 12)."""
    model = LanguageModel(optimizer="adamw", lr=0.01, decay_timescale_epochs=4.0, schedule="constant")
    trainer = quiet_trainer(max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(model)
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == pytest.approx(1 / (0.01 * 12))
    assert math.isclose(trainer.estimated_stepping_batches, 3)
