"""Where a sweep's cells run: this machine's processes (``local``), SLURM jobs through submitit (``slurm``), or
Ray tasks (``ray``).

The unit of work is a :class:`~lightning_decay.sweep.units.Unit`: a list of cell folders run by one command,
``python -m lightning_decay.sweep run-cell <cell>/spec.json [...] --attempt <id> [...]`` (one cell today, a batch
of cells later), run in the sweep's current directory with the sweep's cell environment (threads, data cache,
W&B mode, ``PYTHONPATH``). Every executor runs that same command, so every executor writes the same cell folders
and the same results: the command claims its cells itself (:func:`~lightning_decay.sweep.locks.claimed_cells`),
wherever it runs. The remote executors need the output folder and the current directory on a filesystem every
node sees (the usual cluster home or project filesystem), with ``flock`` (see :mod:`~lightning_decay.sweep.locks`).

``slurm`` and ``ray`` import their library when used: ``pip install 'lightning-decay[slurm]'`` (submitit) or
``'lightning-decay[ray]'``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lightning_decay.sweep.forked import START_METHODS, fork_hazard, fork_unit
from lightning_decay.sweep.units import Unit, run_unit

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "Job",
    "LocalExecutor",
    "RayExecutor",
    "SlurmExecutor",
    "make_executor",
]

class ExecutorError(ValueError):
    """An unknown executor, a wrong option, or a missing library (the message names it)."""



# ----------------------------------------------------------------------------------------------------------------
# Executors
# ----------------------------------------------------------------------------------------------------------------


class Job:
    """A submitted unit: ``poll()`` is its exit code once finished (None before), ``stop()`` asks it to stop,
    ``kill()`` forces it; ``where`` says where it ran (job id, node), ``failure`` why it died when it did."""

    unit: Unit
    where: str = ""

    def poll(self) -> int | None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        self.stop()

    def failure(self) -> str | None:
        """Why the job itself failed (not the cell), with the log that says more; None when it did not."""
        return None


class Executor:
    """Runs :class:`Unit`\\ s. ``self_throttled``: it limits the running jobs itself (a SLURM array with its
    parallelism), so the sweep submits every unit at once; otherwise the sweep keeps ``jobs`` units in flight."""

    name = "executor"
    self_throttled = False
    parent_death = False  # cells may die with the sweep process (local): their spec names the sweep's pid

    def describe(self) -> str:
        """Where cells go, for the dry run and the first progress line."""
        raise NotImplementedError

    def start(self, jobs: int, threads: int) -> None:
        """Called once before the first submit."""

    def submit(self, units: Sequence[Unit], env: Mapping[str, str], slots: Sequence[int]) -> list[Job]:
        """Start ``units`` (``slots[i]``: the job slot of ``units[i]``, 0..jobs-1)."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Called once at the end (also after Ctrl-C)."""


@dataclass
class _LocalJob(Job):
    unit: Unit
    process: subprocess.Popen
    log_file: IO[str]
    where: str = "this machine"

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is not None and not self.log_file.closed:
            self.log_file.close()
        return code

    def stop(self) -> None:
        _signal_group(self.process.pid, signal.SIGTERM)

    def kill(self) -> None:
        _signal_group(self.process.pid, signal.SIGKILL)


@dataclass
class _ForkedJob(Job):
    """A unit in a fork of the sweep process (:func:`~lightning_decay.sweep.forked.fork_unit`), leading its own
    session; its exit code as :class:`subprocess.Popen` gives it (``-N`` after signal N)."""

    unit: Unit
    pid: int
    where: str = ""
    code: int | None = None

    def poll(self) -> int | None:
        if self.code is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped already (SIGCHLD ignored): gone, code unknown; Popen.poll says 0
                self.code = 0
            else:
                if pid:
                    self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def stop(self) -> None:
        _signal_group(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        _signal_group(self.pid, signal.SIGKILL)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


#: ``local`` options of the grid's ``executor:`` block.
LOCAL_OPTIONS = {"start": "how a job starts: auto (default: a fork of the sweep where safe), fork, or spawn"}


@dataclass
class LocalExecutor(Executor):
    """Cell processes on this machine, one GPU per job slot (``CUDA_VISIBLE_DEVICES``) when there are GPUs.

    ``start_method``: ``spawn`` runs each job's command in a fresh interpreter; ``fork`` starts it as a copy of the
    sweep process, which has torch and Lightning imported already (~6 s less per job;
    :mod:`~lightning_decay.sweep.forked`); ``auto`` forks where :func:`~lightning_decay.sweep.forked.fork_hazard`
    finds nothing against it for cells on ``threads`` threads, else spawns. ``fork`` where it is unsafe: an
    :class:`ExecutorError` naming the option and the reason, when the executor is made and at each submit."""

    gpus: list[str] = field(default_factory=list)
    start_method: str = "auto"
    threads: int = 1
    name = "local"
    parent_death = True

    def __post_init__(self) -> None:
        self._hazard = fork_hazard(self.threads, self.gpus)
        self._check_fork()

    def describe(self) -> str:
        where = f"processes on this machine ({'GPUs ' + ','.join(self.gpus) if self.gpus else 'CPU'})"
        if self._forks():
            return where + ", each a fork of the sweep process (start: fork)"
        reason = f": {self._hazard}" if self.start_method == "auto" else ""
        return where + f", each a new interpreter (start: spawn{reason})"

    def submit(self, units: Sequence[Unit], env: Mapping[str, str], slots: Sequence[int]) -> list[Job]:
        self._hazard = fork_hazard(self.threads, self.gpus)  # a thread may have started since
        self._check_fork()
        started: list[Job] = []
        for unit, slot in zip(units, slots):
            cell_env = {**os.environ, **env}
            if self.gpus:
                cell_env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
            if self._forks():
                pid = fork_unit(unit, cell_env)
                started.append(_ForkedJob(unit, pid, f"pid {pid} (a fork of the sweep)"))
                continue
            log_file = open(unit.log, "w")
            process = subprocess.Popen(
                [sys.executable, *unit.arguments()], stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=cell_env, start_new_session=True,
            )
            started.append(_LocalJob(unit, process, log_file, f"pid {process.pid}"))
        return started

    def _forks(self) -> bool:
        return self.start_method == "fork" or (self.start_method == "auto" and self._hazard is None)

    def _check_fork(self) -> None:
        if self.start_method == "fork" and self._hazard is not None:
            raise ExecutorError(
                f"executor local: option start: fork is not safe here: {self._hazard}; use start: spawn or auto"
            )


#: ``slurm`` options of the grid's ``executor:`` block and what they become for submitit.
SLURM_OPTIONS = {
    "cluster": "'slurm' (default) or 'local' (submitit's local executor: processes here, for tests)",
    "folder": "where submitit keeps its job files and logs (default: <output>/slurm)",
    "partition": "SLURM partition",
    "time": "minutes per job (timeout_min)",
    "gpus_per_cell": "GPUs per job (gpus_per_node)",
    "cpus_per_cell": "CPUs per job (cpus_per_task; default: threads)",
    "mem_gb": "memory per job in GB",
    "account": "SLURM account",
    "qos": "SLURM quality of service",
    "constraint": "SLURM node constraint",
    "additional": "other sbatch parameters, e.g. {exclusive: true} (slurm_additional_parameters)",
    "setup": "shell lines run before each job, e.g. ['module load cuda'] (slurm_setup)",
}


@dataclass
class _SubmititJob(Job):
    unit: Unit
    job: Any
    where: str = ""

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception:  # the job itself failed (killed, timed out, node failure): the cell is re-run next time
            return -1

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.job.cancel(check=False)

    def failure(self) -> str | None:
        if not self.job.done():
            return None
        try:
            exception = self.job.exception()
        except Exception as error:  # submitit could not read the job's outcome
            exception = error
        if exception is None:
            return None
        last = str(exception).strip().splitlines()[-1:] or [type(exception).__name__]
        return f"SLURM job {self.job.job_id} failed: {last[0][:300]} (job log: {self.job.paths.stderr})"


class SlurmExecutor(Executor):
    """Each unit a job of one submitit job array (``slurm_array_parallelism`` = ``--jobs``); with
    ``cluster: local``, submitit's local executor (processes on this machine, one per job; the sweep then keeps
    ``--jobs`` of them at once)."""

    name = "slurm"

    def __init__(self, output: Path, options: Mapping[str, Any] | None = None) -> None:
        _require("submitit", "slurm")
        options = _known_options("slurm", options, SLURM_OPTIONS)
        cluster = options.get("cluster", "slurm")
        if cluster not in ("slurm", "local"):
            raise ExecutorError(f"executor slurm: cluster must be 'slurm' or 'local', got {cluster!r}")
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise ExecutorError(
                "executor slurm: sbatch is not on this machine's PATH; run the sweep where jobs are submitted (a SLURM "
                "login node), or set the option cluster: local to run the jobs here"
            )
        self.cluster = cluster
        self.options = options
        self.folder = Path(options.get("folder") or Path(output) / "slurm")
        self.self_throttled = cluster == "slurm"
        self._executor: Any = None

    def describe(self) -> str:
        where = "SLURM jobs of one array" if self.cluster == "slurm" else "submitit's local executor (processes here)"
        extras = [f"{k}={self.options[k]}" for k in ("partition", "time", "gpus_per_cell", "cpus_per_cell", "mem_gb")
                  if k in self.options]
        return f"{where}" + (f" ({', '.join(extras)})" if extras else "") + f", job files in {self.folder}"

    def start(self, jobs: int, threads: int) -> None:
        import submitit

        executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=self.cluster)
        options = self.options
        parameters: dict[str, Any] = {
            "name": "lightning-decay-cell", "timeout_min": int(options.get("time", 60 * 24)),
            "cpus_per_task": int(options.get("cpus_per_cell", threads)), "tasks_per_node": 1, "nodes": 1,
        }
        if "gpus_per_cell" in options:
            parameters["gpus_per_node"] = int(options["gpus_per_cell"])
        if "mem_gb" in options:
            parameters["mem_gb"] = float(options["mem_gb"])
        slurm = {"partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
                 "constraint": "slurm_constraint", "additional": "slurm_additional_parameters",
                 "setup": "slurm_setup"}
        if self.cluster == "slurm":
            parameters["slurm_array_parallelism"] = jobs
            parameters.update({slurm[k]: options[k] for k in slurm if k in options})
        try:
            executor.update_parameters(**parameters)
        except Exception as error:  # submitit names the parameter
            raise ExecutorError(f"executor slurm: {error}") from error
        self._executor = executor

    def submit(self, units: Sequence[Unit], env: Mapping[str, str], slots: Sequence[int]) -> list[Job]:
        cwd = os.getcwd()
        submitted = self._executor.map_array(
            run_unit, [u.arguments() for u in units], [dict(env)] * len(units), [cwd] * len(units),
            [str(u.log) for u in units],
        )
        return [_SubmititJob(unit, job, f"job {job.job_id}") for unit, job in zip(units, submitted)]


@dataclass
class _RayJob(Job):
    unit: Unit
    ref: Any
    where: str = ""
    _code: int | None = None
    _failure: str | None = None

    def poll(self) -> int | None:
        import ray

        if self._code is not None:
            return self._code
        ready, _ = ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            self._code = int(ray.get(self.ref))
        except Exception as error:  # the task died (worker or node lost, cancelled)
            summary = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            self._failure = f"Ray task {self.ref.task_id().hex()} failed: {summary}"
            self._code = -1
        return self._code

    def stop(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.cancel(self.ref)  # KeyboardInterrupt in the task: run_unit passes SIGTERM to the cell

    def kill(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.cancel(self.ref, force=True)

    def failure(self) -> str | None:
        return self._failure


RAY_OPTIONS = {
    "address": "the Ray cluster to use (ray.init(address=...)); none: start a local one",
    "cpus_per_cell": "CPUs per task (num_cpus; default: threads)",
    "gpus_per_cell": "GPUs per task (num_gpus; default: 0)",
    "num_cpus": "CPUs of the local cluster started without an address (default: jobs x cpus_per_cell)",
    "resources": "custom Ray resources per task, e.g. {large_memory: 1}",
}


class RayExecutor(Executor):
    """Each unit a Ray task (no retries: a task that dies is a cell to re-run) on the cluster ``address`` reaches,
    or on a local Ray instance started for the sweep when no address is given."""

    name = "ray"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        _require("ray", "ray")
        options = _known_options("ray", options, RAY_OPTIONS)
        self.options = options
        self._remote: Any = None
        self._started_here = False

    def describe(self) -> str:
        address = self.options.get("address")
        return f"Ray tasks on {address}" if address else "Ray tasks on a local Ray instance started for the sweep"

    def start(self, jobs: int, threads: int) -> None:
        import ray

        cpus = float(self.options.get("cpus_per_cell", threads))
        address = self.options.get("address")
        if not ray.is_initialized():
            settings: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                settings["address"] = address
            else:
                settings["num_cpus"] = int(self.options.get("num_cpus", max(1, round(jobs * cpus))))
            ray.init(**settings)
            self._started_here = True
        self._remote = ray.remote(run_unit).options(
            num_cpus=cpus, num_gpus=float(self.options.get("gpus_per_cell", 0)), max_retries=0,
            resources=dict(self.options.get("resources") or {}),
        )

    def submit(self, units: Sequence[Unit], env: Mapping[str, str], slots: Sequence[int]) -> list[Job]:
        cwd = os.getcwd()
        return [
            _RayJob(unit, ref, f"Ray task {ref.task_id().hex()[:12]}")
            for unit in units
            for ref in [self._remote.remote(unit.arguments(), dict(env), cwd, str(unit.log))]
        ]

    def shutdown(self) -> None:
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False


EXECUTORS = {"local": LocalExecutor, "slurm": SlurmExecutor, "ray": RayExecutor}


def _known_options(name: str, options: Mapping[str, Any] | None, known: Mapping[str, str]) -> dict[str, Any]:
    """``options`` as a dict; ExecutorError naming the unknown ones and listing the known."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ExecutorError(f"executor {name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return options


def _require(module: str, extra: str) -> None:
    try:
        __import__(module)
    except ImportError as error:
        raise ExecutorError(
            f"executor {extra} needs {module}, which is not installed: pip install 'lightning-decay[{extra}]' "
            f"(or pip install {module})"
        ) from error


def make_executor(
    name: str, options: Mapping[str, Any] | None, output: Path, gpus: Sequence[str] = (), threads: int = 1
) -> Executor:
    """The executor called ``name`` (``local``, ``slurm``, ``ray``) with its grid options, for cells on ``threads``
    threads; ExecutorError names a wrong name, option or missing library."""
    if name not in EXECUTORS:
        raise ExecutorError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    if name == "local":
        start = _known_options("local", options, LOCAL_OPTIONS).get("start", "auto")
        if start not in START_METHODS:
            raise ExecutorError(
                f"executor local: option start must be one of {', '.join(START_METHODS)}, got {start!r}"
            )
        return LocalExecutor(list(gpus), start, threads)
    if name == "slurm":
        return SlurmExecutor(output, options)
    return RayExecutor(options)

