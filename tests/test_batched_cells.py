"""Cells of a sweep run together in one process (``--batch-cells``), and cells that stop mid-epoch.

The runs train :class:`tests.sweep_toy.ToyClassifier` on the tiny JPEG set of ``conftest.py`` (40 train / 20 test
images, batch 8: 5 steps per epoch) in real cell processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_decay.sweep import GridSpec, load_results, run_sweep
from tests.test_sweep import write_base_config, write_grid

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
