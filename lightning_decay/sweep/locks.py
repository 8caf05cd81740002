"""Cell claims and cell states: which cells are finished, running elsewhere, or still to run.

A cell is claimed with an OS lock (``flock`` through :mod:`filelock`) on ``<cell folder>/lock``. The OS releases it
when its holder dies, whatever the host, so a claim means "a live process holds this cell" on one machine, across
machines of a shared filesystem that supports ``flock`` (NFS v4, Lustre, GPFS, BeeGFS) and on macOS alike; no pid
is ever checked. The lock file stays after a release (deleting it would race with the next holder).

Running a cell takes two steps, both under the claim:

1. **prepare** (the sweep, :func:`prepare_cell`): claim, remove the leftovers of an unfinished attempt, write a new
   attempt id to ``<cell folder>/claim`` (plus the spec, by the caller), release;
2. **run** (the job, wherever it runs, :func:`claimed_cells`): claim again, check that the attempt id is still the
   one it was launched with and that the cell is not finished, write its host and pid to ``claim``, run, release.

A job whose cell was prepared again since (by a second sweep on the same folder, or by a rerun after the driver
died while the job was queued) or that finds the cell claimed or finished does not run it: two sweeps never run
one cell twice, and a queued job of a dead sweep cannot overwrite a newer attempt.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from lightning_decay.sweep.grid import Cell, GridSpec
from lightning_decay.sweep.results import (
    LOCK_FILE,
    LOG_FILE,
    RESULT_FILE,
    SPEC_FILE,
    cell_dir,
    read_json,
    write_json_atomic,
)

__all__ = [
    "CLAIM_FILE",
    "NOT_RUN_EXIT_CODE",
    "PREVIOUS_LOG_FILE",
    "cell_state",
    "claim_info",
    "claim_owner",
    "claimed_cells",
    "clear_attempt",
    "hold_cell",
    "is_claimed",
    "prepare_cell",
    "try_claim",
]

#: The log of an unfinished attempt, kept when the cell is re-run.
PREVIOUS_LOG_FILE = "previous-attempt.log"
#: Who prepared or runs the cell: ``{"attempt", "host", "pid", "state", "time"}`` (information, never a decision).
CLAIM_FILE = "claim"
#: Exit code of a cell command that ran none of its cells: each was claimed by another process, finished, or
#: prepared again since (``EX_TEMPFAIL``).
NOT_RUN_EXIT_CODE = 75


def _file_lock(path: Path, timeout: float) -> FileLock:
    try:  # filelock >= 4 would silently use a marker file (not released when its owner dies) without flock
        return FileLock(str(path), timeout=timeout, fallback_to_soft=False)
    except TypeError:  # filelock 3: flock, or an error
        return FileLock(str(path), timeout=timeout)


def try_claim(folder: Path, timeout: float = 0.0) -> FileLock | None:
    """Claim a cell folder (created if missing): its held lock, or None when another process holds it (after
    waiting up to ``timeout`` seconds). Release it with ``.release()``."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = _file_lock(folder / LOCK_FILE, timeout)
    try:
        lock.acquire()
    except Timeout:
        return None
    except OSError as error:  # e.g. a filesystem without flock
        raise OSError(f"cannot lock {folder / LOCK_FILE} ({error}): the sweep needs a filesystem with flock") from error
    return lock


def is_claimed(folder: Path) -> bool:
    """Whether a live process (this one included) holds the cell's claim; never creates anything."""
    if not (folder / LOCK_FILE).exists():
        return False
    lock = try_claim(folder)
    if lock is None:
        return True
    lock.release()
    return False


def claim_info(folder: Path) -> dict[str, Any]:
    """The contents of ``<folder>/claim`` (empty when missing or unreadable)."""
    return read_json(folder / CLAIM_FILE) or {}


def _write_claim(folder: Path, attempt: str, state: str) -> None:
    write_json_atomic(folder / CLAIM_FILE, {
        "attempt": attempt, "host": socket.gethostname(), "pid": os.getpid(), "state": state, "time": time.time(),
    })


def clear_attempt(folder: Path) -> None:
    """Remove what an unfinished attempt left in a cell folder (keeping its log as ``previous-attempt.log``)."""
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.name == LOG_FILE:
            entry.replace(folder / PREVIOUS_LOG_FILE)
        elif entry.name != PREVIOUS_LOG_FILE:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


@contextlib.contextmanager
def hold_cell(folder: Path, fingerprint: str | None = None) -> Iterator[str | None]:
    """Claim the cell, clear the unfinished attempt and start a new one; yields its attempt id (None, and nothing
    touched, when another process holds the claim or, given its ``fingerprint``, the cell is finished: another
    sweep may have run it since this one looked). The claim is released on exit."""
    lock = try_claim(folder)
    if lock is None:
        yield None
        return
    try:
        if fingerprint is not None and _finished(folder, {"fingerprint": fingerprint}):
            yield None
            return
        clear_attempt(folder)
        attempt = uuid.uuid4().hex
        _write_claim(folder, attempt, "prepared")
        yield attempt
    finally:
        lock.release()


def prepare_cell(folder: Path, write: Any = None, fingerprint: str | None = None) -> str | None:
    """Step 1 (the sweep): :func:`hold_cell`, then ``write(folder)`` (e.g. the spec) under the claim; returns the
    new attempt id, None when another process holds the cell or it is finished (with ``fingerprint``)."""
    with hold_cell(folder, fingerprint) as attempt:
        if attempt is not None and write is not None:
            write(folder)
        return attempt


def _finished(folder: Path, spec: dict[str, Any] | None) -> bool:
    result = read_json(folder / RESULT_FILE)
    if result is None or result.get("status") != "ok":
        return False
    return spec is None or result.get("fingerprint") == spec.get("fingerprint")


@contextlib.contextmanager
def claimed_cells(
    folders: Sequence[Path], attempts: Sequence[str | None] | None = None, wait: float = 5.0
) -> Iterator[list[Path]]:
    """Step 2 (the job): claim each cell folder; yields those this process may run (claimed, not finished, and
    still at the given attempt id when one is given) and holds their claims until exit. Cells held by another
    process, finished, or prepared again since are left out (the caller reports them)."""
    attempts = list(attempts) if attempts is not None else [None] * len(folders)
    if len(attempts) != len(folders):
        raise ValueError(f"{len(folders)} cell folder(s) but {len(attempts)} attempt id(s)")
    held: list[FileLock] = []
    runnable: list[Path] = []
    try:
        for folder, attempt in zip(map(Path, folders), attempts):
            lock = try_claim(folder, timeout=wait)  # a sweep may be preparing it right now: a short wait
            if lock is None:
                continue
            current = claim_info(folder).get("attempt")
            if (attempt is not None and current != attempt) or _finished(folder, read_json(folder / SPEC_FILE)):
                lock.release()
                continue
            held.append(lock)
            _write_claim(folder, current or uuid.uuid4().hex, "running")
            runnable.append(folder)
        yield runnable
    finally:
        for lock in held:
            lock.release()


def cell_state(grid: GridSpec, cell: Cell, fingerprint: str) -> str:
    """``done``, ``changed`` (finished with other settings), ``locked`` (claimed by a live process) or ``todo``."""
    folder = cell_dir(grid.output, cell.id)
    result = read_json(folder / RESULT_FILE)
    if result is not None and result.get("status") == "ok":
        return "done" if result.get("fingerprint") == fingerprint else "changed"
    if is_claimed(folder):
        return "locked"
    return "todo"


def claim_owner(folder: Path) -> str:
    """Who holds a claimed cell, as far as its ``claim`` file says (e.g. ``host node12, pid 4242``)."""
    info = claim_info(folder)
    return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}" if info else "another process"
