"""Read the history of an offline W&B run back from its ``run-<id>.wandb`` file (no network, no account).

Hand-written because wandb 0.31 has no reader of its own: the Python ``DataStore`` left with the legacy
service, ``wandb.beta.LocalApi`` (wandb/wandb#12745) is not released, and an offline run writes no
``wandb-summary.json`` / ``config.yaml`` (wandb/wandb#11279) — the ``.wandb`` file is all there is. The records
are parsed by W&B's own protobuf classes (``wandb.proto``), so only the framing below is ours; a file of an
unknown format version is refused with a message (see ``docs/hand-written.md``).

wandb 0.31 keeps an offline run's logged rows only in that file. Its layout: a 7-byte header (``:W&B``, two magic
bytes, one version byte), then LevelDB-log records in 32 KiB blocks. Each chunk starts with a 7-byte header (crc32c
``uint32``, payload length ``uint16`` little-endian, type ``uint8``: 1 full, 2 first, 3 middle, 4 last); a block tail
shorter than 7 bytes is padding. Each record is a protobuf ``wandb.proto.wandb_internal_pb2.Record``; a logged row is
``record.history`` with items ``key`` (or ``nested_key``) and ``value_json``.

    rows = read_history(find_run_file(save_dir))
    [row["weight_norm/total"] for row in rows if "weight_norm/total" in row]

The same file holds the run's config (``record.config``), its summary updates (``record.summary``) and its
``define_metric`` calls (``record.metric``): :func:`read_config`, :func:`read_summary`,
:func:`read_metric_definitions`.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "find_run_file",
    "iter_records",
    "read_config",
    "read_history",
    "read_metric_definitions",
    "read_summary",
    "wait_until_written",
]

HEADER_BYTES = 7
BLOCK_BYTES = 32 * 1024
CHUNK_HEADER_BYTES = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
#: The file format versions (the header's last byte) this reader knows: W&B's store version 0 (wandb 0.10 - 0.31).
KNOWN_VERSIONS = frozenset({0})


def find_run_file(directory: str | Path) -> Path:
    """The newest ``run-*.wandb`` file under ``directory`` (searched recursively); FileNotFoundError if none."""
    files = sorted(Path(directory).rglob("run-*.wandb"), key=lambda path: path.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file under {directory}")
    return files[-1]


def wait_until_written(path: str | Path, quiet_seconds: float = 0.5, timeout: float = 30.0) -> Path:
    """Wait until the file's size has not changed for ``quiet_seconds`` (at most ``timeout`` seconds).

    ``wandb.finish()`` of an offline run can return while wandb-core still flushes the last buffered part of the
    ``.wandb`` file (seen here: the file at exactly 1 MiB when ``finish()`` returned, complete ~20 ms later).
    """
    path = Path(path)
    deadline = time.monotonic() + timeout
    size, since = path.stat().st_size, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(min(0.05, quiet_seconds))
        current = path.stat().st_size
        if current != size:
            size, since = current, time.monotonic()
        elif time.monotonic() - since >= quiet_seconds:
            break
    return path


def _payloads(data: bytes, position: int = HEADER_BYTES) -> Iterator[bytes]:
    """The record payloads of a LevelDB-log byte string, chunks reassembled. Blocks are counted from the start of
    the file (the 7-byte file header sits in the first block), so ``position`` starts after that header."""
    pending = bytearray()
    while position + CHUNK_HEADER_BYTES <= len(data):
        left_in_block = BLOCK_BYTES - position % BLOCK_BYTES
        if left_in_block < CHUNK_HEADER_BYTES:  # block trailer: padding
            position += left_in_block
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, position)
        start = position + CHUNK_HEADER_BYTES
        if start + length > len(data):  # a chunk still being written (live run): stop before it
            break
        chunk = data[start : start + length]
        position = start + length
        if kind == 0 and length == 0:  # zero-filled (preallocated) tail
            break
        if kind == FULL:
            yield bytes(chunk)
        elif kind == FIRST:
            pending = bytearray(chunk)
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            pending += chunk
            yield bytes(pending)
            pending = bytearray()
        else:
            raise ValueError(f"corrupt .wandb file: chunk type {kind} at byte {position - length}")


def iter_records(path: str | Path) -> Iterator[Any]:
    """Every ``wandb_internal_pb2.Record`` in a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    raw = Path(path).read_bytes()
    if raw[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (header {raw[:HEADER_BYTES]!r})")
    if len(raw) >= HEADER_BYTES and raw[HEADER_BYTES - 1] not in KNOWN_VERSIONS:
        import wandb

        raise ValueError(
            f"{path}: W&B run file format version {raw[HEADER_BYTES - 1]} (wandb {wandb.__version__}) is not one this "
            f"reader knows ({sorted(KNOWN_VERSIONS)}); read the run's metrics.csv instead, or sync the run and use "
            "wandb.Api()"
        )
    for payload in _payloads(raw):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def read_history(path: str | Path, quiet_seconds: float = 0.5) -> list[dict[str, Any]]:
    """The run's history rows, in logging order: one dict per ``wandb.log`` call, values JSON-decoded (numbers
    as floats/ints; nested values such as histograms flattened to ``key/field``, as W&B stores them).

    First waits until the file stops growing for ``quiet_seconds`` (see :func:`wait_until_written`; 0 reads now).
    """
    if quiet_seconds > 0:
        wait_until_written(path, quiet_seconds)
    rows = []
    for record in iter_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            key = item.key if item.key else "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def _item_key(item: Any) -> str:
    return item.key if item.key else "/".join(item.nested_key)


def read_summary(path: str | Path, quiet_seconds: float = 0.5) -> dict[str, Any]:
    """The run's summary as the file's summary records leave it (the latest update of each key; a key with a
    ``define_metric`` summary holds e.g. ``{"min": ...}``). Waits like :func:`read_history`."""
    return _latest_updates(path, "summary", quiet_seconds)


def read_config(path: str | Path, quiet_seconds: float = 0.5) -> dict[str, Any]:
    """The run's config (the latest value of each key, JSON-decoded; nested dicts as logged)."""
    return _latest_updates(path, "config", quiet_seconds)


def _latest_updates(path: str | Path, record_type: str, quiet_seconds: float) -> dict[str, Any]:
    """The latest JSON-decoded value of each key of the file's ``record_type`` records (``summary``, ``config``)."""
    if quiet_seconds > 0:
        wait_until_written(path, quiet_seconds)
    values: dict[str, Any] = {}
    for record in iter_records(path):
        if record.WhichOneof("record_type") == record_type:
            for item in getattr(record, record_type).update:
                values[_item_key(item)] = json.loads(item.value_json)
    return values


def read_metric_definitions(path: str | Path, quiet_seconds: float = 0.5) -> list[dict[str, Any]]:
    """The run's ``define_metric`` calls, in order: ``{"name": <name or glob>, "glob": bool, "step_metric": str,
    "summary": [ops]}``."""
    if quiet_seconds > 0:
        wait_until_written(path, quiet_seconds)
    definitions = []
    for record in iter_records(path):
        if record.WhichOneof("record_type") != "metric":
            continue
        metric = record.metric
        ops = [op for op in ("min", "max", "mean", "last", "first", "none") if getattr(metric.summary, op, False)]
        definitions.append({
            "name": metric.glob_name or metric.name, "glob": bool(metric.glob_name),
            "step_metric": metric.step_metric, "summary": ops,
        })
    return definitions
