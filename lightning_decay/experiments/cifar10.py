"""CIFAR-10 read into memory: finding a source in one of its layouts, decoding it to uint8 tensors, the in-process
cache, and class-balanced subsets.

Sources (:func:`resolve_source`, the ``data_dir``/``download`` arguments of ``CIFAR10DataModule``):

* ``download=True``: torchvision's CIFAR-10 in ``data_dir``, downloaded there if missing (needs network).
* a folder in torchvision's format: ``data_dir/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
  (``data_dir`` may also be the ``cifar-10-batches-py`` folder itself).
* a folder of JPEGs in ImageFolder layout: ``data_dir/train/<class>/*.jpg`` and ``data_dir/test/<class>/*.jpg``
  (or the same under a single top-level folder of ``data_dir``).
* a ``.tar.gz`` (or ``.tar``) file with that JPEG layout inside, possibly under one top-level folder; the
  members are read straight from the archive, nothing is extracted to disk.
* ``data_dir=None`` (the default): the small class-balanced sample shipped with the package in
  ``lightning_decay/experiments/sample/cifar10-sample.tar.gz`` (:data:`SAMPLE_ARCHIVE`; 1,000 train + 200 test
  images per class), so that a fresh machine without network can run the jobs. It was cut by
  ``tools/make_cifar_sample.py`` from a JPEG re-encoding of CIFAR-10, so the pixels (and hence accuracies) differ
  slightly from torchvision's original arrays; say which source a result used. The full 60,000-image JPEG archive
  is read the same way.

Class indices follow the CIFAR-10 order, which is also the sorted order of the class folder names:
airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck.

Images are decoded once per process (JPEGs with ``torchvision.io.decode_jpeg``) into an ``N x 3 x 32 x 32``
uint8 tensor plus int64 labels (:class:`CIFAR10Arrays`), and cached in-process, so a second data module on the
same source does not decode again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tarfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "SAMPLE_ARCHIVE",
    "CIFAR10Arrays",
    "CIFAR10Source",
    "class_balanced_indices",
    "clear_cache",
    "download_cifar10",
    "load_cifar10",
    "load_source",
    "resolve_source",
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

SAMPLE_ARCHIVE: Path = Path(__file__).resolve().parent / "sample" / "cifar10-sample.tar.gz"
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
class CIFAR10Source:
    """Where CIFAR-10 is read from (made by :func:`resolve_source`).

    ``kind`` ``"torchvision"``: ``path`` is the folder holding ``cifar-10-batches-py/`` (``download``: fetched
    there by :func:`download_cifar10` if missing); ``"jpeg_dir"``: the folder holding ``train/`` and ``test/``;
    ``"tar"``: the archive file.
    """

    kind: Literal["torchvision", "jpeg_dir", "tar"]
    path: Path
    download: bool = False

    @property
    def is_present(self) -> bool:
        """Whether the files are there (only a ``download`` source may lack them before :func:`download_cifar10`)."""
        return (self.path / _BATCHES_FOLDER).is_dir() if self.kind == "torchvision" else self.path.exists()

    def cache_key(self) -> tuple[Any, ...]:
        """Identifies the decoded data: the kind, the file or folder, and its modification time and size."""
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


def resolve_source(data_dir: str | Path | None, download: bool = False) -> CIFAR10Source:
    """Map ``data_dir``/``download`` (see the module docstring) to a source, or raise a ValueError naming
    ``data_dir`` and the accepted layouts. Cheap: checks the layout, decodes nothing."""
    if download:
        if data_dir is None:
            raise ValueError("download=True needs a data_dir to download torchvision's CIFAR-10 into")
        root = Path(data_dir).expanduser()
        if root.exists() and not root.is_dir():
            raise ValueError(f"data_dir {str(root)!r} is a file; download=True needs a folder")
        return CIFAR10Source("torchvision", root, download=True)
    if data_dir is None:
        if not SAMPLE_ARCHIVE.is_file():
            raise ValueError(
                f"data_dir=None selects the embedded CIFAR-10 sample, but {SAMPLE_ARCHIVE} is missing "
                "(was the package installed without its package data?)"
            )
        return CIFAR10Source("tar", SAMPLE_ARCHIVE)
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise ValueError(f"data_dir {str(path)!r} does not exist; {_LAYOUTS_HELP}")
    if path.is_file():
        _check_tar(path)
        return CIFAR10Source("tar", path)
    if (path / _BATCHES_FOLDER).is_dir() or path.name == _BATCHES_FOLDER:
        root = path if (path / _BATCHES_FOLDER).is_dir() else path.parent
        missing = [f for f in _BATCH_FILES if not (root / _BATCHES_FOLDER / f).is_file()]
        if missing:
            raise ValueError(f"data_dir {str(path)!r}: {root / _BATCHES_FOLDER} lacks {', '.join(missing)}")
        return CIFAR10Source("torchvision", root)
    jpeg_root = _jpeg_root(path)
    if jpeg_root is None:
        raise ValueError(f"data_dir {str(path)!r} has neither layout; {_LAYOUTS_HELP}")
    found = {s: {p.name for p in (jpeg_root / s).iterdir() if p.is_dir() and not _is_hidden(p.name)} for s in _SPLITS}
    _check_classes(found, repr(str(jpeg_root)))
    return CIFAR10Source("jpeg_dir", jpeg_root)


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


#: Environment variable naming a folder where decoded JPEG sources are kept as one uint8 tensor file (opt-in;
#: ``lightning-decay sweep`` sets it for its cells). Decoding the 60,000 JPEGs of CIFAR-10 takes ~6-25 s per process
#: on a 2-core CPU; reading the decoded file (184 MB) well under a second. The pixels are the decoded ones, bit for bit.
DISK_CACHE_ENV = "LIGHTNING_DECAY_DATA_CACHE"


def _disk_cache_file(source: CIFAR10Source) -> Path | None:
    """The decoded-cache file of a JPEG source (named by a hash of :meth:`CIFAR10Source.cache_key`), or None when
    the cache is off (:data:`DISK_CACHE_ENV` unset or empty) or the source is torchvision's (already fast)."""
    folder = os.environ.get(DISK_CACHE_ENV, "").strip()
    if not folder or source.kind == "torchvision":
        return None
    digest = hashlib.sha256(repr(source.cache_key()).encode()).hexdigest()[:16]
    return Path(folder).expanduser() / f"cifar10-{digest}.pt"


def _read_disk_cache(path: Path) -> CIFAR10Arrays | None:
    """The arrays of a cache file; None (decode again) when missing or unreadable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return CIFAR10Arrays(*(payload[k] for k in ("train_images", "train_labels", "test_images", "test_labels")))
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError):
        return None


def _write_disk_cache(path: Path, arrays: CIFAR10Arrays) -> None:
    """Write the arrays atomically (temporary file, then rename: concurrent writers of the same file are safe);
    an unwritable folder only costs the next process a decode."""
    fields = ("train_images", "train_labels", "test_images", "test_labels")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: getattr(arrays, k) for k in fields}, temporary)
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        log.warning("could not write the decoded CIFAR-10 cache %s: %s", path, err)


def clear_cache() -> None:
    """Drop the in-process cache of decoded data sets."""
    _CACHE.clear()


def download_cifar10(root: str | Path) -> None:
    """Download torchvision's CIFAR-10 into ``root`` unless it is there already (needs network)."""
    from torchvision.datasets import CIFAR10

    CIFAR10(str(root), train=True, download=True)


def load_cifar10(data_dir: str | Path | None = None) -> CIFAR10Arrays:
    """Decode a CIFAR-10 source (see the module docstring; no download) into uint8 tensors.

    Results are cached per source in the process (the last two sources), so repeated calls are free.
    Raises ValueError for a missing or malformed source.
    """
    return load_source(resolve_source(data_dir, download=False))


def load_source(source: CIFAR10Source) -> CIFAR10Arrays:
    """Decode ``source`` (cached like :func:`load_cifar10`); a ``download`` source must be downloaded first."""
    key = source.cache_key()
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    start = time.perf_counter()
    cache_file = _disk_cache_file(source)
    arrays = _read_disk_cache(cache_file) if cache_file is not None else None
    if arrays is not None:
        how = f"read from the decoded cache {cache_file}"
    else:
        if source.kind == "torchvision":
            arrays = _read_torchvision(source.path)
        elif source.kind == "jpeg_dir":
            arrays = _read_jpeg_dir(source.path)
        else:
            arrays = _read_tar(source.path)
        how = "decoded"
        if cache_file is not None:
            _write_disk_cache(cache_file, arrays)
    log.info(
        "CIFAR-10 from %s: %d train + %d test images %s in %.2fs",
        source.path,
        len(arrays.train_labels),
        len(arrays.test_labels),
        how,
        time.perf_counter() - start,
    )
    _CACHE[key] = arrays
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return arrays


# --------------------------------------------------------------------------------------------------------------
# Subsets
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

