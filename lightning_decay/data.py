"""CIFAR-10 as a ``LightningDataModule`` that holds the whole data set in memory as uint8 tensors.

Sources (``CIFAR10DataModule(data_dir=..., download=...)``):

* ``download=True``: torchvision's CIFAR-10 in ``data_dir``, downloaded there if missing (needs network).
* a folder in torchvision's format: ``data_dir/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
  (``data_dir`` may also be the ``cifar-10-batches-py`` folder itself).
* a folder of JPEGs in ImageFolder layout: ``data_dir/train/<class>/*.jpg`` and ``data_dir/test/<class>/*.jpg``
  (or the same under a single top-level folder of ``data_dir``).
* a ``.tar.gz`` (or ``.tar``) file with that JPEG layout inside, possibly under one top-level folder; the
  members are read straight from the archive, nothing is extracted to disk.
* ``data_dir=None`` (the default): the small class-balanced sample shipped with the package in
  ``lightning_decay/data/cifar10-sample.tar.gz`` (1,000 train + 200 test images per class), so that a fresh
  machine without network can run the jobs. It was cut by ``tools/make_cifar_sample.py`` from a JPEG
  re-encoding of CIFAR-10, so the pixels (and hence accuracies) differ slightly from torchvision's original
  arrays; say which source a result used. The full 60,000-image JPEG archive is read the same way.

Class indices follow the CIFAR-10 order, which is also the sorted order of the class folder names:
airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck.

Images are decoded once per process (JPEGs with ``torchvision.io.decode_jpeg``) into an ``N x 3 x 32 x 32``
uint8 tensor plus int64 labels, and cached in-process, so a second data module on the same source does not
decode again. DataLoaders fetch whole batches by tensor indexing (``Dataset.__getitems__``) and yield uint8
``(images, labels)``; augmentation (random crop 32 with 4-pixel zero padding + horizontal flip, training batches
only) and normalization with the CIFAR-10 mean/std run batched, on the model's device, in
``on_after_batch_transfer``. The test split serves as both the validation and the test set (the reference
results report test accuracy); there is no held-out validation split.

**Determinism and exact resume.** Everything random is a function of ``seed``, the epoch and the batch's position,
never of a global RNG or of how long the process has run:

* the training order is a :class:`ResumableSampler` (a ``DistributedSampler``: Lightning keeps it under DDP),
  shuffled from ``seed + epoch`` like torch's ``DistributedSampler``; rank ``r`` of ``W`` takes positions
  ``r, r + W, ...`` of the (padded) epoch order, so ``W`` ranks with batch ``B`` see the same global batches as one
  process with batch ``W * B``;
* each training batch's crop/flip draws come from a CPU generator seeded with ``(seed, global rank, epoch, batch
  index in the epoch)``.

The data module's ``state_dict`` (the epoch and the batches consumed in it) is saved in every Lightning checkpoint
and restored before the training loader is built, so a fit resumed mid-epoch continues with the next unseen batch
and the same augmentation as an uninterrupted run (bitwise, given deterministic kernels). Exact with the same number
of processes and batch size; with others it continues from the same global sample position (and warns). The
training ``DataLoader`` (:class:`ResumableDataLoader`) carries the same state for Lightning's stateful-loader
mechanism -- which alone is not enough in Lightning 2.6: it restores a loader only when the loader is built after
the checkpoint is read, and ``configure_optimizers`` asking for ``trainer.estimated_stepping_batches`` (any
schedule over the whole fit) builds it before.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import tarfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "SAMPLE_ARCHIVE",
    "CIFAR10Arrays",
    "CIFAR10DataModule",
    "InMemoryImageDataset",
    "ResumableDataLoader",
    "ResumableSampler",
    "TrainProgress",
    "class_balanced_indices",
    "clear_cache",
    "load_cifar10",
    "normalize",
    "random_crop_flip",
]

log = logging.getLogger(__name__)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Per-channel mean/std of the CIFAR-10 training images (pixel values scaled to [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

SAMPLE_ARCHIVE: Path = Path(__file__).resolve().parent / "data" / "cifar10-sample.tar.gz"
"""The embedded class-balanced JPEG sample used when ``data_dir`` is None."""

_SPLITS = ("train", "test")
_JPEG_SUFFIXES = (".jpg", ".jpeg")
_BATCHES_FOLDER = "cifar-10-batches-py"
_BATCH_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_LAYOUTS_HELP = (
    "accepted: a torchvision-format folder (containing cifar-10-batches-py/ with data_batch_1..5 and "
    "test_batch), a JPEG folder (train/<class>/*.jpg and test/<class>/*.jpg), a .tar.gz file with that JPEG "
    "layout inside, or None for the embedded sample; use download=True to fetch torchvision's CIFAR-10"
)


# --------------------------------------------------------------------------------------------------------------
# Sources and decoding
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CIFAR10Arrays:
    """A decoded CIFAR-10: uint8 images ``N x 3 x 32 x 32`` and int64 labels for both splits."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: tuple[str, ...] = CIFAR10_CLASSES


@dataclass(frozen=True)
class _Source:
    kind: Literal["torchvision", "jpeg_dir", "tar"]
    path: Path  # torchvision: the root holding cifar-10-batches-py; jpeg_dir: the folder; tar: the file
    download: bool = False

    def cache_key(self) -> tuple[Any, ...]:
        target = self.path / _BATCHES_FOLDER if self.kind == "torchvision" else self.path
        stat = target.stat()
        return (self.kind, str(target), stat.st_mtime_ns, stat.st_size)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _jpeg_root(folder: Path) -> Path | None:
    """``folder`` or its single sub-folder when it holds ``train/`` and ``test/`` folders."""
    if all((folder / s).is_dir() for s in _SPLITS):
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name)]
    if len(subdirs) == 1 and all((subdirs[0] / s).is_dir() for s in _SPLITS):
        return subdirs[0]
    return None


def _check_classes(found: dict[str, set[str]], where: str) -> None:
    """Raise a ValueError unless every split has exactly the ten CIFAR-10 class folders."""
    expected = set(CIFAR10_CLASSES)
    for split in _SPLITS:
        classes = found.get(split, set())
        if classes != expected:
            missing, extra = sorted(expected - classes), sorted(classes - expected)
            raise ValueError(
                f"data_dir {where}: the {split!r} split must have one folder per CIFAR-10 class "
                f"({', '.join(CIFAR10_CLASSES)}); missing: {missing or 'none'}, unexpected: {extra or 'none'}"
            )


def _split_member(name: str) -> tuple[str, str, str, str] | None:
    """``(prefix, split, class, file)`` for a JPEG archive member in the ImageFolder layout, else None."""
    parts = tuple(p for p in PurePosixPath(name).parts if p not in (".", "/"))
    if len(parts) < 3 or len(parts) > 4 or any(_is_hidden(p) for p in parts):
        return None
    if not parts[-1].lower().endswith(_JPEG_SUFFIXES) or parts[-3] not in _SPLITS:
        return None
    prefix = parts[0] if len(parts) == 4 else ""
    return prefix, parts[-3], parts[-2], parts[-1]


def _check_tar(path: Path) -> None:
    """Cheap check that ``path`` is a tar archive with the JPEG layout (stops at the first JPEG member)."""
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                if member.isfile() and _split_member(member.name) is not None:
                    return
                if PurePosixPath(member.name).parts[:1] == (_BATCHES_FOLDER,):
                    raise ValueError(
                        f"data_dir {str(path)!r} looks like torchvision's CIFAR-10 archive; extract it and pass "
                        "the folder holding cifar-10-batches-py/ instead"
                    )
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ValueError(f"data_dir {str(path)!r} is not a readable tar archive ({err}); {_LAYOUTS_HELP}") from err
    raise ValueError(
        f"data_dir {str(path)!r} holds no train/<class>/*.jpg or test/<class>/*.jpg members; {_LAYOUTS_HELP}"
    )


def _resolve_source(data_dir: str | Path | None, download: bool) -> _Source:
    """Map the data module's ``data_dir``/``download`` arguments to a source, or raise a ValueError."""
    if download:
        if data_dir is None:
            raise ValueError("download=True needs a data_dir to download torchvision's CIFAR-10 into")
        root = Path(data_dir).expanduser()
        if root.exists() and not root.is_dir():
            raise ValueError(f"data_dir {str(root)!r} is a file; download=True needs a folder")
        return _Source("torchvision", root, download=True)
    if data_dir is None:
        if not SAMPLE_ARCHIVE.is_file():
            raise ValueError(
                f"data_dir=None selects the embedded CIFAR-10 sample, but {SAMPLE_ARCHIVE} is missing "
                "(was the package installed without its package data?)"
            )
        return _Source("tar", SAMPLE_ARCHIVE)
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise ValueError(f"data_dir {str(path)!r} does not exist; {_LAYOUTS_HELP}")
    if path.is_file():
        _check_tar(path)
        return _Source("tar", path)
    if (path / _BATCHES_FOLDER).is_dir() or path.name == _BATCHES_FOLDER:
        root = path if (path / _BATCHES_FOLDER).is_dir() else path.parent
        missing = [f for f in _BATCH_FILES if not (root / _BATCHES_FOLDER / f).is_file()]
        if missing:
            raise ValueError(f"data_dir {str(path)!r}: {root / _BATCHES_FOLDER} lacks {', '.join(missing)}")
        return _Source("torchvision", root)
    jpeg_root = _jpeg_root(path)
    if jpeg_root is None:
        raise ValueError(f"data_dir {str(path)!r} has neither layout; {_LAYOUTS_HELP}")
    found = {s: {p.name for p in (jpeg_root / s).iterdir() if p.is_dir() and not _is_hidden(p.name)} for s in _SPLITS}
    _check_classes(found, repr(str(jpeg_root)))
    return _Source("jpeg_dir", jpeg_root)


def _decode_jpegs(blobs: Sequence[bytes], names: Sequence[str]) -> Tensor:
    """Decode JPEG byte strings into one ``N x 3 x 32 x 32`` uint8 tensor."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images = torch.empty((len(blobs), 3, 32, 32), dtype=torch.uint8)
    for i, blob in enumerate(blobs):
        try:
            image = decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as err:
            raise ValueError(f"cannot decode JPEG {names[i]}: {err}") from err
        if image.shape != (3, 32, 32):
            raise ValueError(f"{names[i]} is {tuple(image.shape[1:])} pixels; CIFAR-10 images are 32 x 32")
        images[i] = image
    return images


def _assemble(entries: Iterable[tuple[str, str, str, bytes]], where: str) -> CIFAR10Arrays:
    """Build the arrays from ``(split, class, name, jpeg_bytes)`` entries (any order)."""
    by_split: dict[str, list[tuple[str, str, bytes]]] = {s: [] for s in _SPLITS}
    for split, cls, name, blob in entries:
        by_split[split].append((cls, name, blob))
    _check_classes({s: {e[0] for e in items} for s, items in by_split.items()}, where)
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for split, items in by_split.items():
        items.sort(key=lambda e: (e[0], e[1]))
        images = _decode_jpegs([e[2] for e in items], [f"{split}/{e[0]}/{e[1]}" for e in items])
        labels = torch.tensor([CIFAR10_CLASSES.index(e[0]) for e in items], dtype=torch.int64)
        out[split] = images, labels
    return CIFAR10Arrays(*out["train"], *out["test"])


def _read_tar(path: Path) -> CIFAR10Arrays:
    entries: list[tuple[str, str, str, bytes]] = []
    prefixes: set[str] = set()
    with tarfile.open(path, "r:*") as tf:
        for member in tf:
            parsed = _split_member(member.name) if member.isfile() else None
            if parsed is None:
                continue
            prefix, split, cls, name = parsed
            prefixes.add(prefix)
            fileobj = tf.extractfile(member)
            assert fileobj is not None
            entries.append((split, cls, name, fileobj.read()))
    if len(prefixes) > 1:
        raise ValueError(f"data_dir {str(path)!r}: JPEGs under several top-level folders {sorted(prefixes)}")
    return _assemble(entries, repr(str(path)))


def _read_jpeg_dir(root: Path) -> CIFAR10Arrays:
    entries = []
    for split in _SPLITS:
        for class_dir in sorted((root / split).iterdir()):
            if not class_dir.is_dir() or _is_hidden(class_dir.name):
                continue
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() in _JPEG_SUFFIXES and not _is_hidden(file.name) and file.is_file():
                    entries.append((split, class_dir.name, file.name, file.read_bytes()))
    return _assemble(entries, repr(str(root)))


def _read_batches_unchecked(folder: Path) -> tuple[Any, list[int], Any, list[int], list[str] | None]:
    """Read the pickled batches like torchvision does, without its md5 checks."""
    import numpy as np

    def load(name: str) -> dict[str, Any]:
        with open(folder / name, "rb") as f:
            return pickle.load(f, encoding="latin1")

    parts = {}
    for split, names in (("train", _BATCH_FILES[:-1]), ("test", _BATCH_FILES[-1:])):
        batches = [load(n) for n in names]
        data = np.vstack([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = [int(y) for b in batches for y in b.get("labels", b.get("fine_labels", []))]
        parts[split] = data, labels
    meta = folder / "batches.meta"
    classes = load(meta.name)["label_names"] if meta.is_file() else None
    return *parts["train"], *parts["test"], classes


def _read_torchvision(root: Path) -> CIFAR10Arrays:
    import numpy as np
    from torchvision.datasets import CIFAR10

    try:
        train, test = CIFAR10(str(root), train=True), CIFAR10(str(root), train=False)
        parts = train.data, train.targets, test.data, test.targets, list(train.classes)
    except RuntimeError as err:  # checksum mismatch: not the official files (e.g. a re-packed or partial copy)
        warnings.warn(
            f"{root / _BATCHES_FOLDER}: torchvision rejected the files ({err}); reading the pickled batches "
            "without checksum verification",
            stacklevel=3,
        )
        parts = _read_batches_unchecked(root / _BATCHES_FOLDER)
    train_x, train_y, test_x, test_y, classes = parts
    if classes is not None and tuple(classes) != CIFAR10_CLASSES:
        raise ValueError(f"data_dir {str(root)!r}: batches.meta lists classes {classes}, not CIFAR-10's")

    def to_tensors(x: Any, y: list[int]) -> tuple[Tensor, Tensor]:  # HWC numpy (a view of CHW data) -> CHW
        images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        labels = torch.as_tensor(y, dtype=torch.int64)
        if images.dtype != torch.uint8 or len(images) != len(labels):
            raise ValueError(f"data_dir {str(root)!r}: malformed batches ({images.dtype}, {len(labels)} labels)")
        return images, labels

    return CIFAR10Arrays(*to_tensors(train_x, train_y), *to_tensors(test_x, test_y))


_CACHE: OrderedDict[tuple[Any, ...], CIFAR10Arrays] = OrderedDict()
_CACHE_SIZE = 2


def clear_cache() -> None:
    """Drop the in-process cache of decoded data sets."""
    _CACHE.clear()


def load_cifar10(data_dir: str | Path | None = None) -> CIFAR10Arrays:
    """Decode a CIFAR-10 source (see the module docstring; no download) into uint8 tensors.

    Results are cached per source in the process (the last two sources), so repeated calls are free.
    Raises ValueError for a missing or malformed source.
    """
    return _load(_resolve_source(data_dir, download=False))


def _load(source: _Source) -> CIFAR10Arrays:
    key = source.cache_key()
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    start = time.perf_counter()
    if source.kind == "torchvision":
        arrays = _read_torchvision(source.path)
    elif source.kind == "jpeg_dir":
        arrays = _read_jpeg_dir(source.path)
    else:
        arrays = _read_tar(source.path)
    log.info(
        "CIFAR-10 from %s: %d train + %d test images decoded in %.2fs",
        source.path,
        len(arrays.train_labels),
        len(arrays.test_labels),
        time.perf_counter() - start,
    )
    _CACHE[key] = arrays
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return arrays


# --------------------------------------------------------------------------------------------------------------
# Subsets, dataset, batched transforms
# --------------------------------------------------------------------------------------------------------------


def class_balanced_indices(
    labels: Tensor, size: int, seed: int = 0, num_classes: int = 10, name: str = "size"
) -> Tensor:
    """Sorted indices of a deterministic (seeded) class-balanced subset of ``size`` samples.

    Every class gets ``size // num_classes`` samples; the remaining ``size % num_classes`` go to a seeded
    random choice of classes. Raises ValueError (naming ``name``) when a class has too few samples.
    """
    generator = torch.Generator().manual_seed(seed)
    quota = torch.full((num_classes,), size // num_classes, dtype=torch.int64)
    quota[torch.randperm(num_classes, generator=generator)[: size % num_classes]] += 1
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        k = int(quota[c])
        if k > len(members):
            raise ValueError(
                f"{name}={size} needs {k} samples of class {c} but only {len(members)} are available "
                f"({len(labels)} samples in all)"
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(chosen).sort().values


class InMemoryImageDataset(Dataset[tuple[Tensor, Tensor]]):
    """Images and labels held in tensors; ``__getitems__`` returns a whole stacked batch at once."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.images[idx], self.labels[idx]


def _batch_collate(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Collate for :class:`InMemoryImageDataset`: the batch is already stacked."""
    if isinstance(batch, list):  # a sampler/fetcher that bypassed __getitems__
        return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
    return batch


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


# --------------------------------------------------------------------------------------------------------------
# Resumable training order
# --------------------------------------------------------------------------------------------------------------


class ResumableSampler(DistributedSampler):
    """torch's ``DistributedSampler`` (same order for the same ``seed``, epoch and world size) that can start an
    epoch part-way: :meth:`resume` skips the first ``offset`` positions of that epoch's global order.

    Works for one process (``num_replicas=1``, the default) as for many; being a ``DistributedSampler``, Lightning
    does not replace it under DDP. ``len()`` is the full epoch's share of this rank, also in a resumed epoch (as
    Lightning counts the batches of the epoch it resumes), while the iteration yields only the rest.
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.resume_epoch: int | None = None
        self.resume_offset = 0

    def global_order(self) -> list[int]:
        """This epoch's order of all ranks (padded to a multiple of ``num_replicas`` as torch pads)."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(n, generator=generator).tolist()
        else:
            indices = list(range(n))
        padding = self.total_size - len(indices)
        if padding > 0:
            indices += (indices * math.ceil(padding / max(1, len(indices))))[:padding]
        return indices

    def resume(self, epoch: int, offset: int) -> None:
        """Start ``epoch`` at global position ``offset`` (samples all ranks consumed before the checkpoint)."""
        self.resume_epoch, self.resume_offset = int(epoch), max(0, int(offset))
        self.set_epoch(int(epoch))

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        start = 0
        if self.resume_epoch is not None and self.epoch == self.resume_epoch:
            start = min(self.resume_offset, self.total_size)
            self.resume_epoch = None  # once: a later pass over this epoch starts at its beginning
        return iter(order[start + self.rank : self.total_size : self.num_replicas])


@dataclass
class TrainProgress:
    """Training batches consumed in the current epoch (counted where they are used, after the transfer)."""

    epoch: int = 0
    batches: int = 0

    def next_batch(self, epoch: int) -> int:
        """The index in ``epoch`` of the batch being consumed now (counting restarts with each epoch)."""
        if epoch != self.epoch:
            self.epoch, self.batches = epoch, 0
        index = self.batches
        self.batches += 1
        return index


class ResumableDataLoader(DataLoader):
    """The training ``DataLoader`` of :class:`CIFAR10DataModule`: Lightning saves its :meth:`state_dict` (the epoch
    and the batches consumed in it) in checkpoints and restores it when a fit resumes mid-epoch."""

    def __init__(self, dataset: Dataset, *args: Any, progress: TrainProgress | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self.progress = progress if progress is not None else TrainProgress()

    def _world(self) -> int:
        return self.sampler.num_replicas if isinstance(self.sampler, ResumableSampler) else 1

    def state_dict(self) -> dict[str, Any]:
        """Where the epoch stands: ``epoch``, ``batches`` consumed, and the ``batch_size``/``world_size``/``seed``
        they were counted with."""
        seed = self.sampler.seed if isinstance(self.sampler, ResumableSampler) else None
        return {
            "epoch": self.progress.epoch,
            "batches": self.progress.batches,
            "batch_size": self.batch_size,
            "world_size": self._world(),
            "seed": seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the saved epoch after its consumed batches (Lightning calls this on a mid-epoch resume)."""
        epoch, batches = int(state_dict.get("epoch", 0)), int(state_dict.get("batches", 0))
        batch_size = int(state_dict.get("batch_size") or self.batch_size or 1)
        world = int(state_dict.get("world_size") or 1)
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):
            rank_zero_warn("the training sampler was replaced; the resumed epoch starts from its beginning")
            return
        changed = [
            f"{name} {saved} -> {now}"
            for name, saved, now in (
                ("batch_size", batch_size, self.batch_size),
                ("world_size", world, sampler.num_replicas),
                ("seed", state_dict.get("seed", sampler.seed), sampler.seed),
            )
            if saved != now
        ]
        if changed:
            rank_zero_warn(
                f"resuming mid-epoch with changed data settings ({', '.join(changed)}): the epoch continues from "
                "the same global sample position, but the run is not an exact continuation"
            )
        offset = batches * batch_size * world
        if offset >= sampler.total_size:  # the checkpoint closed its epoch: the next one starts fresh
            epoch, batches, offset = epoch + 1, 0, 0
        self.progress.epoch, self.progress.batches = epoch, batches
        sampler.resume(epoch, offset)


def _batch_seed(*parts: int) -> int:
    """A 63-bit seed from integers (hash, so nearby inputs give unrelated streams)."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------------------------
# The data module
# --------------------------------------------------------------------------------------------------------------


class CIFAR10DataModule(LightningDataModule):
    """CIFAR-10 held in memory; see the module docstring for the sources and the batch pipeline.

    Args:
        data_dir: source folder or ``.tar.gz`` file; None (default) uses the embedded sample.
        batch_size: training batch size (per device).
        eval_batch_size: validation/test batch size; defaults to ``batch_size``.
        train_subset: if set, use a class-balanced deterministic subset of this many training images.
        test_subset: likewise for the test split (which is also used for validation).
        augment: random crop (4-pixel zero padding) + horizontal flip on training batches.
        download: download torchvision's CIFAR-10 into ``data_dir`` (needs network).
        num_workers: DataLoader worker processes (0 is fine: batches are sliced from memory).
        seed: seeds the subsets, the training order (``seed + epoch``) and the augmentation (with the global rank,
            epoch and batch index); see the module docstring on determinism and exact resume.
    """

    num_classes: int = len(CIFAR10_CLASSES)
    classes: tuple[str, ...] = CIFAR10_CLASSES
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        train_subset: int | None = None,
        test_subset: int | None = None,
        augment: bool = True,
        download: bool = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("train_subset", train_subset, 1),
            ("test_subset", test_subset, 1),
            ("num_workers", num_workers, 0),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
        self.train_subset = train_subset
        self.test_subset = test_subset
        self.augment = augment
        self.download = download
        self.num_workers = num_workers
        self.seed = seed
        self.source = _resolve_source(data_dir, download)
        self.train_dataset: InMemoryImageDataset | None = None
        self.test_dataset: InMemoryImageDataset | None = None
        self._generator: torch.Generator | None = None
        self.train_progress = TrainProgress()
        self._train_loader: ResumableDataLoader | None = None
        self._pending_resume: dict[str, Any] | None = None

    # ---- data ----------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download torchvision's CIFAR-10 when ``download=True`` (called on one process only)."""
        if self.source.download:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(self.source.path), train=True, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Decode the source (cached per process) and build the (subset) train and test datasets."""
        if self.train_dataset is not None and self.test_dataset is not None:
            return
        if self.source.download and not (self.source.path / _BATCHES_FOLDER).is_dir():
            self.prepare_data()  # used without a Trainer, which calls prepare_data before setup
        arrays = _load(self.source)
        train_x, train_y = arrays.train_images, arrays.train_labels
        test_x, test_y = arrays.test_images, arrays.test_labels
        if self.train_subset is not None:
            idx = class_balanced_indices(train_y, self.train_subset, self.seed, self.num_classes, "train_subset")
            train_x, train_y = train_x[idx], train_y[idx]
        if self.test_subset is not None:
            idx = class_balanced_indices(test_y, self.test_subset, self.seed + 1, self.num_classes, "test_subset")
            test_x, test_y = test_x[idx], test_y[idx]
        self.train_dataset = InMemoryImageDataset(train_x, train_y)
        self.test_dataset = InMemoryImageDataset(test_x, test_y)

    @property
    def num_train_samples(self) -> int:
        """Training images after subsetting (needs ``setup``)."""
        return len(self._require(self.train_dataset))

    @property
    def num_test_samples(self) -> int:
        """Test (= validation) images after subsetting (needs ``setup``)."""
        return len(self._require(self.test_dataset))

    @staticmethod
    def _require(dataset: InMemoryImageDataset | None) -> InMemoryImageDataset:
        if dataset is None:
            raise RuntimeError("call setup() first (the Trainer does this)")
        return dataset

    def _loader(self, dataset: InMemoryImageDataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._require(dataset),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=_batch_collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled uint8 training batches ``(N x 3 x 32 x 32, N)``: a :class:`ResumableDataLoader` over a
        :class:`ResumableSampler` for this process's rank (the trainer's world size and global rank)."""
        dataset = self._require(self.train_dataset)
        trainer = self.trainer
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        loader = ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=ResumableSampler(dataset, num_replicas=world, rank=self._rank(), shuffle=True, seed=self.seed),
            num_workers=self.num_workers,
            collate_fn=_batch_collate,
            persistent_workers=self.num_workers > 0,
            progress=self.train_progress,
        )
        pending, self._pending_resume = self._pending_resume, None
        if pending is not None and trainer is not None and getattr(trainer, "ckpt_path", None):
            loader.load_state_dict(pending)  # this fit resumes from the checkpoint that held ``pending``
        else:  # a fresh fit (a state loaded by validate/test(ckpt_path=...) is not a fit's position)
            self.train_progress.epoch, self.train_progress.batches = 0, 0
        self._train_loader = loader
        return loader

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The training position (:meth:`ResumableDataLoader.state_dict`), saved in Lightning checkpoints."""
        if self._train_loader is not None:
            return {"train_loader": self._train_loader.state_dict()}
        trainer = self.trainer
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        progress = self.train_progress
        return {
            "train_loader": {
                "epoch": progress.epoch, "batches": progress.batches, "batch_size": self.batch_size,
                "world_size": world, "seed": self.seed,
            }
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training position (Lightning calls this before ``configure_optimizers``): applied to the
        training loader when the resumed fit builds it, and to a loader built already (strategies that restore
        after their setup)."""
        state = state_dict.get("train_loader")
        if state is None:
            return
        self._pending_resume = dict(state)
        if self._train_loader is not None:
            self._train_loader.load_state_dict(state)

    def val_dataloader(self) -> DataLoader:
        """The test split (CIFAR-10 has no separate validation split here)."""
        return self._loader(self.test_dataset, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The test split."""
        return self._loader(self.test_dataset, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split."""
        return self._loader(self.test_dataset, self.eval_batch_size, shuffle=False)

    # ---- batch transforms ----------------------------------------------------------------------------------

    @property
    def generator(self) -> torch.Generator:
        """CPU generator for augmentation, seeded with ``seed + global_rank`` on first use; during training
        re-seeded for each batch from ``(seed, global rank, epoch, batch index)``."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed + self._rank())
        return self._generator

    def _rank(self) -> int:
        trainer = self.trainer
        return int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0

    def preprocess(self, images: Tensor, train: bool = False) -> Tensor:
        """uint8 batch -> normalized float32 batch, with crop/flip augmentation if ``train`` and ``augment``."""
        if train and self.augment:
            images = random_crop_flip(images, padding=4, generator=self.generator)
        return normalize(images, self.mean, self.std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment (training batches only) and normalize on the model's device."""
        images, labels = batch
        trainer = self.trainer
        training = trainer is not None and trainer.training
        if training:
            epoch = int(getattr(trainer, "current_epoch", 0) or 0)
            index = self.train_progress.next_batch(epoch)  # also the resume position of the training loader
            if self.augment:
                self.generator.manual_seed(_batch_seed(self.seed, self._rank(), epoch, index))
        return self.preprocess(images, train=training), labels
