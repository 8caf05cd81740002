"""The exported W&B sweep runs: the command line ``wandb agent`` would run for one cell (built by W&B's own sweep
command helpers from ``wandb_sweep.yaml``, the sweep's parameters filled in) gives the local cell's result."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import pytest
import yaml

from lightning_decay.sweep import GridSpec, run_sweep
from lightning_decay.sweep.results import RESULT_FILE
from tests.test_sweep import REPO, write_base_config, write_grid

GRID = """
name: agent1
configs: base.yaml
variant_key: model.init_args.variant
variants: [adamw]
axes:
  lr: {key: model.init_args.lr, values: [3e-2]}
  weight_decay: {key: model.init_args.weight_decay, values: [1e-2]}
  seed: [0]
overrides:
  trainer.max_epochs: 2
threads: 1
output: out
"""


def agent_command(sweep: dict, values: dict) -> list[str]:
    """What ``wandb agent`` runs for a sweep run with ``values``: W&B's own ``create_sweep_command`` and
    ``create_sweep_command_args``, then the agent's macro expansion (``wandb/wandb_agent.py``, ``_command_run``)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    template = sweep_utils.create_sweep_command(sweep["command"])
    macros = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros["interpreter"], macros["program"] = ["python"], [sweep.get("program", "")]
    if platform.system() != "Windows":
        macros["env"] = ["/usr/bin/env"]
    command: list[str] = []
    for item in map(str, template):
        command += macros.get(item[2:-1]) or [] if item.startswith("${") and item.endswith("}") else [item]
    return command


def test_the_exported_agent_command_reproduces_the_local_cell(
    tmp_path: Path, cifar_jpeg_tar: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the cells import tests.sweep_toy
    monkeypatch.chdir(tmp_path)  # the sweep files' paths are relative to the folder the sweep ran in
    write_base_config(tmp_path, cifar_jpeg_tar)
    grid_path = write_grid(tmp_path, GRID)
    local = run_sweep(GridSpec.load(grid_path, tmp_path / "local"), log=lambda line: None)
    assert local.exit_code == 0 and len(local.ran) == 1
    cell = local.ran[0]

    sweep = yaml.safe_load((tmp_path / "local" / "wandb_sweep.yaml").read_text())
    values = {name: spec["values"][0] for name, spec in sweep["parameters"].items()}
    command = agent_command(sweep, values)
    assert command[:4] == ["/usr/bin/env", "lightning-decay", "sweep", "cell"]
    assert "--lr=0.03" in command and "--variant=adamw" in command and "--seed=0" in command
    command[command.index("--output") + 1] = "agent"  # the same grid, another results folder
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_SWEEP_ID": "test-sweep", "WANDB_RUN_ID": "agentrun1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    by_local = json.loads((tmp_path / "local" / "cells" / cell / RESULT_FILE).read_text())
    by_agent = json.loads((tmp_path / "agent" / "cells" / cell / RESULT_FILE).read_text())
    assert by_agent["status"] == "ok" and by_agent["fingerprint"] == by_local["fingerprint"]
    for key in ("accuracy", "train_loss", "weight_norm", "norm_history", "epochs", "steps"):
        assert by_agent[key] == by_local[key], key  # bitwise: same settings, same seed, same thread count
    assert by_agent["metrics"] == by_local["metrics"]
    assert list((tmp_path / "agent" / "cells" / cell / "wandb").glob("offline-run-*/run-*.wandb"))  # W&B was on
    assert (tmp_path / "agent" / "results.csv").exists()
