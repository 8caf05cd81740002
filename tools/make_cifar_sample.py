"""Cut the class-balanced CIFAR-10 sample embedded in the package (``lightning_decay/experiments/sample/``).

Reads the JPEG archive (``train/<class>/NNNN.jpg``, ``test/<class>/NNNN.jpg``), picks a seeded random subset of
files per class and split, and writes them, bytes unchanged and under the same member names, to a
reproducible ``.tar.gz`` (sorted members, zeroed timestamps and owners, gzip mtime 0): the same inputs give a
byte-identical output. Usage::

    python tools/make_cifar_sample.py --source /work/shared/data/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import random
import sys
import tarfile
from collections import defaultdict
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = Path("/work/shared/data/cifar10-jpeg.tar.gz")
DEFAULT_OUT = REPO / "lightning_decay" / "experiments" / "sample" / "cifar10-sample.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MAX_BYTES = 5_000_000


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_members(source: Path) -> dict[tuple[str, str], dict[str, bytes]]:
    """``{(split, class): {file name: jpeg bytes}}`` for the JPEG members of ``source``."""
    found: dict[tuple[str, str], dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(source, "r:*") as tf:
        for member in tf:
            parts = PurePosixPath(member.name).parts
            if not member.isfile() or len(parts) < 3 or not parts[-1].lower().endswith((".jpg", ".jpeg")):
                continue
            split, cls, name = parts[-3:]
            if split in ("train", "test") and cls in CLASSES:
                fileobj = tf.extractfile(member)
                assert fileobj is not None
                found[split, cls][name] = fileobj.read()
    return found


def make_sample(source: Path, out: Path, train_per_class: int, test_per_class: int, seed: int) -> int:
    """Write the sample to ``out``; returns the number of images."""
    members = read_members(source)
    rng = random.Random(seed)
    buf = io.BytesIO()
    count = 0
    with (
        gzip.GzipFile(filename="", fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tf,
    ):
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            for cls in CLASSES:
                files = members.get((split, cls), {})
                if len(files) < per_class:
                    raise SystemExit(f"{source}: {split}/{cls} has {len(files)} images, need {per_class}")
                for name in sorted(rng.sample(sorted(files), per_class)):
                    info = tarfile.TarInfo(f"{split}/{cls}/{name}")
                    info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
                    tf.addfile(info, io.BytesIO(files[name]))
                    count += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    return count


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="full CIFAR-10 JPEG .tar.gz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    count = make_sample(args.source, args.out, args.train_per_class, args.test_per_class, args.seed)
    size = args.out.stat().st_size
    print(f"source {args.source} sha256 {sha256(args.source)}")
    print(f"wrote {args.out}: {count} images, {size / 1e6:.2f} MB, sha256 {sha256(args.out)}")
    if size > MAX_BYTES:
        sys.exit(f"sample is {size / 1e6:.2f} MB, over the {MAX_BYTES / 1e6:.0f} MB budget")


if __name__ == "__main__":
    main()
