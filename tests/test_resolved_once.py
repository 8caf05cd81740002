"""Settings are checked once and then trusted (issue 26): what the settings resolved is what the plan builds, a
new optimizer group is checked for what it changes (and nothing it changes goes unchecked), and the four settings
records read back what they write."""

from __future__ import annotations

import pickle

import pytest
import torch
from lightning.pytorch import LightningModule
from torch import nn

import lightning_decay.integration.construction as construction
from lightning_decay import AdamW, DecayMixin, DecaySettings, ProxAdam
from lightning_decay.experiments import ImageClassifier
from lightning_decay.integration.group_settings import GroupOverride, ParamGroupSettings
from lightning_decay.integration.muon_split import OthersSettings
from lightning_decay.optim.registry import REGISTRY


class TinyNet(DecayMixin, LightningModule):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


@pytest.mark.parametrize("variant", ["adamw", "adamw-paper", "proxadam", "adaml2", "sgdw", "adamc"])
def test_the_plan_builds_what_the_settings_resolved_without_resolving_again(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = DecaySettings(optimizer=variant, lr=2e-3, weight_decay=0.05, total_steps=10)
    assert settings.constructor.record is REGISTRY[variant]
    DecaySettings.defaults()  # made once per process (the defaults the mixin compares a model's settings with)
    resolved: list[object] = []
    real = construction._resolve_class
    monkeypatch.setattr(construction, "_resolve_class", lambda *args: resolved.append(args) or real(*args))
    model = TinyNet(decay=settings)
    optimizer = model.configure_optimizers()["optimizer"]
    assert resolved == [], "configuring the model looked the variant up again"
    recipe = model.decay_plan.optimizers[0]
    assert type(optimizer) is settings.constructor.cls and recipe.variant == variant
    assert recipe.kwargs == dict(settings.constructor.kwargs)
    # an unpickled copy (a checkpoint's hparams) resolves the same optimizer again, on first use
    copy = pickle.loads(pickle.dumps(settings))
    assert copy == settings and copy.constructor == settings.constructor


@pytest.mark.parametrize(
    ("second_group", "error", "match"),
    [
        ({"lr": -1.0, "name": "bias"}, ValueError, r"lr \(param group 1 'bias'\) must be"),
        ({"weight_decay": -0.1}, ValueError, r"weight_decay \(param group 1\) must be"),
        ({"lr": 2.0, "weight_decay": 0.6}, ValueError, r"lr \* weight_decay = 1.2 >= 1.*\(param group 1\)"),
        ({"betas": (0.9, 1.5)}, ValueError, r"betas\[1\] \(param group 1\) must be"),
        ({"maximize": "yes"}, TypeError, r"maximize \(param group 1\) must be True, False or None"),
        ({"eps": -1.0}, ValueError, r"eps \(param group 1\) must be"),
        ({"lr": torch.tensor(-1.0)}, ValueError, r"lr \(param group 1\)"),
    ],
)
def test_a_group_after_a_checked_one_is_checked_for_what_it_changes(
    second_group: dict[str, object], error: type[Exception], match: str
) -> None:
    weight, bias = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2))
    with pytest.raises(error, match=match):
        AdamW([{"params": [weight]}, {"params": [bias], **second_group}], lr=1e-3)


def test_a_group_that_changes_only_its_lr_and_weight_decay_trains_as_its_own() -> None:
    """The partial check changes nothing but the checking: each group steps with its own lr and weight decay."""
    torch.manual_seed(0)
    weights = [nn.Parameter(torch.randn(3, 3)) for _ in range(2)]
    optimizer = ProxAdam([{"params": [weights[0]]}, {"params": [weights[1]], "lr": 1e-2, "weight_decay": 0.5}],
                         lr=1e-3, weight_decay=0.0)
    before = [w.detach().clone() for w in weights]
    for w in weights:
        w.grad = torch.zeros_like(w)
    optimizer.step()
    # zero gradients: only the decay acts; proximal step w / (1 + lr_t * wd / lr_0) = w / (1 + 0.5) in group 1
    torch.testing.assert_close(weights[0].detach(), before[0], rtol=0, atol=0)
    torch.testing.assert_close(weights[1].detach(), before[1] / 1.5, rtol=1e-6, atol=0)


def _override() -> GroupOverride:
    return GroupOverride(name="head", patterns=("net.2.*",), lr_scale=0.5, normalized=False)


@pytest.mark.parametrize(
    "record",
    [
        _override(),
        ParamGroupSettings(no_decay=("net.0.bias",), overrides=(_override(),), transposed=("x.*",)),
        OthersSettings(optimizer="adamw-paper", lr=1e-3, betas=(0.9, 0.95), muon_exclude=("head.*",)),
        DecaySettings(optimizer="muon", lr=2e-2, betas=None, others={"optimizer": "adamw", "lr": 1e-3},
                      groups={"no_decay_embeddings": True, "overrides": [{"name": "a", "patterns": ["x"]}]}),
    ],
    ids=["GroupOverride", "ParamGroupSettings", "OthersSettings", "DecaySettings"],
)
def test_every_settings_record_reads_back_what_it_writes(record: object) -> None:
    plain = record.to_dict()  # type: ignore[attr-defined]
    assert "tuple" not in repr(plain)  # YAML- and weights_only-safe: lists, dicts, numbers, strings
    assert type(record).coerce(plain) == record  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: DecaySettings.coerce({"lrr": 0.1}), "decay.lrr"),
        (lambda: ParamGroupSettings.coerce({"no_decay_bais": True}), "decay.groups.no_decay_bais"),
        (lambda: GroupOverride.coerce({"name": "x", "pattern": ["a"]}), "decay.groups.overrides.pattern"),
        (lambda: DecaySettings(optimizer="muon", others={"optimzer": "adamw"}), "decay.others.optimzer"),
    ],
)
def test_an_unknown_settings_key_is_named_with_its_config_path(make: object, key: str) -> None:
    with pytest.raises(ValueError, match=rf"{key.replace('.', '[.]')}: unknown key; valid keys: "):
        make()  # type: ignore[operator]


def test_image_classifier_width_and_stages_set_the_small_cnn_and_are_refused_where_unused() -> None:
    convolutions = [m for m in ImageClassifier("small_cnn", width=24).modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convolutions] == [24, 48]
    default = [m for m in ImageClassifier("small_cnn").modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in default] == [16, 32]
    with pytest.raises(ValueError, match="width=32 is not used by architecture='mlp'"):
        ImageClassifier("mlp", width=32)
    deeper = [m for m in ImageClassifier("small_cnn", width=8, stages=3).modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in deeper] == [8, 16, 32]
    assert ImageClassifier("small_cnn", stages=3)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    for architecture in ("resnet20", "mlp"):
        with pytest.raises(ValueError, match=f"stages=3 is not used by architecture='{architecture}'"):
            ImageClassifier(architecture, stages=3)
    with pytest.raises(ValueError, match="stages"):
        ImageClassifier("small_cnn", stages=0)
