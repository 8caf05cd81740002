"""Batched image transforms for uint8 ``N x C x H x W`` batches: random crop + horizontal flip, normalization, and the
per-batch seed that makes the augmentation a function of the run's seed and the batch's position only."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_decay.experiments.cifar10 import CIFAR10_MEAN, CIFAR10_STD

__all__ = ["batch_seed", "normalize", "random_crop_flip"]


def random_crop_flip(images: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Batched random crop (same size, zero padding) and random horizontal flip of ``N x C x H x W`` images.

    Crop offsets and flips are drawn on the CPU (from ``generator``) and applied on the images' device with
    one gather, so the result does not depend on the device.
    """
    n, c, h, w = images.shape
    device = images.device
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flips = (torch.rand(n, generator=generator) < 0.5).to(torch.int64)
    dy, dx, flip = torch.cat([offsets, flips[None]]).to(device, non_blocking=True)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = dy[:, None] + torch.arange(h, device=device)
    ar = torch.arange(w, device=device)
    cols = dx[:, None] + torch.where(flip[:, None].bool(), w - 1 - ar, ar)
    return padded[
        torch.arange(n, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def normalize(images: Tensor, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD) -> Tensor:
    """uint8 ``N x 3 x H x W`` -> float32 scaled to [0, 1] and normalized per channel."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return images.float().div_(255.0).sub_(m).div_(s)


def batch_seed(*parts: int) -> int:
    """A 63-bit seed from integers, e.g. ``(seed, rank, epoch, batch index)``: a hash, so nearby inputs give unrelated
    random streams."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
