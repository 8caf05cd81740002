"""Tests for lightning_decay.experiments.models and the arguments of ImageClassifier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_decay.experiments import ImageClassifier
from lightning_decay.experiments.models import MODELS, ResNet20, SmallCNN, build_model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet20_param_count() -> None:
    assert 260_000 <= n_params(ResNet20()) <= 280_000


def test_resnet20_has_20_weight_layers_and_option_a_shortcuts() -> None:
    model = ResNet20()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # stem + 9 blocks x 2; option-A shortcuts add no 1x1 convs
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert len([m for m in model.modules() if isinstance(m, nn.Linear)]) == 1
    assert [m.out_channels for m in (model.layer1[0].conv1, model.layer2[0].conv1, model.layer3[0].conv1)] == [
        16,
        32,
        64,
    ]


@pytest.mark.parametrize("batch_norm", [True, False])
def test_resnet20_batch_norm_switch(batch_norm: bool) -> None:
    model = ResNet20(batch_norm=batch_norm)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert has_bn is batch_norm
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all((c.bias is not None) is (not batch_norm) for c in convs)
    assert 260_000 <= n_params(model) <= 280_000


@pytest.mark.parametrize(
    ("kwargs", "size"), [({}, 32), ({"num_classes": 100}, 32), ({"width": 8, "batch_norm": False}, 32), ({}, 64)]
)
def test_resnet20_forward_shapes(kwargs: dict, size: int) -> None:
    model = ResNet20(**kwargs)
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, kwargs.get("num_classes", 10))
    assert torch.isfinite(out).all()


def test_resnet20_width_scales_params() -> None:
    assert n_params(ResNet20(width=32)) > 3.5 * n_params(ResNet20(width=16))
    ResNet20(width=5)(torch.randn(1, 3, 32, 32))  # odd widths: uneven zero padding in the shortcut


@pytest.mark.parametrize("batch_norm", [True, False])
def test_resnet20_zero_init_residual_blocks_start_as_identity(batch_norm: bool) -> None:
    model = ResNet20(batch_norm=batch_norm, zero_init_residual=True).eval()
    x = torch.relu(torch.randn(2, 16, 8, 8))
    block = model.layer1[1]
    if not batch_norm:
        assert torch.equal(block.conv2.weight, torch.zeros_like(block.conv2.weight))
    torch.testing.assert_close(block(x), x)


def test_resnet20_backward() -> None:
    model = ResNet20(width=4)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("batch_norm", [True, False])
def test_small_cnn(batch_norm: bool) -> None:
    model = SmallCNN(num_classes=7, channels=(8, 16, 16), batch_norm=batch_norm)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 7)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) is batch_norm
    assert n_params(SmallCNN()) < 10_000


def test_small_cnn_rejects_bad_channels() -> None:
    with pytest.raises(ValueError, match="channels"):
        SmallCNN(channels=())
    with pytest.raises(ValueError, match=r"channels\[1\]"):
        SmallCNN(channels=(4, 0))
    with pytest.raises(TypeError, match=r"channels\[0\]"):
        SmallCNN(channels=(4.0,))


@pytest.mark.parametrize(
    ("model", "kwargs", "error"),
    [
        (ResNet20, {"num_classes": 0}, ValueError),
        (ResNet20, {"width": 0}, ValueError),
        (ResNet20, {"width": 8.0}, TypeError),
        (SmallCNN, {"num_classes": 0}, ValueError),
        (SmallCNN, {"num_classes": True}, TypeError),
    ],
)
def test_models_reject_bad_sizes(model: type[nn.Module], kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error, match=next(iter(kwargs))):
        model(**kwargs)


@pytest.mark.parametrize(("loss_scale", "error"), [(0.0, ValueError), (float("inf"), ValueError), (True, TypeError)])
def test_image_classifier_rejects_bad_loss_scale(loss_scale: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="loss_scale"):
        ImageClassifier(architecture="small_cnn", loss_scale=loss_scale)


def test_image_classifier_builds_the_named_network() -> None:
    model = ImageClassifier(architecture="small_cnn", batch_norm=False, num_classes=7, loss_scale=4)
    assert isinstance(model.network, SmallCNN) and model.network.fc.out_features == 7
    assert model.loss_scale == 4.0 and model.hparams.loss_scale == 4  # the hyperparameters keep the given value
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_build_model() -> None:
    assert set(MODELS) == {"resnet20", "small_cnn", "mlp"}
    model = build_model("resnet20", num_classes=5, batch_norm=False)
    assert isinstance(model, ResNet20) and model.fc.out_features == 5 and not model.batch_norm
    assert isinstance(build_model("small_cnn", channels=(4,)), SmallCNN)
    mlp = build_model("mlp", num_classes=3, hidden=(8, 6))
    shapes = [layer.weight.shape for layer in mlp.modules() if isinstance(layer, nn.Linear)]
    assert shapes == [(8, 3072), (6, 8), (3, 6)]
    assert mlp(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert isinstance(build_model("ResNet20"), ResNet20)


def test_build_model_typo_names_valid_models() -> None:
    with pytest.raises(ValueError, match="resnet20") as info:
        build_model("resnet2O")
    assert "small_cnn" in str(info.value) and "resnet2O" in str(info.value)


@pytest.mark.parametrize("architecture, options", [
    ("resnet20", {}), ("resnet20", {"batch_norm": False}), ("small_cnn", {}), ("small_cnn", {"width": 32}), ("mlp", {}),
])
def test_evaluation_in_chunks_gives_the_whole_batchs_logits_bitwise(architecture: str, options: dict) -> None:
    """On CPU an evaluation batch is run 128 images at a time (faster); every committed result assumes the logits
    are those of the whole batch, to the bit."""
    torch.manual_seed(0)
    model = ImageClassifier(architecture=architecture, **options).eval()
    images = torch.randn(300, 3, 32, 32)  # three chunks, the last one short
    sizes: list[int] = []
    with torch.inference_mode():
        whole = model(images)
        model.register_forward_pre_hook(lambda module, inputs: sizes.append(len(inputs[0])))
        chunked = model.evaluation_logits(images)
    assert sizes == [128, 128, 44]  # the chunked path ran
    assert torch.equal(chunked, whole)
