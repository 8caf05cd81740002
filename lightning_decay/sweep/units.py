"""The unit of work of a sweep and what runs inside a job: a :class:`Unit` is a list of cell folders run by one
command, ``python -m lightning_decay.sweep run-cell <cell>/spec.json [...] --attempt <id> [...]``
(:func:`run_cell_command` claims the cells and runs them); :func:`run_unit` runs that command inside a submitit job
or a Ray task, its output in the cell's log, a stop request passed on to the cell. Where units run is
:mod:`lightning_decay.sweep.executors`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_decay.sweep.locks import NOT_RUN_EXIT_CODE, claimed_cells
from lightning_decay.sweep.results import LOG_FILE, SPEC_FILE

__all__ = ["TERMINATE_GRACE_S", "Unit", "run_unit", "run_cell_command"]

#: Seconds between SIGTERM and SIGKILL when a running cell is stopped.
TERMINATE_GRACE_S = 20.0


@dataclass(frozen=True)
class Unit:
    """One job's work: cell folders run by one command (``attempts[i]`` is the attempt id of ``folders[i]``)."""

    cells: tuple[str, ...]
    folders: tuple[Path, ...]
    attempts: tuple[str, ...]

    def arguments(self) -> list[str]:
        """The command after ``python``: ``-m lightning_decay.sweep run-cell SPEC... --attempt ID...``."""
        return ["-m", "lightning_decay.sweep", "run-cell", *self.command()]

    def command(self) -> list[str]:
        """The arguments of ``run-cell``: ``SPEC... --attempt ID...`` (:func:`run_cell_command`)."""
        specs = [str(folder.resolve() / SPEC_FILE) for folder in self.folders]
        return [*specs, "--attempt", *self.attempts]

    @property
    def log(self) -> Path:
        """Where the command's output goes (the first cell's ``output.log``)."""
        return self.folders[0].resolve() / LOG_FILE

    @property
    def label(self) -> str:
        return self.cells[0] if len(self.cells) == 1 else f"{self.cells[0]} (+{len(self.cells) - 1} cells)"


# ----------------------------------------------------------------------------------------------------------------
# What runs inside a job: the unit's command, with the sweep's environment, its output in the cell log
# ----------------------------------------------------------------------------------------------------------------


def _parent_death_signal() -> Any:
    """A function for ``preexec_fn`` that makes the child get SIGTERM when its parent (the job wrapper) dies, or
    None off Linux. libc is looked up here, before the fork: the child only calls it (no import after the fork
    of a process with threads, such as a Ray worker)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_unit(arguments: Sequence[str], env: Mapping[str, str], cwd: str, log: str) -> int:
    """Run one unit's command here (inside a submitit job or a Ray task): this interpreter, ``env`` on top of
    this machine's environment, in ``cwd``, output appended to ``log``. Returns the command's exit code; a stop
    request (Ctrl-C, SIGTERM, a cancelled job) is passed on to the cell as SIGTERM (SIGKILL after 20 s)."""
    full_env = {**os.environ, **env}
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as output:
        process = subprocess.Popen(
            [sys.executable, *arguments], cwd=cwd, env=full_env, stdout=output, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_parent_death_signal(),
        )
        previous = None
        with contextlib.suppress(ValueError):  # not the main thread: no handler, the parent-death signal remains
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            # Polled, not a blocking wait: Ray cancels a task with an interrupt flag (interrupt_main), which a thread
            # blocked in waitpid would only see once the cell ends.
            while process.poll() is None:
                time.sleep(0.2)
            return process.returncode
        except BaseException:
            _stop_process(process)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_cell_command(argv: Sequence[str]) -> int:
    """``run-cell SPEC [SPEC ...] [--attempt ID [ID ...]]``: claim the cells and run those still to run, one after
    the other (the command of a :class:`Unit`). Exit code: 0 all ran ok, 130 interrupted, 1 some failed,
    :data:`~lightning_decay.sweep.locks.NOT_RUN_EXIT_CODE` when none was run (claimed elsewhere, finished, or
    prepared again by another sweep since)."""
    from lightning_decay.sweep.batched import run_cells

    args = list(argv)
    attempts: list[str] | None = None
    if "--attempt" in args:
        at = args.index("--attempt")
        args, attempts = args[:at], args[at + 1 :]
    if not args or (attempts is not None and len(attempts) != len(args)):
        print("usage: python -m lightning_decay.sweep run-cell SPEC.json [...] [--attempt ID [...]]", file=sys.stderr)
        return 2
    folders = [Path(spec).resolve().parent for spec in args]
    with claimed_cells(folders, attempts) as runnable:
        for folder in folders:
            if folder not in runnable:
                print(f"{folder.name}: not run here (claimed by another process, finished, or prepared again since)")
        codes = run_cells(runnable)  # one after another, each from the same process state
    if not codes:
        return NOT_RUN_EXIT_CODE
    if 130 in codes:
        return 130
    return 0 if all(code == 0 for code in codes) else 1
