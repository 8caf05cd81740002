"""The sweep runner: the pool of cell jobs (on an executor), their GPUs and threads, Ctrl-C handling, progress
and ETA.

:func:`run_sweep` runs the unfinished cells of a grid (each unit of cells a job of the grid's executor running
``python -m lightning_decay.sweep run-cell``: a local process, a SLURM job, a Ray task), rebuilding the results
table after every finished job, then writes the pictures and the decoupling report.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_decay.experiments.cifar10 import DISK_CACHE_ENV
from lightning_decay.sweep.batched import describe_batches, plan_batches
from lightning_decay.sweep.cell import cell_spec
from lightning_decay.sweep.check import check_cells
from lightning_decay.sweep.executors import Executor, ExecutorError, Job, make_executor
from lightning_decay.sweep.grid import Cell, GridError, GridSpec
from lightning_decay.sweep.locks import NOT_RUN_EXIT_CODE, cell_state, claim_owner, is_claimed, prepare_cell
from lightning_decay.sweep.results import (
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
from lightning_decay.sweep.units import Unit
from lightning_decay.sweep.wandb_export import wandb_mode, write_wandb_sweeps

__all__ = ["run_sweep"]

_TERMINATE_GRACE_S = 20.0
_POLL_S = 0.1  # seconds between looks at the running jobs (local processes; submitit and Ray cache their state)


def run_sweep(
    grid: GridSpec,
    jobs: int | None = None,
    dry_run: bool = False,
    plot_only: bool = False,
    rerun_changed: bool = False,
    validate: bool = True,
    log: Callable[[str], Any] = print,
    executor: str | None = None,
) -> SweepSummary:
    """Run the cells of ``grid`` that are not finished, then rebuild the results, pictures and decoupling report.

    ``jobs`` cells run at once (default: the grid's ``jobs``, else one per GPU, else 1) on ``executor``
    (``local``, ``slurm``, ``ray``; default: the grid's ``executor``, whose options it keeps when the names match).
    Ctrl-C (or SIGTERM) stops launching, stops the running cells and keeps the finished ones.
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
    name = executor or grid.executor["name"]
    options = grid.executor["options"] if name == grid.executor["name"] else {}
    gpus = _visible_gpus() if name == "local" else []
    jobs = jobs or grid.jobs or max(1, len(gpus))
    threads = grid.threads or max(1, _usable_cpus() // jobs)
    try:
        pool = make_executor(name, options, grid.output, gpus, threads)
    except ExecutorError as error:
        raise GridError(str(error)) from None
    log(
        f"sweep {grid.name}: {len(cells)} cells, {len(summary.skipped)} done, {len(todo)} to run"
        + (f", {len(summary.locked)} running elsewhere" if summary.locked else "")
        + f"; {jobs} job(s) x {threads} thread(s) on {pool.describe()} -> {grid.output}"
    )
    if dry_run:
        log(f"cells would run as {pool.name} jobs: {pool.describe()}, at most {jobs} at once")
        if (grid.batch_cells or 1) > 1:
            for line in describe_batches(grid, _units(grid, todo, jobs)):
                log(line)
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
    _run_cells(grid, todo, fingerprints, jobs, threads, pool, summary, log)
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
    job: Job
    slot: int
    started: float


def _units(grid: GridSpec, cells: list[Cell], jobs: int) -> list[list[Cell]]:
    """The cells of each job, in launch order: one cell per job, or up to ``grid.batch_cells`` cells sharing their
    model and data (:func:`~lightning_decay.sweep.batched.plan_batches`)."""
    return plan_batches(grid, cells, grid.batch_cells or 1, jobs)


def _cell_env(grid: GridSpec, threads: int) -> dict[str, str]:
    """What the cells get on top of their machine's environment (the same on every executor)."""
    env = {
        "PYTHONPATH": os.pathsep.join([os.getcwd(), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "WANDB_SILENT": "true",
        DISK_CACHE_ENV: os.environ.get(DISK_CACHE_ENV, str(default_data_cache())),  # decode CIFAR-10 once
    }
    if grid.wandb is not None:
        env["WANDB_MODE"] = wandb_mode()
    return env


def _run_cells(
    grid: GridSpec, todo: list[Cell], fingerprints: dict[str, str], jobs: int, threads: int, pool: Executor,
    summary: SweepSummary, log: Callable[[str], Any],
) -> None:
    pending = deque(_units(grid, todo, jobs))
    running: list[_Running] = []
    durations: list[float] = []
    done_before = len(summary.skipped)
    env = _cell_env(grid, threads)

    stop_requests: list[int] = []  # signals received; checked between steps, so no launch is cut in half
    with _stop_signals(stop_requests):
        try:
            pool.start(jobs, threads)
            while (pending or running) and not stop_requests:
                free = sorted(set(range(jobs)) - {r.slot for r in running})
                batch: list[tuple[Unit, int]] = []
                while pending and (free or pool.self_throttled) and not stop_requests:
                    unit = _prepare(grid, pending.popleft(), fingerprints, threads, pool, summary, log)
                    if unit is not None:
                        batch.append((unit, free.pop(0) if free else len(running) + len(batch)))
                if batch:
                    now = time.perf_counter()
                    submitted = pool.submit([u for u, _ in batch], env, [slot for _, slot in batch])
                    running += [_Running(job, slot, now) for job, (_, slot) in zip(submitted, batch)]
                for item in list(running):
                    code = item.job.poll()
                    if code is None:
                        continue
                    running.remove(item)
                    now = time.perf_counter()
                    if not _collect(grid, item, code, summary, log):
                        continue
                    durations.append(now - item.started)
                    eta = _eta(durations, len(pending), [now - r.started for r in running], jobs)
                    log(
                        f"[{done_before + len(summary.ran)}/{summary.total}] "
                        f"{_describe(grid, item, code, durations[-1])} | ETA {_format_duration(eta)}"
                    )
                time.sleep(_POLL_S)
        except KeyboardInterrupt:  # not in the main thread: no handlers, Ctrl-C arrives as an exception
            stop_requests.append(signal.SIGINT)
        except BaseException:  # e.g. a submission refused, a closed pipe under the log: no cell outlives the sweep
            try:
                _terminate(running, stop_requests)
            finally:
                pool.shutdown()  # the executor's resources go too (a local Ray instance)
            raise
        try:
            if stop_requests:
                summary.interrupted = True
                log(
                    f"interrupted: stopping {len(running)} running job(s) (Ctrl-C again to kill them now); "
                    "finished cells are kept"
                )
                _terminate(running, stop_requests)
                for item in running:
                    _collect(grid, item, item.job.poll(), summary, log)
        finally:
            pool.shutdown()


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


def _prepare(
    grid: GridSpec, cells: list[Cell], fingerprints: dict[str, str], threads: int, pool: Executor,
    summary: SweepSummary, log: Callable[[str], Any],
) -> Unit | None:
    """Claim, clear and write the spec of each cell (its claim is released again: the job claims it when it
    starts); cells another process holds are skipped. The unit of the prepared cells, None if none."""
    prepared: list[tuple[Cell, str]] = []
    for cell in cells:

        def write_spec(folder: Path, cell: Cell = cell) -> None:
            spec = cell_spec(grid, cell, fingerprints[cell.id], threads)
            if not pool.parent_death:  # the job's parent is not the sweep: the cell must not watch the sweep's pid
                spec["parent_pid"] = None
            write_json_atomic(folder / SPEC_FILE, spec)

        folder = cell_dir(grid.output, cell.id)
        attempt = prepare_cell(folder, write_spec, fingerprints[cell.id])
        if attempt is None and cell_state(grid, cell, fingerprints[cell.id]) == "done":
            summary.skipped.append(cell.id)
            log(f"skip {cell.id}: finished by another sweep")
            continue
        if attempt is None:
            summary.locked.append(cell.id)
            log(f"skip {cell.id}: running elsewhere ({claim_owner(folder)})")
            continue
        prepared.append((cell, attempt))
    if not prepared:
        return None
    return Unit(
        tuple(c.id for c, _ in prepared), tuple(cell_dir(grid.output, c.id) for c, _ in prepared),
        tuple(a for _, a in prepared),
    )


def _collect(
    grid: GridSpec, item: _Running, code: int | None, summary: SweepSummary, log: Callable[[str], Any]
) -> bool:
    """Record a finished job's cells; False when it ran none of them (another sweep has them)."""
    unit = item.job.unit
    if code == NOT_RUN_EXIT_CODE:
        for cell_id, folder in zip(unit.cells, unit.folders):
            result = read_json(folder / RESULT_FILE) or {}
            if result.get("status") == "ok" and result.get("fingerprint") == (read_json(folder / SPEC_FILE) or {}).get(
                "fingerprint"
            ):
                log(f"skip {cell_id}: finished by another sweep")
                summary.skipped.append(cell_id)
            else:
                log(f"skip {cell_id}: taken by another sweep ({claim_owner(folder) if is_claimed(folder) else 'gone'})")
                summary.locked.append(cell_id)
        write_results(grid, collect_results(grid))
        return False
    for cell_id, folder in zip(unit.cells, unit.folders):
        result = read_json(folder / RESULT_FILE)
        ok = result is not None and result.get("status") == "ok" and code in (0, 1)
        (summary.ran if ok else summary.failed).append(cell_id)
    write_results(grid, collect_results(grid))
    return True


def _eta(durations: Sequence[float], pending: int, running_ages: Sequence[float], jobs: int) -> float:
    """Seconds left: the mean cell time so far for each pending cell, the rest of it for running ones, / jobs."""
    mean = sum(durations) / len(durations)
    left = pending * mean + sum(max(0.0, mean - age) for age in running_ages)
    return left / max(1, min(jobs, pending + len(running_ages)))


def _describe(grid: GridSpec, item: _Running, code: int | None, seconds: float) -> str:
    unit = item.job.unit
    lines = []
    for cell_id, folder in zip(unit.cells, unit.folders):
        result = read_json(folder / RESULT_FILE) or {}
        status = result.get("status", f"died (exit code {code})")
        if status != "ok":
            reason = result.get("error") or item.job.failure() or "no result written"
            lines.append(
                f"{cell_id} {status.upper()}: {reason} ({item.job.where}; log: {folder / LOG_FILE}) {seconds:.1f}s"
            )
            continue
        speed = result.get("images_per_s")
        lines.append(
            f"{cell_id} ok acc={format_number(result.get('accuracy'))} "
            f"loss={format_number(result.get('train_loss'))} norm={format_number(result.get('weight_norm'))} "
            f"{'-' if speed is None else f'{speed:.0f}'} img/s {seconds:.1f}s"
        )
    return "; ".join(lines)


def _terminate(running: list[_Running], stop_requests: list[int]) -> None:
    """Ask every running job to stop (local cells: SIGTERM to the process group); force what is alive after a grace
    period or a 2nd Ctrl-C."""
    requests_before = len(stop_requests)
    for item in running:
        item.job.stop()
    deadline = time.monotonic() + _TERMINATE_GRACE_S
    while any(item.job.poll() is None for item in running):
        if time.monotonic() > deadline or len(stop_requests) > requests_before:
            for item in running:
                if item.job.poll() is None:
                    item.job.kill()
            end = time.monotonic() + _TERMINATE_GRACE_S
            while any(item.job.poll() is None for item in running) and time.monotonic() < end:
                time.sleep(0.05)
            break
        time.sleep(0.05)
