"""Shared fixtures: tiny CIFAR-10-shaped JPEG data sets written on the fly (no network, < 1 s)."""

from __future__ import annotations

import os
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from torchvision.io import encode_jpeg

# Property tests draw the same examples on every run (CI must not turn red on a new random draw; a failure found
# while exploring is kept as an explicit case). HYPOTHESIS_PROFILE=explore draws fresh examples.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

# Under pytest-xdist (``-n 2``) each worker computes on one thread: two workers on two cores, not four threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TINY_TRAIN_PER_CLASS = 4
TINY_TEST_PER_CLASS = 2


def jpeg_pattern(class_index: int, image_index: int) -> torch.Tensor:
    """The 3 x 32 x 32 uint8 image stored as ``<class>/<image_index>.jpg``: red encodes the class, green the
    image index, blue is 30 in the top half and 220 in the bottom half (to catch flipped/transposed reads)."""
    image = torch.empty(3, 32, 32, dtype=torch.uint8)
    image[0] = 20 + 20 * class_index
    image[1] = 40 + 30 * image_index
    image[2, :16] = 30
    image[2, 16:] = 220
    return image


@pytest.fixture(scope="session")
def cifar_jpeg_pattern() -> Callable[[int, int], torch.Tensor]:
    """The function giving the pixels of each image in ``cifar_jpeg_dir`` (before JPEG loss)."""
    return jpeg_pattern


@pytest.fixture(scope="session")
def cifar_jpeg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny JPEG folder in the CIFAR-10 layout: ``train/<class>/<i>.jpg`` (4 per class) and
    ``test/<class>/<i>.jpg`` (2 per class), pixels from :func:`jpeg_pattern`. Treat as read-only."""
    root = tmp_path_factory.mktemp("cifar_jpeg")
    for split, count in (("train", TINY_TRAIN_PER_CLASS), ("test", TINY_TEST_PER_CLASS)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i:04d}.jpg").write_bytes(encode_jpeg(jpeg_pattern(c, i), quality=95).numpy().tobytes())
    return root


@pytest.fixture(scope="session")
def cifar_jpeg_tar(cifar_jpeg_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cifar_jpeg_dir`` packed as a ``.tar.gz`` under one top-level folder ``cifar10/``."""
    path = tmp_path_factory.mktemp("cifar_tar") / "cifar10-tiny.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(cifar_jpeg_dir, arcname="cifar10")
    return path


@pytest.fixture(autouse=True)
def _fresh_wandb_state():
    """Each test starts with no W&B run and no cached W&B settings (wandb keeps both per process)."""
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()
