"""Cell claims with OS locks (filelock): held by a live process only, released by the OS when it dies, and two
sweeps started at once on one folder never run a cell twice. Real processes throughout."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_decay.sweep.locks import (
    CLAIM_FILE,
    claim_info,
    claimed_cells,
    hold_cell,
    is_claimed,
    prepare_cell,
    try_claim,
)
from lightning_decay.sweep.results import RESULT_FILE, SPEC_FILE, write_json_atomic
from tests.test_sweep import GRID_2X2, REPO, write_base_config, write_grid

HOLDER = """
import sys, time
from pathlib import Path
from lightning_decay.sweep.locks import try_claim
lock = try_claim(Path(sys.argv[1]))
print("held" if lock is not None else "busy", flush=True)
time.sleep(300)
"""


def start_holder(folder: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    return process


def test_a_claim_is_held_by_a_live_process_and_released_when_it_dies(tmp_path: Path) -> None:
    folder = tmp_path / "cells" / "a"
    assert not is_claimed(folder) and not folder.exists()  # asking creates nothing
    holder = start_holder(folder)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_claimed(folder)
        assert try_claim(folder) is None
        assert prepare_cell(folder) is None  # a sweep skips it, touching nothing
        second = start_holder(folder)
        assert second.stdout.readline().strip() == "busy"
        second.kill()
        second.wait()
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup of any kind: the OS drops the lock
        holder.wait()
    assert not is_claimed(folder)
    lock = try_claim(folder)
    assert lock is not None
    lock.release()


def test_a_job_runs_only_the_attempt_it_was_launched_with(tmp_path: Path) -> None:
    folder = tmp_path / "cells" / "c"
    folder.mkdir(parents=True)
    (folder / "output.log").write_text("the attempt before\n")
    (folder / "junk").write_text("x")
    first = prepare_cell(folder, lambda f: write_json_atomic(f / SPEC_FILE, {"fingerprint": "f1"}))
    assert first and claim_info(folder)["attempt"] == first and claim_info(folder)["state"] == "prepared"
    assert not (folder / "junk").exists() and (folder / "previous-attempt.log").read_text() == "the attempt before\n"
    second = prepare_cell(folder, lambda f: write_json_atomic(f / SPEC_FILE, {"fingerprint": "f1"}))
    assert second and second != first
    with claimed_cells([folder], [first]) as runnable:  # prepared again since: the old job does not run it
        assert runnable == []
    with claimed_cells([folder], [second]) as runnable:
        assert runnable == [folder]
        assert is_claimed(folder)
        info = claim_info(folder)
        assert (info["attempt"], info["state"], info["pid"]) == (second, "running", os.getpid())
        with hold_cell(folder) as attempt:  # while a job holds it, nobody prepares it again
            assert attempt is None
    assert not is_claimed(folder)
    write_json_atomic(folder / RESULT_FILE, {"status": "ok", "fingerprint": "f1"})
    with claimed_cells([folder], [second]) as runnable:  # finished: nothing to run
        assert runnable == []
    with pytest.raises(ValueError, match="attempt"):
        with claimed_cells([folder], []):
            pass
    assert (folder / CLAIM_FILE).exists()


def test_two_sweeps_started_at_once_never_run_a_cell_twice(
    tmp_path: Path, cifar_jpeg_tar: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_base_config(tmp_path, cifar_jpeg_tar)
    output = tmp_path / "out"
    grid_path = write_grid(tmp_path, GRID_2X2.replace("OUTPUT", str(output)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "lightning_decay.sweep", "--config", str(grid_path), "--jobs", "1", "--no-check"]
    sweeps = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [sweep.communicate(timeout=600)[0] for sweep in sweeps]
    ran = [re.findall(r"^\[\d+/4\] (\S+) ok", out, flags=re.M) for out in outputs]
    cells = sorted(folder.name for folder in (output / "cells").iterdir())
    assert len(cells) == 4
    assert sorted(ran[0] + ran[1]) == cells, outputs  # every cell ran exactly once, in one of the two sweeps
    assert all(sweep.returncode in (0, 1) for sweep in sweeps), outputs
    # A third run: everything is finished, nothing runs, no result is rewritten.
    stamps = {cell: (output / "cells" / cell / RESULT_FILE).stat().st_mtime_ns for cell in cells}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "4 done, 0 to run" in done.stdout, done.stdout + done.stderr
    assert stamps == {cell: (output / "cells" / cell / RESULT_FILE).stat().st_mtime_ns for cell in cells}
