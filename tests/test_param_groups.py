"""Parameter groups on real models, checked parameter by parameter: nothing lost, nothing duplicated."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lightning_decay.integration.param_groups import (
    DECAY,
    NO_DECAY,
    GroupOverride,
    ParamGroupSettings,
    assign_param_groups,
    build_param_groups,
    summarize_param_groups,
)
from lightning_decay.optim import AdamW

# --- models (also used by test_mixin.py) ---------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """conv (no bias) -> BatchNorm -> conv (bias) -> GroupNorm -> InstanceNorm (affine) -> linear head."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.inorm(self.gn(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


class Block(nn.Module):
    """Pre-norm transformer block: LayerNorm, multi-head attention, RMSNorm, MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.ln2 = nn.RMSNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """Token embedding tied to the output projection, a learned position embedding listed in ``no_weight_decay()``
    (timm's convention), a 0-D learned logit scale, one block and a final LayerNorm."""

    def __init__(self, vocab: int = 11, dim: int = 8, length: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, length, dim))
        self.logit_scale = nn.Parameter(torch.ones(()))
        self.block = Block(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.head.weight = self.embed.weight  # tied input/output weights

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos_embed[:, : tokens.shape[1]]
        return self.logit_scale * self.head(self.norm(self.block(x)))


class FrozenBackbone(nn.Module):
    """A frozen SmallCNN feature extractor (fine-tuning): only ``head`` trains."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.backbone = SmallCNN(num_classes=4)
        self.backbone.requires_grad_(False)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def groups_by_name(model: nn.Module, groups: list[dict]) -> dict[str, str]:
    """Parameter name -> group name, read back from the group dicts (via the tensors' identities)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return {names[id(p)]: group["name"] for group in groups for p in group["params"]}


def assert_partition(model: nn.Module, groups: list[dict]) -> None:
    """Every trainable parameter in exactly one group, no frozen one anywhere, no duplicates."""
    in_groups = [id(p) for group in groups for p in group["params"]]
    assert len(in_groups) == len(set(in_groups)), "a parameter is in two groups (or twice in one)"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(in_groups) == trainable
    assert all(len(group["params"]) > 0 for group in groups)
    assert len({group["name"] for group in groups}) == len(groups)


CNN_DEFAULT = {
    "conv1.weight": DECAY,
    "bn1.weight": NO_DECAY,
    "bn1.bias": NO_DECAY,
    "conv2.weight": DECAY,
    "conv2.bias": NO_DECAY,
    "gn.weight": NO_DECAY,
    "gn.bias": NO_DECAY,
    "inorm.weight": NO_DECAY,
    "inorm.bias": NO_DECAY,
    "head.weight": DECAY,
    "head.bias": NO_DECAY,
}

TRANSFORMER_DEFAULT = {
    "pos_embed": NO_DECAY,  # 3-D, only the model's no_weight_decay() keeps it from decaying
    "logit_scale": NO_DECAY,  # 0-D
    "embed.weight": DECAY,  # tied with head.weight: once, under its first name
    "block.ln1.weight": NO_DECAY,
    "block.ln1.bias": NO_DECAY,
    "block.attn.in_proj_weight": DECAY,
    "block.attn.in_proj_bias": NO_DECAY,
    "block.attn.out_proj.weight": DECAY,
    "block.attn.out_proj.bias": NO_DECAY,
    "block.ln2.weight": NO_DECAY,
    "block.mlp.0.weight": DECAY,
    "block.mlp.0.bias": NO_DECAY,
    "block.mlp.2.weight": DECAY,
    "block.mlp.2.bias": NO_DECAY,
    "norm.weight": NO_DECAY,
    "norm.bias": NO_DECAY,
    "head.bias": NO_DECAY,
}


@pytest.mark.parametrize(
    "make_model, expected",
    [(SmallCNN, CNN_DEFAULT), (TinyTransformer, TRANSFORMER_DEFAULT)],
    ids=["cnn", "transformer"],
)
def test_default_groups_parameter_by_parameter(make_model, expected) -> None:
    model = make_model()
    groups = build_param_groups(model)
    assert_partition(model, groups)
    assert groups_by_name(model, groups) == expected
    assert [g["name"] for g in groups] == [DECAY, NO_DECAY]
    decay, no_decay = groups
    assert "weight_decay" not in decay and "lr" not in decay  # the optimizer's own settings apply
    assert no_decay["weight_decay"] == 0.0


def test_norm_rule_alone_catches_every_normalization_layer() -> None:
    """With the bias and 1-D rules off, only the norm rule removes decay: BatchNorm, GroupNorm, InstanceNorm,
    LayerNorm and RMSNorm parameters, and no other bias."""
    settings = ParamGroupSettings(no_decay_bias=False, no_decay_1d=False)
    cnn = assign_param_groups(SmallCNN(), settings)
    assert {a.name for a in cnn if a.group == NO_DECAY} == {
        "bn1.weight", "bn1.bias", "gn.weight", "gn.bias", "inorm.weight", "inorm.bias"
    }
    assert {a.reason for a in cnn if a.group == NO_DECAY} == {
        "normalization layer (BatchNorm2d)", "normalization layer (GroupNorm)", "normalization layer (InstanceNorm2d)"
    }
    transformer = {a.name: a for a in assign_param_groups(TinyTransformer(), settings)}
    for name in ("block.ln1.weight", "block.ln1.bias", "block.ln2.weight", "norm.weight", "norm.bias"):
        assert transformer[name].group == NO_DECAY, name
    assert transformer["block.ln2.weight"].reason == "normalization layer (RMSNorm)"
    assert transformer["block.mlp.0.bias"].group == DECAY
    assert transformer["logit_scale"].group == DECAY


def test_every_rule_off_gives_one_decay_group() -> None:
    model = TinyTransformer()
    settings = ParamGroupSettings(
        no_decay_bias=False, no_decay_norm=False, no_decay_1d=False, model_no_weight_decay=False
    )
    groups = build_param_groups(model, settings)
    assert [g["name"] for g in groups] == [DECAY]
    assert_partition(model, groups)


def test_tied_weights_once_under_both_names_and_embeddings_optional() -> None:
    model = TinyTransformer()
    by_name = {a.name: a for a in assign_param_groups(model)}
    assert by_name["embed.weight"].names == ("embed.weight", "head.weight")
    assert "head.weight" not in by_name
    assert sum(p is model.embed.weight for g in build_param_groups(model) for p in g["params"]) == 1

    with_embeddings = {a.name: a for a in assign_param_groups(model, ParamGroupSettings(no_decay_embeddings=True))}
    assert with_embeddings["embed.weight"].group == NO_DECAY
    assert with_embeddings["embed.weight"].reason == "embedding"
    expected = {**TRANSFORMER_DEFAULT, "embed.weight": NO_DECAY}
    assert {name: a.group for name, a in with_embeddings.items()} == expected


def test_frozen_parameters_are_in_no_group() -> None:
    model = FrozenBackbone()
    groups = build_param_groups(model)
    assert_partition(model, groups)
    assert groups_by_name(model, groups) == {"head.weight": DECAY, "head.bias": NO_DECAY}
    model.head.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_param_groups(model)


def test_model_no_weight_decay_is_honoured_in_submodules_and_can_be_switched_off() -> None:
    class Backbone(nn.Module):  # timm-style: names relative to the module, keywords as substrings
        def __init__(self) -> None:
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.rel_pos_table = nn.Parameter(torch.zeros(3, 4))
            self.proj = nn.Linear(4, 4)

        def no_weight_decay(self) -> list[str]:
            return ["cls_token"]

        def no_weight_decay_keywords(self) -> set[str]:
            return {"rel_pos"}

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = Backbone()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))  # same local name, outside the backbone: decays

    assignments = {a.name: a for a in assign_param_groups(Wrapper())}
    assert assignments["backbone.cls_token"].group == NO_DECAY
    assert assignments["backbone.cls_token"].reason == "model's no_weight_decay(): 'backbone.cls_token'"
    assert assignments["backbone.rel_pos_table"].group == NO_DECAY
    assert assignments["cls_token"].group == DECAY
    assert assignments["backbone.proj.weight"].group == DECAY
    off = {a.name: a.group for a in assign_param_groups(Wrapper(), ParamGroupSettings(model_no_weight_decay=False))}
    assert off["backbone.cls_token"] == DECAY and off["backbone.rel_pos_table"] == DECAY


def test_overrides_by_pattern_and_module_type() -> None:
    model = TinyTransformer()
    settings = ParamGroupSettings(
        no_decay=["block.ln2"],
        overrides=[
            GroupOverride("head", patterns=["head"], lr_scale=10.0),  # lr only: its bias stays without decay
            GroupOverride("mlp", modules=["torch.nn.Sequential"], weight_decay=0.5, lr=0.2),
            GroupOverride("no_decay", modules=[nn.MultiheadAttention]),  # a class: stored as its dotted path
            GroupOverride("decay", patterns=["logit_scale"]),  # force decay on a 0-D parameter
        ],
    )
    assert settings.overrides[2].modules == ("torch.nn.modules.activation.MultiheadAttention",)
    groups = build_param_groups(model, settings, base_lr=0.01)
    assert_partition(model, groups)
    got = groups_by_name(model, groups)
    assert got == {
        **TRANSFORMER_DEFAULT,
        "embed.weight": "head",  # tied: the alias head.weight matches the pattern
        "head.bias": "head_no_decay",
        "block.mlp.0.weight": "mlp",
        "block.mlp.0.bias": "mlp",  # an explicit weight_decay applies to everything the override matches
        "block.mlp.2.weight": "mlp",
        "block.mlp.2.bias": "mlp",
        "block.attn.in_proj_weight": NO_DECAY,
        "block.attn.out_proj.weight": NO_DECAY,
        "logit_scale": DECAY,
    }
    by_name = {g["name"]: g for g in groups}
    assert [g["name"] for g in groups] == ["decay", "no_decay", "head", "head_no_decay", "mlp"]
    assert by_name["head"]["lr"] == pytest.approx(0.1) and "weight_decay" not in by_name["head"]
    assert by_name["head_no_decay"]["lr"] == pytest.approx(0.1) and by_name["head_no_decay"]["weight_decay"] == 0.0
    assert by_name["mlp"]["lr"] == 0.2 and by_name["mlp"]["weight_decay"] == 0.5
    assert all("lr_scale" not in g for g in groups)
    reasons = {a.name: a.reason for a in assign_param_groups(model, settings)}
    assert reasons["head.bias"] == "override 'head': pattern 'head'; bias"
    assert reasons["block.ln2.weight"] == "no_decay pattern 'block.ln2'"
    assert reasons["block.mlp.0.weight"] == "override 'mlp': inside a torch.nn.Sequential"


def test_overrides_match_in_order_and_by_class_name_including_subclasses() -> None:
    class MyNorm(nn.LayerNorm):
        pass

    model = nn.Sequential(nn.Linear(3, 3), MyNorm(3))
    settings = ParamGroupSettings(
        overrides=[
            GroupOverride("norms", modules=["LayerNorm"], weight_decay=0.0),
            GroupOverride("all", patterns=["*"], weight_decay=0.1),
        ]
    )
    got = {a.name: a.group for a in assign_param_groups(model, settings)}
    assert got == {"0.weight": "all", "0.bias": "all", "1.weight": "norms", "1.bias": "norms"}


def test_lr_scale_needs_base_lr_and_unused_settings_warn() -> None:
    settings = ParamGroupSettings(overrides=[GroupOverride("head", patterns=["head.*"], lr_scale=2.0)])
    with pytest.raises(ValueError, match="base_lr"):
        build_param_groups(SmallCNN(), settings)
    with pytest.warns(UserWarning, match=r"no_decay pattern 'nothing\.here', override 'typo' decided the group of no"):
        build_param_groups(
            SmallCNN(), ParamGroupSettings(no_decay=["nothing.here"], overrides=[{"name": "typo", "patterns": ["x"]}])
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_param_groups(SmallCNN(), ParamGroupSettings(no_decay=["head.weight"]))


def test_custom_norm_classes_by_name() -> None:
    class LayerNorm2d(nn.Module):  # timm/HF style norms that do not subclass torch's
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))

    class Normalizer(nn.Module):  # not a norm by its name's ending
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))

    model = nn.ModuleDict({"a": LayerNorm2d(), "b": Normalizer()})
    got = {a.name: a.group for a in assign_param_groups(model, ParamGroupSettings(no_decay_1d=False))}
    assert got == {"a.weight": NO_DECAY, "b.weight": DECAY}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: GroupOverride("x"), "give patterns or modules"),
        (lambda: GroupOverride("x", patterns=["a"], lr=0.1, lr_scale=2.0), "lr and lr_scale are exclusive"),
        (lambda: GroupOverride("x", patterns=["a"], weight_decay=-1.0), "weight_decay must be a finite number >= 0"),
        (lambda: GroupOverride("x", patterns=["a"], lr=-1.0), "lr must be a finite number >= 0"),
        (lambda: GroupOverride("decay", patterns=["a"], lr=0.1), "built-in group 'decay' takes no"),
        (lambda: GroupOverride("", patterns=["a"]), "name must be a non-empty string"),
        (lambda: ParamGroupSettings(no_decay_bias="yes"), "no_decay_bias must be True or False"),
        (lambda: ParamGroupSettings.coerce({"no_decay_bias": True, "no_decay_bais": False}), "no_decay_bais"),
        (lambda: GroupOverride.coerce({"name": "x", "pattern": ["a"]}), r"overrides\.pattern: unknown key"),
        (
            lambda: ParamGroupSettings(
                overrides=[{"name": "h", "patterns": ["a"], "lr": 0.1}, {"name": "h", "patterns": ["b"]}]
            ),
            "given twice",
        ),
    ],
)
def test_bad_group_settings_fail_with_the_setting_named(make, message) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        make()


def test_plain_dict_round_trip() -> None:
    settings = ParamGroupSettings(
        no_decay_embeddings=True,
        no_decay=["pos_*"],
        overrides=[GroupOverride("head", patterns="head.*", lr=0.1, normalized=False)],
    )
    plain = settings.to_dict()
    assert plain["overrides"] == [
        {"name": "head", "patterns": ["head.*"], "modules": [], "weight_decay": None, "lr": 0.1, "lr_scale": None,
         "normalized": False}
    ]
    assert ParamGroupSettings.coerce(plain) == settings
    old_checkpoint = {**plain, "overrides": [{k: v for k, v in plain["overrides"][0].items() if k != "normalized"}]}
    assert ParamGroupSettings.coerce(old_checkpoint).overrides[0].normalized is None  # saved before the key existed


def test_groups_build_a_real_optimizer_with_readable_names() -> None:
    model = SmallCNN()
    optimizer = AdamW(build_param_groups(model), lr=1e-3, weight_decay=0.05)
    assert [(g["name"], g["weight_decay"]) for g in optimizer.param_groups] == [("decay", 0.05), ("no_decay", 0.0)]
    summary = summarize_param_groups(optimizer.param_groups)
    assert summary.splitlines()[0] == "decay: 3 tensors, 264 parameters (weight_decay=0.05, lr=0.001)"


def test_lazy_modules_must_be_materialized_first() -> None:
    model = nn.Sequential(nn.LazyLinear(3))
    with pytest.raises(ValueError, match="uninitialized"):
        build_param_groups(model)
    model(torch.zeros(2, 5))
    assert [g["name"] for g in build_param_groups(model)] == [DECAY, NO_DECAY]
