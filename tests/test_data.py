"""Tests for the CIFAR-10 data of lightning_decay.experiments (offline: tiny data sets from conftest, the embedded
sample)."""

from __future__ import annotations

import math
import pickle
import tarfile
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, DistributedSampler

from lightning_decay.experiments import CIFAR10DataModule, SmallCNN, load_cifar10
from lightning_decay.experiments.augment import batch_seed, normalize, random_crop_flip
from lightning_decay.experiments.cifar10 import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    SAMPLE_ARCHIVE,
    class_balanced_indices,
    resolve_source,
)
from lightning_decay.experiments.dataset import InMemoryImageDataset, collate_stacked

MEAN = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)


def fake_trainer(training: bool) -> SimpleNamespace:
    return SimpleNamespace(training=training, global_rank=0)


def check_jpeg_arrays(arrays, pattern: Callable[[int, int], torch.Tensor]) -> None:
    assert arrays.train_images.shape == (40, 3, 32, 32) and arrays.train_images.dtype == torch.uint8
    assert arrays.test_images.shape == (20, 3, 32, 32) and arrays.test_labels.dtype == torch.int64
    assert arrays.train_labels.tolist() == [c for c in range(10) for _ in range(4)]
    assert arrays.test_labels.tolist() == [c for c in range(10) for _ in range(2)]
    for k in (0, 7, 21, 39):  # sorted by class then file name: index k is class k // 4, image k % 4
        got, want = arrays.train_images[k].float(), pattern(k // 4, k % 4).float()
        # JPEG is lossy; compare region means away from the horizontal edge in the blue channel
        for region in (slice(0, 12), slice(20, 32)):
            diff = (got[:, region].mean((1, 2)) - want[:, region].mean((1, 2))).abs()
            assert diff.max() < 6, (k, diff)


# ---- sources ---------------------------------------------------------------------------------------------------


def test_reads_jpeg_folder(cifar_jpeg_dir: Path, cifar_jpeg_pattern) -> None:
    check_jpeg_arrays(load_cifar10(str(cifar_jpeg_dir)), cifar_jpeg_pattern)


def test_reads_jpeg_folder_under_single_top_folder(tmp_path: Path, cifar_jpeg_dir: Path) -> None:
    (tmp_path / "cifar10").symlink_to(cifar_jpeg_dir, target_is_directory=True)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), batch_size=8)
    assert dm.source.path == tmp_path / "cifar10"
    dm.setup("fit")
    assert dm.num_train_samples == 40 and dm.num_test_samples == 20


def test_reads_tar_gz_without_extracting(cifar_jpeg_tar: Path, cifar_jpeg_pattern) -> None:
    with tarfile.open(cifar_jpeg_tar) as tf:
        assert tf.getnames()[0] == "cifar10"  # the layout sits under one top-level folder
    before = set(cifar_jpeg_tar.parent.iterdir())
    check_jpeg_arrays(load_cifar10(str(cifar_jpeg_tar)), cifar_jpeg_pattern)
    assert set(cifar_jpeg_tar.parent.iterdir()) == before


def write_torchvision_folder(root: Path, per_batch: int = 3, n_test: int = 5) -> torch.Tensor:
    """A fake ``cifar-10-batches-py`` in the real pickle format; returns all images (train then test)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5 * per_batch + n_test, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = [i % 10 for i in range(len(images))]
    batches = [(f"data_batch_{b + 1}", range(b * per_batch, (b + 1) * per_batch)) for b in range(5)]
    batches.append(("test_batch", range(5 * per_batch, len(images))))
    for name, idx in batches:
        entry = {
            "batch_label": name,
            "data": images[list(idx)].reshape(len(idx), 3072).numpy(),
            "labels": [labels[i] for i in idx],
            "filenames": [f"{i}.png" for i in idx],
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return images


@pytest.mark.parametrize("point_at_batches_folder", [False, True])
def test_reads_torchvision_format(tmp_path: Path, point_at_batches_folder: bool) -> None:
    images = write_torchvision_folder(tmp_path)
    data_dir = tmp_path / "cifar-10-batches-py" if point_at_batches_folder else tmp_path
    with pytest.warns(UserWarning, match="checksum"):  # fake files fail torchvision's md5 check
        arrays = load_cifar10(str(data_dir))
    assert torch.equal(arrays.train_images, images[:15]) and torch.equal(arrays.test_images, images[15:])
    assert arrays.train_labels.tolist() == [i % 10 for i in range(15)]
    assert arrays.test_labels.tolist() == [i % 10 for i in range(15, 20)]


def test_embedded_sample() -> None:
    assert SAMPLE_ARCHIVE.is_file() and SAMPLE_ARCHIVE.stat().st_size < 5_000_000
    dm = CIFAR10DataModule(batch_size=100)
    assert dm.source.path == SAMPLE_ARCHIVE
    dm.setup("fit")
    train, test = dm.train_dataset, dm.test_dataset
    assert len(train) == 10_000 and len(test) == 2_000
    assert torch.bincount(train.labels, minlength=10).tolist() == [1000] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [200] * 10
    assert train.images.shape == (10_000, 3, 32, 32) and train.images.dtype == torch.uint8
    mean = train.images.float().mean((0, 2, 3)) / 255  # real CIFAR-like statistics
    torch.testing.assert_close(mean, torch.tensor(CIFAR10_MEAN), atol=0.03, rtol=0)
    assert len(dm.train_dataloader()) == 100 and dm.num_classes == 10 and dm.classes == CIFAR10_CLASSES


def test_sample_is_package_data() -> None:
    """An installed (non-editable) wheel ships the sample: pyproject's package-data covers SAMPLE_ARCHIVE."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = [
        file
        for package, patterns in package_data.items()
        for pattern in patterns
        for file in (root / package.replace(".", "/")).glob(pattern)
    ]
    assert SAMPLE_ARCHIVE in [file.resolve() for file in shipped]


def test_resolve_source_kinds(tmp_path: Path, cifar_jpeg_dir: Path, cifar_jpeg_tar: Path) -> None:
    assert (resolve_source(None).kind, resolve_source(None).path) == ("tar", SAMPLE_ARCHIVE)
    assert resolve_source(str(cifar_jpeg_dir)).kind == "jpeg_dir"
    assert resolve_source(cifar_jpeg_tar).kind == "tar"
    to_download = resolve_source(tmp_path / "fresh", download=True)
    assert to_download.kind == "torchvision" and to_download.download and not to_download.is_present
    assert resolve_source(None).is_present


def test_decode_is_cached(cifar_jpeg_tar: Path) -> None:
    a, b = load_cifar10(str(cifar_jpeg_tar)), load_cifar10(str(cifar_jpeg_tar))
    assert a is b


# ---- subsets and loaders ---------------------------------------------------------------------------------------


def test_class_balanced_indices() -> None:
    labels = torch.arange(100) % 10
    idx = class_balanced_indices(labels, 25, seed=3)
    counts = torch.bincount(labels[idx], minlength=10)
    assert len(idx) == 25 and counts.sum() == 25 and counts.min() == 2 and counts.max() == 3
    assert torch.equal(idx, class_balanced_indices(labels, 25, seed=3))
    assert not torch.equal(idx, class_balanced_indices(labels, 25, seed=4))
    with pytest.raises(ValueError, match="train_subset"):
        class_balanced_indices(labels, 200, name="train_subset")


def test_datamodule_subsets_and_loaders(cifar_jpeg_dir: Path) -> None:
    dm = CIFAR10DataModule(
        data_dir=str(cifar_jpeg_dir), batch_size=8, eval_batch_size=6, train_subset=20, test_subset=10, seed=1
    )
    dm.setup("fit")
    assert dm.num_train_samples == 20 and dm.num_test_samples == 10
    assert torch.bincount(dm.train_dataset.labels, minlength=10).tolist() == [2] * 10
    train = dm.train_dataloader()
    assert len(train) == math.ceil(20 / 8)
    images, labels = next(iter(train))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    sizes = [len(y) for _, y in dm.val_dataloader()]
    assert sizes == [6, 4]
    assert [len(y) for _, y in dm.test_dataloader()] == sizes


def test_dataset_batched_fetch_and_distributed_sampler() -> None:
    ds = InMemoryImageDataset(
        torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2), torch.arange(10)
    )
    x, y = ds.__getitems__([3, 1, 4])
    assert y.tolist() == [3, 1, 4] and x.shape == (3, 3, 2, 2) and x[:, 0, 0, 0].tolist() == [3, 1, 4]
    loader = CIFAR10DataModule(batch_size=4)._loader(ds, 4, shuffle=True)

    class NoPerSampleAccess(InMemoryImageDataset):
        def __getitem__(self, index: int):
            raise AssertionError("per-sample __getitem__ used")

    assert loader.collate_fn is collate_stacked
    batches = list(DataLoader(NoPerSampleAccess(ds.images, ds.labels), batch_size=4, collate_fn=loader.collate_fn))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    # what Lightning does under DDP: rebuild the loader with a DistributedSampler
    loader = DataLoader(
        ds, batch_size=4, sampler=DistributedSampler(ds, num_replicas=2, rank=1), collate_fn=loader.collate_fn
    )
    seen = torch.cat([y for _, y in loader])
    assert len(seen) == 5 and len(set(seen.tolist())) == 5
    # a fetcher that bypasses __getitems__ hands the collate a list of samples
    x, y = collate_stacked([ds[3], ds[1]])
    assert y.tolist() == [3, 1] and x.shape == (2, 3, 2, 2)


# ---- batch transforms ------------------------------------------------------------------------------------------


def test_eval_batches_deterministic_and_normalized(cifar_jpeg_dir: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(cifar_jpeg_dir), batch_size=16)
    dm.setup("fit")
    dm.trainer = fake_trainer(training=False)
    batch = next(iter(dm.val_dataloader()))
    x1, y1 = dm.on_after_batch_transfer(batch, 0)
    x2, _ = dm.on_after_batch_transfer(batch, 0)
    assert x1.dtype == torch.float32 and x1.shape == (16, 3, 32, 32) and torch.equal(y1, batch[1])
    assert torch.equal(x1, x2)
    torch.testing.assert_close(x1, (batch[0].float() / 255 - MEAN) / STD)


def test_train_batches_are_cropped_and_flipped(cifar_jpeg_dir: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(cifar_jpeg_dir), batch_size=40, seed=5)
    dm.setup("fit")
    dm.trainer = fake_trainer(training=True)
    images, labels = next(iter(dm.train_dataloader()))
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x.shape == images.shape and x.dtype == torch.float32 and torch.equal(y, labels)
    assert not torch.allclose(x, normalize(images))
    x_again, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert not torch.equal(x, x_again)  # fresh randomness per batch
    # each output is a 32x32 window of the zero-padded (possibly flipped) input
    raw = x * STD + MEAN
    padded = F.pad(images.float() / 255, (4, 4, 4, 4))
    for i in range(8):
        candidates = [
            padded[i, :, dy : dy + 32, dx : dx + 32].flip(-1) if flip else padded[i, :, dy : dy + 32, dx : dx + 32]
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
        ]
        assert min((c - raw[i]).abs().max().item() for c in candidates) < 1e-5


def test_augmentation_is_seeded_and_optional() -> None:
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(images, generator=torch.Generator().manual_seed(0))
    b = random_crop_flip(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.uint8
    assert batch_seed(0, 0, 1, 2) == batch_seed(0, 0, 1, 2) and 0 <= batch_seed(0, 0, 1, 2) < 2**63
    assert len({batch_seed(0, 0, 1, 2), batch_seed(0, 0, 2, 1), batch_seed(0, 0, 1, 3)}) == 3
    dm = CIFAR10DataModule(batch_size=4, augment=False)
    dm.trainer = fake_trainer(training=True)
    torch.testing.assert_close(dm.on_after_batch_transfer((images, torch.zeros(6)), 0)[0], normalize(images))


# ---- validation of arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"train_subset": 0}, "train_subset"),
        ({"test_subset": -3}, "test_subset"),
        ({"num_workers": -1}, "num_workers"),
        ({"download": True}, "data_dir"),
    ],
)
def test_bad_arguments(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        CIFAR10DataModule(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"seed": 0.5}, "seed"),
        ({"augment": "yes"}, "augment"),
        ({"download": 1}, "download"),
    ],
)
def test_argument_types(kwargs: dict, word: str) -> None:
    with pytest.raises(TypeError, match=word):
        CIFAR10DataModule(**kwargs)


def test_bad_data_dir(tmp_path: Path, cifar_jpeg_dir: Path) -> None:
    with pytest.raises(ValueError, match="data_dir .* does not exist"):
        CIFAR10DataModule(data_dir=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="data_dir .* neither layout.*train/<class>"):
        CIFAR10DataModule(data_dir=str(tmp_path / "empty"))
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="data_dir .* not a readable tar"):
        CIFAR10DataModule(data_dir=str(tmp_path / "junk.tar.gz"))
    with tarfile.open(tmp_path / "other.tar.gz", "w:gz") as tf:
        tf.add(cifar_jpeg_dir / "train", arcname="stuff/images")
    with pytest.raises(ValueError, match="data_dir .* no train/<class>"):
        CIFAR10DataModule(data_dir=str(tmp_path / "other.tar.gz"))
    (tmp_path / "partial" / "cifar-10-batches-py").mkdir(parents=True)
    with pytest.raises(ValueError, match="data_dir .* lacks data_batch_1"):
        CIFAR10DataModule(data_dir=str(tmp_path / "partial"))


def test_missing_class_folder(tmp_path: Path, cifar_jpeg_dir: Path) -> None:
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES[:-1]:
            (tmp_path / split / cls).mkdir(parents=True)
            src = next((cifar_jpeg_dir / split / cls).iterdir())
            (tmp_path / split / cls / src.name).write_bytes(src.read_bytes())
    with pytest.raises(ValueError, match="data_dir .*missing: \\['truck'\\]"):
        CIFAR10DataModule(data_dir=str(tmp_path))


def test_subset_too_large_names_argument(cifar_jpeg_dir: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(cifar_jpeg_dir), test_subset=1000)
    with pytest.raises(ValueError, match="test_subset"):
        dm.setup("fit")


# ---- end to end --------------------------------------------------------------------------------------------------


class TinyClassifier(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = SmallCNN(channels=(4, 8))
        self.seen: list[tuple[str, torch.dtype, tuple[int, ...]]] = []

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen.append(("train", x.dtype, tuple(x.shape)))
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.seen.append(("val", x.dtype, tuple(x.shape)))
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.1)


def test_trainer_fit_end_to_end() -> None:
    dm = CIFAR10DataModule(batch_size=16, eval_batch_size=32, train_subset=64, test_subset=64)
    model = TinyClassifier()
    trainer = Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    assert ("train", torch.float32, (16, 3, 32, 32)) in model.seen
    assert ("val", torch.float32, (32, 3, 32, 32)) in model.seen  # the sanity check ran the eval path
    assert dm._generator is not None  # training batches went through the augmentation path
    assert dm.num_train_samples == 64 and len(dm.train_dataloader()) == 4
