"""Cell locks and cell states: which cells are finished, running elsewhere, or still to run.

A running cell holds ``<cell folder>/lock`` (host and the pids of the sweep and of the cell process). A lock whose
processes are all gone is stale and is replaced; a lock of another host is respected.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from lightning_decay.sweep.grid import Cell, GridSpec
from lightning_decay.sweep.results import LOCK_FILE, LOG_FILE, RESULT_FILE, cell_dir, read_json, write_json_atomic

__all__ = ["PREVIOUS_LOG_FILE", "acquire_lock", "cell_state", "clear_attempt", "lock_owner", "pid_alive", "update_lock"]

#: The log of an unfinished attempt, kept when the cell is re-run.
PREVIOUS_LOG_FILE = "previous-attempt.log"


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` exists and has not exited (a zombie awaiting its reaper counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def lock_owner(lock: Path) -> str | None:
    """A description of the live process(es) holding ``lock``, or None when the lock is stale."""
    try:
        info = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written right now, or garbage
        return "a process that is writing it" if time.time() - lock.stat().st_mtime < 30 else None
    host = info.get("host")
    if host != socket.gethostname():
        return f"host {host!r} (delete {lock} if that sweep is gone)"
    alive = [pid for pid in info.get("pids", []) if isinstance(pid, int) and pid_alive(pid)]
    return f"pid {', '.join(map(str, alive))}" if alive else None


def acquire_lock(lock: Path) -> bool:
    """Take a cell's lock (atomic create); a stale lock (its processes are gone) is replaced."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if lock_owner(lock) is not None:
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as file:
            json.dump({"host": socket.gethostname(), "pids": [os.getpid()], "time": time.time()}, file)
        return True
    return False


def update_lock(lock: Path, pids: list[int]) -> None:
    """Record the processes that hold ``lock`` (the sweep and the cell process)."""
    write_json_atomic(lock, {"host": socket.gethostname(), "pids": pids, "time": time.time()})


def clear_attempt(folder: Path) -> None:
    """Remove what an unfinished attempt left in a cell folder (keeping its log as ``previous-attempt.log``)."""
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.name == LOG_FILE:
            entry.replace(folder / PREVIOUS_LOG_FILE)
        elif entry.name != PREVIOUS_LOG_FILE:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def cell_state(grid: GridSpec, cell: Cell, fingerprint: str) -> str:
    """``done``, ``changed`` (finished with other settings), ``locked`` or ``todo``."""
    folder = cell_dir(grid.output, cell.id)
    result = read_json(folder / RESULT_FILE)
    if result is not None and result.get("status") == "ok":
        return "done" if result.get("fingerprint") == fingerprint else "changed"
    if (folder / LOCK_FILE).exists() and lock_owner(folder / LOCK_FILE) is not None:
        return "locked"
    return "todo"
