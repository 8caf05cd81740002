"""A local job started as a fork of the sweep process instead of a fresh interpreter (``executor: {name: local,
options: {start: fork}}``; ``auto``, the default, forks where it is safe).

A fresh cell process spends ~6 s importing torch and Lightning before its first cell, as long as a small cell's
training; the sweep process has imported them already, so a copy of it (``os.fork``) starts its cells at once. The
copy is made to start as the job's command would in a fresh interpreter: its own session (so a stop reaches its
whole process group), its output (file descriptors 1 and 2 and ``sys.stdout`` / ``sys.stderr``) in the job's log,
stdin from ``/dev/null``, the job's environment, the default signal handlers, no inherited exit handlers, warnings
the sweep process showed shown again, torch's global flags and random generators as a new interpreter has them;
then it runs ``run-cell`` on its cells (:func:`~lightning_decay.sweep.units.run_cell_command`) and leaves with the
command's exit code.

What does not survive a fork decides where it is safe (:func:`fork_hazard`): a process with other Python threads
(their locks are copied held) and CUDA (a GPU machine spawns). OpenMP's thread pool does not survive either: once a
parallel region ran, GNU libgomp keeps its workers, and a forked child that runs on more than one thread waits for
workers it does not have (GCC bug 60035). So before each fork the sweep process ends its pool with OpenMP 5's
``omp_pause_resource_all(omp_pause_hard)`` (:func:`_release_openmp_pool`; the next parallel region starts a new
one); where this process has no libgomp that can, cells must run on one thread.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import io
import logging
import os
import random
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from lightning_decay.sweep.batched import reset_torch_flags
from lightning_decay.sweep.units import Unit, run_cell_command

__all__ = ["START_METHODS", "fork_hazard", "fork_unit"]

#: How the local executor starts a job: ``auto`` (fork when :func:`fork_hazard` finds nothing, else spawn),
#: ``fork`` (a copy of the sweep process; refused where unsafe) or ``spawn`` (a fresh interpreter).
START_METHODS = ("auto", "fork", "spawn")
#: ``sys.argv[0]`` of ``python -m lightning_decay.sweep``.
_MAIN = str(Path(__file__).with_name("__main__.py"))
#: ``omp_pause_hard`` of OpenMP 5's ``omp_pause_resource_t``: end the runtime's threads, not only park them.
_OMP_PAUSE_HARD = 2


def fork_hazard(threads: int, gpus: Sequence[str]) -> str | None:
    """Why this process must not fork cell processes (None when it may): not Linux, cells on more than one thread
    where OpenMP's pool cannot be ended first (:func:`_release_openmp_pool`), GPUs visible or CUDA started (CUDA),
    or other Python threads running in this process."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return f"the sweep runs on {sys.platform}, not Linux"
    if threads != 1 and _release_openmp_pool() is None:
        return (
            f"cells run on {threads} threads and this process's OpenMP runtime is not a GNU libgomp that can end its "
            "thread pool before a fork (a forked pool of more than one thread hangs)"
        )
    if gpus:
        return "GPUs are visible to the sweep (CUDA does not survive a fork)"
    if torch.cuda.is_initialized():
        return "CUDA has started in the sweep process (it does not survive a fork)"
    others = [thread.name for thread in threading.enumerate() if thread is not threading.current_thread()]
    if others:
        return (
            f"the sweep process runs {len(others) + 1} Python threads ({', '.join(others)} besides this one: "
            "their locks would be copied held)"
        )
    return None


def fork_unit(unit: Unit, env: Mapping[str, str]) -> int:
    """Start ``unit`` in a fork of this process with ``env`` as its whole environment; returns the child's pid once
    the child leads its own session (``os.killpg(pid, ...)`` reaches it from the first moment)."""
    release = _release_openmp_pool()
    if release is not None and (code := release()) != 0:
        raise RuntimeError(f"omp_pause_resource_all returned {code}: OpenMP's thread pool is still running")
    sys.stdout.flush()
    sys.stderr.flush()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(ready_read)
        _run_child(unit, env, ready_write)
    os.close(ready_write)
    try:
        os.read(ready_read, 1)  # the child wrote after setsid, or died (end of file)
    finally:
        os.close(ready_read)
    return pid


@functools.cache
def _release_openmp_pool() -> Callable[[], int] | None:
    """``omp_pause_resource_all(omp_pause_hard)`` of the GNU libgomp this process loaded (torch's OpenMP runtime on
    Linux), which ends the pool's worker threads and returns 0; None where no libgomp here has it (GCC < 9)."""
    if not Path("/proc/self/maps").exists():
        return None
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if Path(line.split()[-1]).name.startswith("libgomp")})
    for path in paths:
        try:
            pause = ctypes.CDLL(path).omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        pause.argtypes = [ctypes.c_int]
        pause.restype = ctypes.c_int
        return functools.partial(pause, _OMP_PAUSE_HARD)
    return None


def _run_child(unit: Unit, env: Mapping[str, str], ready_write: int) -> NoReturn:
    code = 1
    try:
        _default_signal_handlers()  # before the sweep can signal it: the sweep's handlers must not catch a stop
        os.setsid()
        os.write(ready_write, b".")
        os.close(ready_write)
        _start_like_a_new_interpreter(unit, env)
        code = run_cell_command(unit.command())
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exit_request:
        code = exit_request.code if isinstance(exit_request.code, int) else 1
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # the handlers the cells registered (the sweep's were dropped)
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _start_like_a_new_interpreter(unit: Unit, env: Mapping[str, str]) -> None:
    """The process state a fresh ``python -m lightning_decay.sweep run-cell ...`` would start its cells from."""
    atexit._clear()  # the sweep's exit handlers are the sweep's business
    _output_to(str(unit.log))
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [_MAIN, "run-cell", *unit.command()]
    with warnings.catch_warnings():  # leaving it marks every "shown once already" record stale: cells warn again
        pass
    reset_torch_flags(int(env.get("OMP_NUM_THREADS") or 1))  # before any torch op
    random.seed()  # a new interpreter's generators start from fresh entropy (each fork its own)
    np.random.seed()
    torch.seed()


def _default_signal_handlers() -> None:
    """The handlers a new interpreter has (Ctrl-C raises KeyboardInterrupt, the others their default action)."""
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _output_to(log: str) -> None:
    """stdin from /dev/null, file descriptors 1 and 2 to ``log`` (truncated, as the spawned command's), and the
    Python streams (and logging handlers that wrote to the old ones) on those descriptors."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    old = {"stdout": {id(sys.stdout), id(sys.__stdout__)}, "stderr": {id(sys.stderr), id(sys.__stderr__)}}
    streams = {
        "stdout": io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True),
        "stderr": io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True),
    }
    sys.stdout = sys.__stdout__ = streams["stdout"]
    sys.stderr = sys.__stderr__ = streams["stderr"]
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    for handler in _stream_handlers():
        for name, ids in old.items():
            if id(handler.stream) in ids:
                handler.setStream(streams[name])


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    loggers = [logging.getLogger(), *(item for item in logging.Logger.manager.loggerDict.values()
                                      if isinstance(item, logging.Logger))]
    return [
        handler for item in loggers for handler in item.handlers
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    ]
