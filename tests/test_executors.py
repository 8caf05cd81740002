"""The sweep's executors for real: local processes, submitit's local executor (what ``executor: slurm`` runs with
``cluster: local``) and a local Ray instance start real processes on one tiny grid (one cell that trains, one that
fails). Every executor writes the same results folder, the same ``results.csv`` bitwise (timings aside), names a
failed cell and its log, keeps ``--jobs`` cells at once, and resumes the same way."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lightning_decay.sweep import GridError, GridSpec, forked, run_sweep
from lightning_decay.sweep.executors import ExecutorError, make_executor
from lightning_decay.sweep.locks import claim_info, is_claimed
from lightning_decay.sweep.results import RESULT_FILE
from lightning_decay.sweep.units import Unit
from tests.test_sweep import REPO, write_base_config

pytestmark = pytest.mark.xdist_group("executors")

GRID = """
name: exec2
configs: base.yaml
variant_key: model.init_args.variant
variants: [adamw]
axes:
  lr: {{key: model.init_args.lr, values: [3e-2, -1.0]}}   # lr = -1: a cell that fails
  weight_decay: {{key: model.init_args.weight_decay, values: [1e-2]}}
  seed: [0]
overrides:
  trainer.max_epochs: 1
threads: 1
output: {output}
{executor}
"""
OK_CELL = "adamw__lr=0.03__weight_decay=0.01__seed=0"
FAILING_CELL = "adamw__lr=-1.0__weight_decay=0.01__seed=0"
TIMINGS = ("images_per_s", "train_s", "wall_s")


def write(folder: Path, name: str, executor: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(GRID.format(output=folder / name, executor=executor))
    return path


def sweep(grid: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "lightning_decay.sweep", "--config", str(grid), "--no-check", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def table(folder: Path) -> list[dict[str, str]]:
    """results.csv without the timing columns (which no two runs share)."""
    with open(folder / "results.csv", newline="") as file:
        return [{k: v for k, v in row.items() if k not in TIMINGS} for row in csv.DictReader(file)]


def check_failure_named(out: str, folder: Path) -> None:
    line = next(line for line in out.splitlines() if FAILING_CELL in line and "ERROR" in line)
    assert "Invalid learning rate" in line or "lr" in line, line
    assert f"log: {folder / 'cells' / FAILING_CELL / 'output.log'}" in line, line


@pytest.fixture(scope="module")
def grids(tmp_path_factory: pytest.TempPathFactory, cifar_jpeg_tar: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("executors")
    write_base_config(folder, cifar_jpeg_tar)
    local = write(folder, "local")
    done = sweep(local, "--jobs", "2")
    assert done.returncode == 1, done.stdout + done.stderr  # one cell fails
    check_failure_named(done.stdout, folder / "local")
    return {
        "folder": folder, "local": local,
        "slurm": write(folder, "slurm", "executor: {name: slurm, options: {cluster: local, time: 10}}"),
        "ray": write(folder, "ray", "executor: {name: ray, options: {num_cpus: 2}}"),
    }


def test_slurm_through_submitit_local_executor(grids: dict[str, Path]) -> None:
    folder = grids["folder"]
    dry = sweep(grids["slurm"], "--dry-run")
    assert dry.returncode == 0 and "cells would run as slurm jobs: submitit's local executor" in dry.stdout, dry.stdout
    done = sweep(grids["slurm"], "--jobs", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    check_failure_named(done.stdout, folder / "slurm")
    assert table(folder / "slurm") == table(folder / "local")  # bitwise the same numbers as the local executor
    jobs = list((folder / "slurm" / "slurm").glob("*/*_submitted.pkl"))
    assert len(jobs) == 2  # each cell a submitit job, its files in <output>/slurm
    # --jobs 1: one cell at a time (the cells' own clocks, written by the cells)
    runs = sorted((r["started"], r["finished"]) for r in (
        json.loads((folder / "slurm" / "cells" / cell / RESULT_FILE).read_text()) for cell in (OK_CELL, FAILING_CELL)
    ))
    assert runs[0][1] <= runs[1][0]

    # The sweep killed while a job runs: the job finishes on its own (nothing lost), the next run leaves the cell
    # alone while its job holds it and runs what was never submitted; the killed sweep's cell ran once.
    kill = write(folder, "slurmkill", "executor: {name: slurm, options: {cluster: local}}")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "lightning_decay.sweep", "--config", str(kill), "--no-check", "--jobs", "1"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    cell = folder / "slurmkill" / "cells" / OK_CELL
    deadline = time.monotonic() + 300
    while claim_info(cell).get("state") != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert is_claimed(cell), "the first job did not start"
    driver.kill()
    driver.wait()
    again = sweep(kill, "--jobs", "1")
    assert f"] {OK_CELL} ok" not in again.stdout, again.stdout + again.stderr  # left to the job that holds it
    assert f"] {FAILING_CELL} ERROR" in again.stdout, again.stdout + again.stderr
    while not (cell / RESULT_FILE).exists() and time.monotonic() < deadline + 300:
        time.sleep(0.2)
    assert json.loads((cell / RESULT_FILE).read_text())["status"] == "ok"
    assert not (cell / "previous-attempt.log").exists()  # run once, by the killed sweep's job
    assert sweep(kill, "--dry-run").stdout.count("done     ") == 1
    by_local = json.loads((folder / "local" / "cells" / OK_CELL / RESULT_FILE).read_text())
    by_job = json.loads((cell / RESULT_FILE).read_text())
    assert [by_job[k] for k in ("accuracy", "train_loss", "weight_norm", "metrics")] == [
        by_local[k] for k in ("accuracy", "train_loss", "weight_norm", "metrics")
    ]


def test_ray_local_cluster(grids: dict[str, Path]) -> None:
    folder = grids["folder"]
    done = sweep(grids["ray"], "--executor", "ray", "--jobs", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Ray tasks on a local Ray instance" in done.stdout.splitlines()[0]
    check_failure_named(done.stdout, folder / "ray")
    assert table(folder / "ray") == table(folder / "local")
    rerun = sweep(grids["ray"], "--executor", "ray", "--dry-run")  # the finished cell stays finished
    assert f"done     {OK_CELL}" in rerun.stdout and f"todo     {FAILING_CELL}" in rerun.stdout, rerun.stdout


def test_executor_errors_name_the_option_or_the_missing_library(
    grids: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ExecutorError, match="unknown option.*partitoin"):
        make_executor("slurm", {"partitoin": "gpu"}, Path("out"))
    if shutil.which("sbatch") is None:
        with pytest.raises(ExecutorError, match="sbatch is not on this machine's PATH.*cluster: local"):
            make_executor("slurm", {}, Path("out"))
    with pytest.raises(ExecutorError, match="cluster must be"):
        make_executor("slurm", {"cluster": "pbs"}, Path("out"))
    with pytest.raises(ExecutorError, match="executor ray: unknown option.*adress"):
        make_executor("ray", {"adress": "auto"}, Path("out"))
    with pytest.raises(GridError, match="executor.name"):
        GridSpec.from_dict({"variants": ["adamw"], "axes": {"lr": [1]}, "executor": "pbs"})
    for module, extra in (("submitit", "slurm"), ("ray", "ray")):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: import fails
        with pytest.raises(ExecutorError, match=rf"needs {module}.*lightning-decay\[{extra}\]"):
            make_executor(extra, {}, Path("out"))
        with pytest.raises(GridError, match=rf"lightning-decay\[{extra}\]"):
            run_sweep(GridSpec.load(grids["local"]), executor=extra, dry_run=True, log=lambda line: None)


class SleepingUnit(Unit):
    """A unit whose command sleeps (a cell that takes long), to stop its job while it runs."""

    def arguments(self) -> list[str]:
        return ["-c", "import time; print('started', flush=True); time.sleep(120)"]


@pytest.mark.parametrize("name", ["slurm", "ray"])
def test_a_job_that_dies_says_which_job_and_where_its_log_is(name: str, tmp_path: Path) -> None:
    """A job stopped from outside (scancel, a lost Ray worker) reports the job and its log, not only 'no result'."""
    folder = tmp_path / "cells" / "slow"
    folder.mkdir(parents=True)
    options = {"cluster": "local"} if name == "slurm" else {"num_cpus": 1}
    executor = make_executor(name, options, tmp_path)
    executor.start(1, 1)
    try:
        [job] = executor.submit([SleepingUnit(("slow",), (folder,), ("a",))], {}, [0])
        deadline = time.monotonic() + 120
        log = folder / "output.log"  # the unit's output goes to its first cell's log
        while not (log.exists() and "started" in log.read_text()):
            assert time.monotonic() < deadline and job.poll() is None
            time.sleep(0.1)
        job.stop()
        while job.poll() is None:
            assert time.monotonic() < deadline + 60
            time.sleep(0.1)
        assert job.poll() == -1
        failure = job.failure()
        assert failure is not None and ("SLURM job" if name == "slurm" else "Ray task") in failure, failure
        if name == "slurm":
            job_log = Path(failure.rsplit("job log: ", 1)[1].rstrip(")"))
            assert job_log.exists() and str(tmp_path) in str(job_log)
    finally:
        executor.shutdown()


def test_local_jobs_fork_only_where_it_is_safe_and_a_wrong_start_is_named(
    grids: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``executor: {name: local, options: {start: ...}}``: ``auto`` forks on a CPU machine with no other thread in
    the sweep process (cells on several threads only where libgomp can end its pool first), else spawns and says
    why; ``fork`` where unsafe, a misspelt value or option: an error naming it, from the dry run on (before any cell
    runs)."""
    out = Path("out")
    for threads in (1, 2):  # torch's libgomp here has omp_pause_resource_all
        described = make_executor("local", {}, out, threads=threads).describe()
        assert "each a fork of the sweep process (start: fork)" in described, (threads, described)
    assert "each a new interpreter (start: spawn)" in make_executor(
        "local", {"start": "spawn"}, out, threads=1
    ).describe()
    assert "(start: spawn: GPUs are visible" in make_executor("local", {}, out, gpus=["0"], threads=1).describe()
    with monkeypatch.context() as without_release:  # an OpenMP runtime that cannot end its pool
        without_release.setattr(forked, "_release_openmp_pool", lambda: None)
        assert "fork" in make_executor("local", {}, out, threads=1).describe()
        assert "each a new interpreter (start: spawn: cells run on 2 threads and this process's OpenMP" in (
            make_executor("local", {}, out, threads=2).describe()
        )
        with pytest.raises(ExecutorError, match="start: fork is not safe here: cells run on 2 threads.*start: spawn"):
            make_executor("local", {"start": "fork"}, out, threads=2)
        grid = GridSpec.load(grids["local"])  # threads: 1
        two_threads = dataclasses.replace(grid, threads=2, executor={"name": "local", "options": {"start": "fork"}})
        with pytest.raises(GridError, match="start: fork is not safe here: cells run on 2 threads"):
            run_sweep(two_threads, dry_run=True, log=lambda line: None)
    with pytest.raises(ExecutorError, match="start must be one of auto, fork, spawn, got 'sideways'"):
        make_executor("local", {"start": "sideways"}, out, threads=1)
    with pytest.raises(ExecutorError, match="executor local: unknown option.*strat.*known: start"):
        make_executor("local", {"strat": "fork"}, out, threads=1)

    release = threading.Event()
    helper = threading.Thread(target=release.wait)
    helper.start()
    try:
        assert "2 Python threads" in make_executor("local", {}, out, threads=1).describe()
        with pytest.raises(ExecutorError, match="start: fork is not safe here: the sweep process runs 2 Python"):
            make_executor("local", {"start": "fork"}, out, threads=1)
    finally:
        release.set()
        helper.join()
