"""Plain ``nn.Module`` networks used by the experiments (no Lightning in here).

* :class:`ResNet20`: the CIFAR ResNet-20 of He et al., "Deep Residual Learning for Image Recognition"
  (CVPR 2016, section 4.2), ~0.27M parameters at the paper's width.
* :class:`SmallCNN`: a tiny conv net for fast tests and smoke runs.
* :func:`build_model`: build either one by name (``"resnet20"``, ``"small_cnn"``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_decay.validation import check_int

__all__ = ["MODELS", "BasicBlock", "ResNet20", "SmallCNN", "build_model"]


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    """BatchNorm2d, or ``nn.Identity`` when batch norm is switched off."""
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


def _conv3x3(in_channels: int, out_channels: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=bias)


class _ShortcutA(nn.Module):
    """Option-A shortcut: parameter-free, subsample spatially and zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (option-A shortcut when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, batch_norm: bool = True) -> None:
        super().__init__()
        bias = not batch_norm
        self.conv1 = _conv3x3(in_channels, out_channels, stride, bias)
        self.bn1 = _norm(out_channels, batch_norm)
        self.conv2 = _conv3x3(out_channels, out_channels, 1, bias)
        self.bn2 = _norm(out_channels, batch_norm)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = _ShortcutA(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016): 6n+2 layers with n=3.

    3x3 conv stem (``width`` channels), three stages of three :class:`BasicBlock` with ``width``,
    ``2*width``, ``4*width`` channels and strides 1, 2, 2, global average pooling and a linear head.
    ~0.27M parameters at ``width=16``.

    Shortcuts use the paper's option A (identity, with spatial subsampling and zero-padded extra
    channels when the shape changes), so they add no parameters.

    ``batch_norm=False`` replaces every ``BatchNorm2d`` by ``nn.Identity``; the convs then get a bias
    (``bias=True``), since there is no BN shift to play that role. With batch norm on, convs have no bias.

    Init: Kaiming-normal (fan_in, ReLU gain) for conv and linear weights, zero biases, BN weight 1 and
    bias 0. ``zero_init_residual=True`` zeroes the last layer of every residual branch (the BN weight,
    or the second conv when batch norm is off), so each block starts as the identity; without batch
    norm this keeps the activations from growing ~2x in variance per block at init.
    """

    def __init__(
        self,
        num_classes: int = 10,
        batch_norm: bool = True,
        width: int = 16,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        num_classes = check_int("num_classes", num_classes, low=1)
        width = check_int("width", width, low=1)
        self.num_classes = num_classes
        self.batch_norm = batch_norm
        self.width = width
        bias = not batch_norm
        self.conv1 = _conv3x3(3, width, 1, bias)
        self.bn1 = _norm(width, batch_norm)
        self.layer1 = self._make_stage(width, width, stride=1, batch_norm=batch_norm)
        self.layer2 = self._make_stage(width, 2 * width, stride=2, batch_norm=batch_norm)
        self.layer3 = self._make_stage(2 * width, 4 * width, stride=2, batch_norm=batch_norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        self.reset_parameters(zero_init_residual)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, stride: int, batch_norm: bool) -> nn.Sequential:
        blocks = [BasicBlock(in_channels, out_channels, stride, batch_norm)]
        blocks += [BasicBlock(out_channels, out_channels, 1, batch_norm) for _ in range(2)]
        return nn.Sequential(*blocks)

    @torch.no_grad()
    def reset_parameters(self, zero_init_residual: bool = False) -> None:
        """(Re-)initialise all weights (Kaiming normal, see the class docstring)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    last = m.bn2 if isinstance(m.bn2, nn.BatchNorm2d) else m.conv2
                    nn.init.zeros_(last.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``N x 3 x H x W`` images to ``N x num_classes`` logits."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.pool(out), 1))


class SmallCNN(nn.Module):
    """A tiny conv net for fast tests: per entry of ``channels``, conv3x3 -> BN -> ReLU -> maxpool 2,
    then global average pooling and a linear head. Same bias/BN convention as :class:`ResNet20`."""

    def __init__(self, num_classes: int = 10, channels: tuple[int, ...] = (16, 32), batch_norm: bool = True) -> None:
        super().__init__()
        num_classes = check_int("num_classes", num_classes, low=1)
        channels = tuple(channels)
        if not channels:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
        channels = tuple(check_int(f"channels[{i}]", c, low=1) for i, c in enumerate(channels))
        self.num_classes = num_classes
        self.batch_norm = batch_norm
        layers: list[nn.Module] = []
        in_channels = 3
        for c in channels:
            layers += [
                _conv3x3(in_channels, c, 1, bias=not batch_norm),
                _norm(c, batch_norm),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_channels = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``N x 3 x H x W`` images to ``N x num_classes`` logits."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class MLP(nn.Module):
    """A multilayer perceptron on flattened images: per entry of ``hidden``, linear -> (batch norm) -> ReLU, then a
    linear head. Its hidden layers are the matrices Muon is made for (the Muon experiment's model)."""

    def __init__(
        self, num_classes: int = 10, hidden: tuple[int, ...] = (128, 128, 128), batch_norm: bool = False,
        in_features: int = 3 * 32 * 32,
    ) -> None:
        super().__init__()
        num_classes = check_int("num_classes", num_classes, low=1)
        hidden = tuple(check_int(f"hidden[{i}]", h, low=1) for i, h in enumerate(hidden))
        in_features = check_int("in_features", in_features, low=1)
        self.num_classes, self.batch_norm = num_classes, batch_norm
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width, bias=not batch_norm), _norm1d(width, batch_norm), nn.ReLU()]
            in_features = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``N x 3 x H x W`` images to ``N x num_classes`` logits."""
        return self.fc(self.features(x))


def _norm1d(features: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm1d(features) if batch_norm else nn.Identity()


MODELS: dict[str, Callable[..., nn.Module]] = {"resnet20": ResNet20, "small_cnn": SmallCNN, "mlp": MLP}
"""Registry used by :func:`build_model`: name -> model class."""


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model by name (``"resnet20"``, ``"small_cnn"`` or ``"mlp"``) with keyword arguments.

    Raises ``ValueError`` listing the valid names when ``name`` is unknown.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in MODELS:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(sorted(MODELS))}")
    return MODELS[key](**kwargs)
