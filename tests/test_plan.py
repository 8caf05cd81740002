"""The DecayPlan: settings resolved once, printable, serialisable, and the one source of the mixin's optimizer, its
summary and hyperparameters, and of the plain factory's optimizer."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from lightning.pytorch import LightningModule
from torch import nn

from lightning_decay import DecayMixin, DecayPlan, DecaySettings, build_optimizer_config
from lightning_decay.integration import build, resolve


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Model(DecayMixin, LightningModule):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = Net()


SETTINGS = DecaySettings(optimizer="adamw-paper", lr=3e-3, weight_decay=1e-4, warmup_steps=2, total_steps=20,
                         groups={"overrides": [{"name": "head", "patterns": ["net.head"], "lr_scale": 0.5}]})


def group_table(optimizer: torch.optim.Optimizer) -> list[tuple]:
    return [(g["name"], g["lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in optimizer.param_groups]


def test_the_mixin_keeps_the_plan_it_built_from_and_reports_from_it() -> None:
    model = Model(decay=SETTINGS)
    config = model.configure_optimizers()
    plan = model.decay_plan
    assert isinstance(plan, DecayPlan)
    assert str(plan) == model.decay_summary and plan.hparams() == model.resolved_decay
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.groups = ()  # type: ignore[misc]
    optimizer = config["optimizer"]
    assert [(g.name, g.lr, g.weight_decay) for g in plan.groups] == [
        (g["name"], g["initial_lr"], g["weight_decay"]) for g in optimizer.param_groups
    ] == [("decay", 3e-3, 1e-4), ("no_decay", 3e-3, 0.0), ("head", 1.5e-3, 1e-4), ("head_no_decay", 1.5e-3, 0.0)]
    names = dict(model.named_parameters())
    for group, built in zip(plan.groups, optimizer.param_groups):
        assert [id(names[n]) for n in group.parameters] == [id(p) for p in built["params"]]
        assert len(group.reasons) == len(group.parameters)
    assert plan.groups[0].timescale_steps == pytest.approx(1 / 1e-4)  # paper convention: 1 / wd steps


def test_the_plan_is_plain_data_and_builds_again_identically() -> None:
    model = Model()
    plan = resolve(SETTINGS, model)
    plain = json.loads(json.dumps(plan.to_dict()))
    assert plain["settings"] == SETTINGS.to_dict()
    assert plain["schedule"] == {"source": "built-in", "interval": "step", "scheduler": "LambdaLR",
                                 "schedule": "cosine", "warmup_steps": 2, "total_steps": 20, "min_lr_ratio": 0.0,
                                 "monitor": None}
    assert [g["name"] for g in plain["groups"]] == ["decay", "no_decay", "head", "head_no_decay"]
    first, second = build(plan, model), build(plan, model)
    assert group_table(first["optimizer"]) == group_table(second["optimizer"])


def test_the_plain_factory_builds_the_same_optimizer_as_the_mixin() -> None:
    model = Model(decay=SETTINGS)
    mixin = model.configure_optimizers()["optimizer"]
    factory = build_optimizer_config(model, "adamw-paper", 3e-3, 1e-4, warmup_steps=2, total_steps=20,
                                     groups=SETTINGS.groups)["optimizer"]
    assert type(factory) is type(mixin) and group_table(factory) == group_table(mixin)
