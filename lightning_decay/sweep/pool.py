"""The sweep runner: a pool of cell processes, their GPUs and threads, Ctrl-C handling, progress and ETA.

:func:`run_sweep` runs the unfinished cells of a grid (each in its own process, ``python -m lightning_decay.sweep
run-cell``), rebuilding the results table after every cell, then writes the pictures and the decoupling report.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from lightning_decay.experiments.cifar10 import DISK_CACHE_ENV
from lightning_decay.sweep.cell import cell_spec
from lightning_decay.sweep.check import check_cells
from lightning_decay.sweep.grid import Cell, GridError, GridSpec
from lightning_decay.sweep.locks import acquire_lock, cell_state, clear_attempt, update_lock
from lightning_decay.sweep.results import (
    LOCK_FILE,
    LOG_FILE,
    RESULT_FILE,
    SPEC_FILE,
    cell_dir,
    collect_results,
    portable_path,
    read_json,
    write_json_atomic,
    write_results,
)
from lightning_decay.sweep.summary import SweepSummary, finish_sweep, format_number
from lightning_decay.sweep.wandb_export import wandb_mode, write_wandb_sweeps

__all__ = ["run_sweep"]

_TERMINATE_GRACE_S = 20.0


def run_sweep(
    grid: GridSpec,
    jobs: int | None = None,
    dry_run: bool = False,
    plot_only: bool = False,
    rerun_changed: bool = False,
    validate: bool = True,
    log: Callable[[str], Any] = print,
) -> SweepSummary:
    """Run the cells of ``grid`` that are not finished, then rebuild the results, pictures and decoupling report.

    ``jobs`` cells run at once (default: the grid's ``jobs``, else one per GPU, else 1). Ctrl-C (or SIGTERM)
    stops launching, terminates the running cells and keeps the finished ones.
    """
    cells = grid.cells()
    fingerprints = {cell.id: grid.fingerprint(cell) for cell in cells}
    states = {cell.id: cell_state(grid, cell, fingerprints[cell.id]) for cell in cells}
    summary = SweepSummary(total=len(cells))
    summary.skipped = [cid for cid, state in states.items() if state == "done"]
    changed = [cid for cid, state in states.items() if state == "changed"]
    if plot_only:
        return finish_sweep(grid, summary, log)
    if changed and not rerun_changed:
        raise GridError(
            f"{len(changed)} finished cell(s) in {grid.output} were run with other settings (e.g. {changed[0]}; a "
            "config file or override changed since): use another output folder, or pass --rerun-changed"
        )
    todo = [cell for cell in cells if states[cell.id] in ("todo", "changed")]
    summary.locked = [cid for cid, state in states.items() if state == "locked"]
    gpus = _visible_gpus()
    jobs = jobs or grid.jobs or max(1, len(gpus))
    threads = grid.threads or max(1, _usable_cpus() // jobs)
    device_note = f"GPUs {','.join(gpus)}" if gpus else "CPU"
    log(
        f"sweep {grid.name}: {len(cells)} cells, {len(summary.skipped)} done, {len(todo)} to run"
        + (f", {len(summary.locked)} running elsewhere" if summary.locked else "")
        + f"; {jobs} job(s) x {threads} thread(s) on {device_note} -> {grid.output}"
    )
    if dry_run:
        for cell in cells:
            log(f"  {states[cell.id]:8s} {cell.id}")
        if todo:
            args = grid.cell_args(todo[0], config_path=lambda path: portable_path(path, Path.cwd()))
            log("first cell to run, as a plain command: lightning-decay fit " + " ".join(args))
    if validate and todo:
        check_cells(grid, todo)
    grid.output.mkdir(parents=True, exist_ok=True)
    write_wandb_sweeps(grid)
    if dry_run:
        return summary
    if gpus and jobs > len(gpus):
        log(f"note: {jobs} jobs share {len(gpus)} GPU(s)")
    _run_cells(grid, todo, fingerprints, jobs, threads, gpus, summary, log)
    return finish_sweep(grid, summary, log)


def _visible_gpus() -> list[str]:
    """Ids to put in ``CUDA_VISIBLE_DEVICES``, one per GPU this process may use (empty without GPUs)."""
    try:
        count = torch.cuda.device_count()
    except Exception:  # no usable CUDA
        return []
    if count == 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [item.strip() for item in visible.split(",") if item.strip()] if visible else []
    return ids[:count] if len(ids) >= count else [str(i) for i in range(count)]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


@dataclass
class _Running:
    cell: Cell
    process: subprocess.Popen
    slot: int
    started: float
    log_file: IO[str]


def _run_cells(
    grid: GridSpec, todo: list[Cell], fingerprints: dict[str, str], jobs: int, threads: int, gpus: list[str],
    summary: SweepSummary, log: Callable[[str], Any],
) -> None:
    pending = deque(todo)
    running: list[_Running] = []
    durations: list[float] = []
    done_before = len(summary.skipped)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), WANDB_SILENT="true")
    env.setdefault(DISK_CACHE_ENV, str(default_data_cache()))  # decode CIFAR-10's JPEGs once, not once per cell
    if grid.wandb is not None:
        env["WANDB_MODE"] = wandb_mode()

    stop_requests: list[int] = []  # signals received; checked between steps, so no launch is cut in half
    with _stop_signals(stop_requests):
        try:
            while (pending or running) and not stop_requests:
                free = sorted(set(range(jobs)) - {r.slot for r in running})
                while pending and free and not stop_requests:
                    cell = pending.popleft()
                    launched = _launch(grid, cell, fingerprints[cell.id], threads, gpus, free[0], env)
                    if launched is None:
                        summary.locked.append(cell.id)
                        log(f"skip {cell.id}: locked by another sweep")
                        continue
                    running.append(launched)
                    free.pop(0)
                for item in list(running):
                    if item.process.poll() is None:
                        continue
                    running.remove(item)
                    _collect(grid, item, summary)
                    now = time.perf_counter()
                    durations.append(now - item.started)
                    eta = _eta(durations, len(pending), [now - r.started for r in running], jobs)
                    log(
                        f"[{done_before + len(summary.ran)}/{summary.total}] {_describe(grid, item, durations[-1])}"
                        f" | ETA {_format_duration(eta)}"
                    )
                time.sleep(0.1)
        except KeyboardInterrupt:  # not in the main thread: no handlers, Ctrl-C arrives as an exception
            stop_requests.append(signal.SIGINT)
        if stop_requests:
            summary.interrupted = True
            log(
                f"interrupted: stopping {len(running)} running cell(s) (Ctrl-C again to kill them now); "
                "finished cells are kept"
            )
            _terminate(running, stop_requests)
            for item in running:
                _collect(grid, item, summary)


@contextlib.contextmanager
def _stop_signals(requests: list[int]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM append to ``requests`` instead of raising (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        requests.append(signum)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before if handler_before is not None else signal.SIG_DFL)


def default_data_cache() -> Path:
    """The decoded-data cache the cells use unless ``LIGHTNING_DECAY_DATA_CACHE`` is set (empty: off):
    ``$XDG_CACHE_HOME/lightning_decay`` (``~/.cache/lightning_decay``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lightning_decay"


def _launch(
    grid: GridSpec, cell: Cell, fingerprint: str, threads: int, gpus: list[str], slot: int, env: dict[str, str]
) -> _Running | None:
    folder = cell_dir(grid.output, cell.id)
    lock = folder / LOCK_FILE
    if not acquire_lock(lock):
        return None
    clear_attempt(folder)
    write_json_atomic(folder / SPEC_FILE, cell_spec(grid, cell, fingerprint, threads))
    cell_env = dict(env)
    if gpus:
        cell_env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    log_file = open(folder / LOG_FILE, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "lightning_decay.sweep", "run-cell", str((folder / SPEC_FILE).resolve())],
        stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=cell_env, start_new_session=True,
    )
    update_lock(lock, [os.getpid(), process.pid])
    return _Running(cell, process, slot, time.perf_counter(), log_file)


def _collect(grid: GridSpec, item: _Running, summary: SweepSummary) -> None:
    item.log_file.close()
    folder = cell_dir(grid.output, item.cell.id)
    result = read_json(folder / RESULT_FILE)
    ok = result is not None and result.get("status") == "ok" and item.process.returncode == 0
    (summary.ran if ok else summary.failed).append(item.cell.id)
    (folder / LOCK_FILE).unlink(missing_ok=True)
    write_results(grid, collect_results(grid))


def _eta(durations: Sequence[float], pending: int, running_ages: Sequence[float], jobs: int) -> float:
    """Seconds left: the mean cell time so far for each pending cell, the rest of it for running ones, / jobs."""
    mean = sum(durations) / len(durations)
    left = pending * mean + sum(max(0.0, mean - age) for age in running_ages)
    return left / max(1, min(jobs, pending + len(running_ages)))


def _describe(grid: GridSpec, item: _Running, seconds: float) -> str:
    folder = cell_dir(grid.output, item.cell.id)
    result = read_json(folder / RESULT_FILE) or {}
    status = result.get("status", f"died (exit code {item.process.returncode})")
    if status != "ok":
        reason = result.get("error", "no result written")
        return f"{item.cell.id} {status.upper()}: {reason} (log: {folder / LOG_FILE}) {seconds:.1f}s"
    speed = result.get("images_per_s")
    return (
        f"{item.cell.id} ok acc={format_number(result.get('accuracy'))} "
        f"loss={format_number(result.get('train_loss'))} norm={format_number(result.get('weight_norm'))} "
        f"{'-' if speed is None else f'{speed:.0f}'} img/s {seconds:.1f}s"
    )


def _terminate(running: list[_Running], stop_requests: list[int]) -> None:
    """SIGTERM every running cell's process group; SIGKILL what is alive after a grace period or a 2nd Ctrl-C."""
    requests_before = len(stop_requests)
    for item in running:
        _signal_group(item.process, signal.SIGTERM)
    deadline = time.monotonic() + _TERMINATE_GRACE_S
    while any(item.process.poll() is None for item in running):
        if time.monotonic() > deadline or len(stop_requests) > requests_before:
            for item in running:
                if item.process.poll() is None:
                    _signal_group(item.process, signal.SIGKILL)
            for item in running:
                item.process.wait()
            break
        time.sleep(0.05)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
