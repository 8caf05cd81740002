"""Cells of a sweep run together in one process (``--batch-cells``), and cells that stop mid-epoch.

The runs train :class:`tests.sweep_toy.ToyClassifier` on the tiny JPEG set of ``conftest.py`` (40 train / 20 test
images, batch 8: 5 steps per epoch) in real cell processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from lightning_decay.optim.registry import REGISTRY
from lightning_decay.sweep import GridError, GridSpec, load_results, run_sweep
from lightning_decay.sweep.batched import describe_batches, plan_batches, share_key
from lightning_decay.sweep.locks import is_claimed
from tests.test_sweep import start_sweep, status, wait_for, write_base_config, write_grid

GRID_MID_EPOCH = """
name: mid-epoch
configs: base.yaml
variant_key: model.init_args.variant
variants: [adamw]
axes:
  max_steps: {key: trainer.max_steps, values: [3, 7]}
  lr: {key: model.init_args.lr, values: [1e-3]}
  weight_decay: {key: model.init_args.weight_decay, values: [0.0]}
overrides:
  trainer.max_epochs: 5
metrics: {accuracy: val/acc}
test: false
output: OUTPUT
"""


def test_cells_stopping_mid_epoch_validate_at_the_end_of_their_fit(
    tmp_path: Path, cifar_jpeg_tar: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``max_steps`` 3 and 7 end the fit inside the first and the second epoch (5 steps each), where Lightning does
    not validate: the first cell had no ``val/acc`` at all, the second the one of step 5. Each cell validates at
    the end of its fit, so ``val/acc`` (the grid's accuracy) is the trained model's (issue 25, item 6)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    write_base_config(tmp_path, cifar_jpeg_tar)
    output = tmp_path / "out"
    grid = GridSpec.load(write_grid(tmp_path, GRID_MID_EPOCH.replace("OUTPUT", str(output))))
    summary = run_sweep(grid, jobs=1, validate=False, log=lambda line: None)
    rows = load_results(output)
    assert [row["status"] for row in rows] == ["ok", "ok"], [row.get("error") for row in rows]
    assert summary.exit_code == 0 and summary.failed == []
    for row in rows:
        assert row["steps"] == row["max_steps"]
        assert row["accuracy"] == row["val/acc"] and 0.0 <= row["accuracy"] <= 1.0
        logged = (output / "cells" / row["cell"] / "logs" / "metrics.csv").read_text().splitlines()
        header = logged[0].split(",")
        val_steps = [int(line.split(",")[header.index("step")]) for line in logged[1:]
                     if line.split(",")[header.index("val/acc")]]
        assert val_steps[-1] >= row["steps"] - 1  # validated after the last training step (0-based), not at step 4


# --------------------------------------------------------------------------------------------------------------
# Batched cells: which cells share a process, and the same numbers as one process per cell
# --------------------------------------------------------------------------------------------------------------

#: Every scalar Adam variant of the registry (torch's kernel) and AdamP (compiled): the test's variants.
BATCH_VARIANTS = [name for name, info in REGISTRY.items() if info.family == "adam" and info.kernel == "torch"]
BATCH_VARIANTS.append("adamp")

GRID_BATCH = """
name: batched
configs: base.yaml
variant_key: model.init_args.variant
variants:
VARIANTS
  adamp-seed1: {overrides: {model.init_args.variant: adamp, seed_everything: 1}}
axes:
  lr: {key: model.init_args.lr, values: [3e-2]}
  weight_decay: {key: model.init_args.weight_decay, values: [1e-2]}
overrides:
  seed_everything: 0
  trainer.max_epochs: 1
  trainer.max_steps: 3
  trainer.limit_val_batches: 1
  data.init_args.eval_batch_size: 10
threads: 1
output: OUTPUT
"""


def batch_grid(folder: Path, output: Path, extra: str = "") -> GridSpec:
    variants = "\n".join(f"  {name}: {{}}" for name in BATCH_VARIANTS)
    text = GRID_BATCH.replace("VARIANTS", variants).replace("OUTPUT", str(output)) + extra
    return GridSpec.load(write_grid(folder, text))


def test_cells_sharing_model_and_data_are_batched(tmp_path: Path, cifar_jpeg_tar: Path) -> None:
    """Variants, lr, weight decay and seed may differ within a batch; a model setting (the conv width) may not;
    the cells of a group are split into batches of at most N, at least one per job."""
    write_base_config(tmp_path, cifar_jpeg_tar)
    grid = batch_grid(tmp_path, tmp_path / "out")
    cells = grid.cells()
    assert len({share_key(grid, cell) for cell in cells}) == 1
    assert [len(batch) for batch in plan_batches(grid, cells, 3)] == [3, 2, 2]
    assert [len(batch) for batch in plan_batches(grid, cells, 7, jobs=2)] == [4, 3]
    assert plan_batches(grid, cells, 1) == [[cell] for cell in cells]
    assert [cell for batch in plan_batches(grid, cells, 4) for cell in batch] == cells  # grid order kept

    raw = yaml.safe_load(GRID_BATCH.replace("VARIANTS", "  adamw: {}").replace("OUTPUT", str(tmp_path / "out")))
    raw["axes"]["width"] = {"key": "model.init_args.width", "values": [4, 8]}  # the model's conv width
    grid = GridSpec.from_dict(raw, path=tmp_path / "grid.yaml")
    batches = plan_batches(grid, grid.cells(), 8)
    assert [[(cell.variant.name, cell.axis_values["width"]) for cell in batch] for batch in batches] == [
        [("adamw", 4), ("adamp-seed1", 4)], [("adamw", 8), ("adamp-seed1", 8)]
    ]
    assert "4 cell(s) in 2 group(s) sharing model and data, run by 2 process(es) of 2 cell(s)" in describe_batches(
        grid, batches
    )[0]
    assert grid.batch_cells is None
    assert GridSpec.from_dict({**raw, "batch_cells": 4}, path=tmp_path / "grid.yaml").batch_cells == 4
    with pytest.raises(GridError, match="batch_cells"):
        GridSpec.from_dict({**raw, "batch_cells": 0}, path=tmp_path / "grid.yaml")


@contextlib.contextmanager
def deadline(seconds: int, what: str) -> Iterator[None]:
    """Fail (TimeoutError naming ``what``) instead of hanging when the block runs past ``seconds``: a SIGALRM in
    this thread, since a Python thread would make the sweep process unsafe to fork."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"{what}: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


#: The numbers of a cell's ``result.json`` that must not depend on how the cells were run (timings may).
SAME_FIGURES = ("status", "accuracy", "train_loss", "weight_norm", "norm_history", "metrics", "epochs", "steps")


def figures(output: Path) -> dict[str, dict]:
    results = {path.parent.name: json.loads(path.read_text()) for path in output.glob("cells/*/result.json")}
    return {cell: {key: result.get(key) for key in SAME_FIGURES} for cell, result in results.items()}


def test_cells_in_one_process_give_the_figures_of_one_process_each(
    tmp_path: Path, cifar_jpeg_tar: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every scalar Adam variant of the registry and AdamP (twice: the second reuses the compiled kernel), each
    cell in a new interpreter of its own (``start: spawn``) vs all seven one after another in one process, a fork
    of this (pytest) process (``auto``), with W&B offline: bitwise the same result.json numbers, one output.log,
    one W&B run and one row per cell. The cells run on two threads, and this process ran two-thread OpenMP regions
    before the fork: the child would hang on the copied pool if the sweep did not end it first."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    write_base_config(tmp_path, cifar_jpeg_tar)
    alone, batched = tmp_path / "alone", tmp_path / "batched"
    spawn = {"name": "local", "options": {"start": "spawn"}}
    grid = dataclasses.replace(batch_grid(tmp_path, alone), executor=spawn, threads=2)
    cells = [cell.id for cell in grid.cells()]
    lines: list[str] = []
    summary = run_sweep(grid, jobs=2, validate=False, log=lines.append)
    assert summary.exit_code == 0, summary
    assert "each a new interpreter (start: spawn)" in lines[0], lines[0]
    lines = []
    grid = dataclasses.replace(batch_grid(tmp_path, batched), batch_cells=len(cells), wandb={}, threads=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # an OpenMP pool of two threads in this process, as a sweep that ran anything before has
        torch.randn(512, 512) @ torch.randn(512, 512)
    finally:
        torch.set_num_threads(threads)
    with deadline(600, "the forked two-thread cells (a copied OpenMP pool hangs them)"):
        summary = run_sweep(grid, jobs=1, validate=False, log=lines.append)
    assert summary.exit_code == 0 and sorted(summary.ran) == sorted(cells), (summary, lines)
    assert "each a fork of the sweep process (start: fork)" in lines[0], lines[0]

    def pids(output: Path) -> list[int]:
        return [json.loads((output / "cells" / cell / "result.json").read_text())["pid"] for cell in cells]

    assert len(set(pids(alone))) == len(cells) and len(set(pids(batched))) == 1  # really one process vs seven
    expected, got = figures(alone), figures(batched)
    assert sorted(expected) == sorted(cells) and sorted(got) == sorted(cells)
    for cell in cells:
        assert got[cell] == expected[cell], cell
    # the cells differ (AdamC equals AdamW on this model: it has no normalized groups, where AdamC's decay differs)
    others = [cell for cell in cells if not cell.startswith("adamc_")]
    assert len({json.dumps(expected[cell]["metrics"], sort_keys=True) for cell in others}) == len(others)
    for cell in cells:
        folder = batched / "cells" / cell
        assert list((folder / "wandb").glob("offline-run-*/run-*.wandb")), cell  # its own W&B run
        assert (folder / "logs" / "metrics.csv").exists()
        assert (folder / "output.log").read_text().count("Seed set to") == 1  # its own output only
    assert [row["cell"] for row in load_results(batched)] == cells


GRID_KILL = """
name: batched-kill
configs: base.yaml
variant_key: model.init_args.variant
variants: [adamw]
axes:
  lr: {key: model.init_args.lr, values: [1e-3, -1.0, 3e-2]}
  weight_decay: {key: model.init_args.weight_decay, values: [0.0, 1e-2]}
overrides:
  trainer.max_epochs: 1
batch_cells: 6
jobs: 1
threads: 1
output: OUTPUT
"""


def test_a_killed_batch_resumes_its_unfinished_cells_and_a_failing_cell_does_not_stop_the_others(
    tmp_path: Path, cifar_jpeg_tar: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six cells in one process (``batch_cells: 6``; a fork of the sweep: one thread). SIGKILL of the sweep after
    the first cell stops the batch (its process dies with the sweep) and keeps that cell; the rerun runs the five
    others, in one process again, where the two cells with an invalid lr fail with an error naming the cell and the
    three after them finish."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    write_base_config(tmp_path, cifar_jpeg_tar, step_delay=0.1)
    output = tmp_path / "out"
    grid_path = write_grid(tmp_path, GRID_KILL.replace("OUTPUT", str(output)))
    cells = [cell.id for cell in GridSpec.load(grid_path).cells()]
    result = {cid: output / "cells" / cid / "result.json" for cid in cells}

    sweep = start_sweep(grid_path)
    wait_for(lambda: status(result[cells[0]]) == "ok", 180, "the first cell of the batch")
    sweep.kill()
    sweep.communicate(timeout=30)
    wait_for(lambda: not any(is_claimed(output / "cells" / cid) for cid in cells), 60, "the batch to stop")
    assert status(result[cells[0]]) == "ok"
    assert [cid for cid in cells[1:] if status(result[cid]) == "ok"] == []  # it stopped in the second cell
    stamp = result[cells[0]].stat().st_mtime_ns

    lines: list[str] = []
    summary = run_sweep(GridSpec.load(grid_path), validate=False, log=lines.append)
    assert summary.skipped == cells[:1] and result[cells[0]].stat().st_mtime_ns == stamp
    bad = [cid for cid in cells if "lr=-1.0" in cid]
    assert sorted(summary.failed) == sorted(bad) and summary.exit_code == 1
    assert sorted(summary.ran) == sorted(set(cells[1:]) - set(bad))
    for cid in bad:
        failed = json.loads(result[cid].read_text())
        assert failed["status"] == "error" and "lr must be" in failed["error"], failed["error"]
        assert any(f"{cid} ERROR" in line for line in lines), lines
    rows = load_results(output)
    assert [row["cell"] for row in rows] == cells
    pids = {json.loads(result[cid].read_text()).get("pid") for cid in cells[1:]}
    assert len(pids) == 1 and None not in pids  # the five cells of the rerun ran in one process
