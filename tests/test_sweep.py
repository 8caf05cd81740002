"""The sweep runner: grid validation, the results store, pictures, and a real 2 x 2 sweep end to end.

The end-to-end test trains :class:`tests.sweep_toy.ToyClassifier` on the tiny JPEG set of ``conftest.py`` (40
train / 20 test images) in real cell processes: it interrupts a sweep with SIGINT, kills another with SIGKILL in
the middle of a cell, resumes (running exactly the unfinished cells), and re-runs with nothing to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from lightning_decay.sweep import (
    GridError,
    GridSpec,
    check_cells,
    collect_results,
    load_results,
    result_tables,
    run_sweep,
    write_results,
    write_wandb_sweeps,
)
from lightning_decay.sweep.cell import cell_spec
from lightning_decay.sweep.heatmaps import accuracy_metric, metric_title, plot_accuracy_heatmaps, plot_sweep
from lightning_decay.sweep.locks import is_claimed
from lightning_decay.sweep.results import write_json_atomic

REPO = Path(__file__).resolve().parents[1]


def write_base_config(folder: Path, data_dir: Path, step_delay: float = 0.0) -> Path:
    path = folder / "base.yaml"
    config = {
        "model": {"class_path": "tests.sweep_toy.ToyClassifier", "init_args": {"step_delay": step_delay}},
        "data": {
            "class_path": "lightning_decay.experiments.CIFAR10DataModule",
            "init_args": {"data_dir": str(data_dir), "batch_size": 8, "augment": True},
        },
        "trainer": {
            "max_epochs": 2, "accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
            "enable_checkpointing": False, "log_every_n_steps": 1,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def write_grid(folder: Path, text: str) -> Path:
    path = folder / "grid.yaml"
    path.write_text(text)
    return path


GRID_2X2 = """
name: toy2x2
configs: base.yaml
variant_key: model.init_args.variant
variants: [adamw]
axes:
  lr: {key: model.init_args.lr, values: [1e-3, 3e-2]}
  weight_decay: {key: model.init_args.weight_decay, values: [0.0, 1e-2]}
overrides:
  trainer.max_epochs: 2
output: OUTPUT
"""


# --------------------------------------------------------------------------------------------------------------
# The grid file
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def base_dir(tmp_path: Path, cifar_jpeg_tar: Path) -> Path:
    write_base_config(tmp_path, cifar_jpeg_tar)
    return tmp_path


def test_grid_cells_ids_and_arguments(base_dir: Path) -> None:
    grid = GridSpec.load(write_grid(base_dir, GRID_2X2.replace("OUTPUT", str(base_dir / "out"))))
    assert grid.axis("lr").values == (1e-3, 3e-2)  # YAML 1.1 reads 1e-3 as a string: converted to a number
    cells = grid.cells()
    assert [c.id for c in cells] == [
        "adamw__lr=0.001__weight_decay=0.0",
        "adamw__lr=0.001__weight_decay=0.01",
        "adamw__lr=0.03__weight_decay=0.0",
        "adamw__lr=0.03__weight_decay=0.01",
    ]
    assert grid.cell_args(cells[1]) == [
        "--config", str((base_dir / "base.yaml").resolve()),
        "--trainer.max_epochs=2",
        "--model.init_args.variant=adamw",
        "--model.init_args.lr=0.001",
        "--model.init_args.weight_decay=0.01",
    ]
    assert grid.output == base_dir / "out"


def test_fingerprint_follows_config_content_not_formatting(base_dir: Path) -> None:
    grid_path = write_grid(base_dir, GRID_2X2.replace("OUTPUT", "out"))
    cell = GridSpec.load(grid_path).cells()[0]
    before = GridSpec.load(grid_path).fingerprint(cell)
    base = base_dir / "base.yaml"
    base.write_text("# a comment\n" + base.read_text())
    assert GridSpec.load(grid_path).fingerprint(cell) == before
    base.write_text(base.read_text().replace("max_epochs: 2", "max_epochs: 3"))
    assert GridSpec.load(grid_path).fingerprint(cell) != before
    assert GridSpec.load(grid_path).fingerprint(GridSpec.load(grid_path).cells()[1]) != before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("name: toy2x2", "name: toy2x2\nlearning_rate: 1"), "unknown key.*learning_rate"),
        (("variants: [adamw]", "variants: []"), "variants: is empty"),
        (("variants: [adamw]", "variants: [adamw, adamw]"), "'adamw' appears twice"),
        (("variant_key: model.init_args.variant\nvariants: [adamw]", "variants: [adamw, adamp]"), "identical settings"),
        (("values: [1e-3, 3e-2]", "values: []"), "axes.lr.values: must be a non-empty list"),
        (("values: [1e-3, 3e-2]", "values: [1e-3, 1e-3]"), "axes.lr.values: has duplicates"),
        (("overrides:", "  loss_scale: [1, 10]\noverrides:"), r"axes.loss_scale.key: missing"),
        (("configs: base.yaml", "configs: missing.yaml"), "configs: config file 'missing.yaml' not found"),
        (("overrides:", "plot: {x: momentum}\noverrides:"), "plot.x: 'momentum' is not an axis"),
        (("overrides:", "metrics: {acc: val/acc}\noverrides:"), "metrics: must be a mapping with keys"),
        (("overrides:", "jobs: 0\noverrides:"), "jobs must be >= 1"),
        (("variants: [adamw]", "variants: [{name: adamw, config: x.yaml}]"), r"variants.adamw: must be a mapping"),
        (("overrides:", "plot: {tolerance: 1.5}\noverrides:"), r"plot.tolerance must be a finite number >= 0"),
        (("overrides:", "test: 1\noverrides:"), r"test must be True or False"),
    ],
)
def test_grid_errors_name_the_key(base_dir: Path, change: tuple[str, str], message: str) -> None:
    text = GRID_2X2.replace("OUTPUT", "out")
    assert change[0] in text
    text = text.replace(change[0], change[1], 1)
    with pytest.raises(GridError, match=message):
        GridSpec.load(write_grid(base_dir, text))


def test_variants_with_config_files_and_extra_axis(base_dir: Path) -> None:
    (base_dir / "adamp.yaml").write_text("model:\n  init_args:\n    variant: adamp\n")
    text = """
configs: [base.yaml]
variants:
  adamw: {overrides: {model.init_args.variant: adamw}}
  adamp: {configs: adamp.yaml}
axes:
  lr: [0.001]
  weight_decay: [0.0]
  loss_scale: {key: model.init_args.width, values: [4, 8]}
"""
    grid = GridSpec.load(write_grid(base_dir, text))
    assert grid.name == "grid"
    assert grid.output == Path("outputs/sweeps/grid")
    cells = grid.cells()
    assert len(cells) == 4
    assert cells[2].id == "adamp__lr=0.001__weight_decay=0.0__loss_scale=4"
    args = grid.cell_args(cells[2])
    assert args[:4] == ["--config", str((base_dir / "base.yaml").resolve()), "--config", str(base_dir / "adamp.yaml")]
    assert args[-1] == "--model.init_args.width=4"


def test_check_cells_rejects_a_wrong_cli_key(base_dir: Path) -> None:
    text = GRID_2X2.replace("OUTPUT", "out").replace("key: model.init_args.weight_decay", "key: model.init_args.wd")
    grid = GridSpec.load(write_grid(base_dir, text))
    with pytest.raises(GridError, match=r"(?s)cell adamw__lr=0.001__weight_decay=0.0: .*Option .wd. is not accepted"):
        check_cells(grid, grid.cells())
    bad_variant = GRID_2X2.replace("OUTPUT", "out").replace("variants: [adamw]", "variants: [adamx]")
    grid = GridSpec.load(write_grid(base_dir, bad_variant))
    with pytest.raises(GridError, match="unknown variant 'adamx'"):
        check_cells(grid, grid.cells())


def test_default_keys_fit_the_package_classifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default axis keys and the variant configs of configs/ are accepted by ImageClassifier's LightningCLI."""
    monkeypatch.setenv("WANDB_MODE", "offline")  # quickstart.yaml's AutoWandbLogger is instantiated by the check
    text = f"""
configs: [{REPO / "configs" / "quickstart.yaml"}]
variant_key: model.init_args.decay.optimizer
variants:
  adamw: {{}}
  adamp: {{configs: [{REPO / "configs" / "adamp.yaml"}]}}
axes:
  lr: [1.0e-3, 1.0e-2]
  weight_decay: [1.0e-4]
  loss_scale: {{key: model.init_args.loss_scale, values: [1, 100]}}
overrides:
  model.init_args.architecture: small_cnn
"""
    grid = GridSpec.load(write_grid(tmp_path, text))
    assert grid.axis("lr").key == "model.init_args.decay.lr"
    assert grid.axis("weight_decay").key == "model.init_args.decay.weight_decay"
    check_cells(grid, grid.cells())
    negative = GridSpec.load(write_grid(tmp_path, text.replace("lr: [1.0e-3, 1.0e-2]", "lr: [-1.0]")))
    with pytest.raises(GridError, match="(?s)cell adamw__lr=-1.0__.*lr"):
        check_cells(negative, negative.cells())


def test_variant_names_are_checked_against_the_registry(base_dir: Path) -> None:
    """Names set at DecayMixin's ``decay.optimizer`` key must be registry variants (class paths pass)."""
    text = GRID_2X2.replace("OUTPUT", "out").replace("model.init_args.variant", "model.init_args.decay.optimizer")
    grid = GridSpec.load(write_grid(base_dir, text.replace("variants: [adamw]", "variants: [adamw, adamw-paper]")))
    assert [v.name for v in grid.variants] == ["adamw", "adamw-paper"]
    GridSpec.load(write_grid(base_dir, text.replace("variants: [adamw]", "variants: [torch.optim.AdamW]")))
    with pytest.raises(GridError, match=r"variants: 'adamx' .*unknown variant 'adamx'; valid variants: adaml2, adamw"):
        GridSpec.load(write_grid(base_dir, text.replace("variants: [adamw]", "variants: [adamx]")))
    overridden = text.replace("overrides:", "overrides:\n  model.init_args.decay.optimizer: x")
    with pytest.raises(GridError, match=r"overrides.model.init_args.decay.optimizer: unknown variant 'x'"):
        GridSpec.load(write_grid(base_dir, overridden))


def test_wandb_sweep_files(base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(base_dir)  # paths in the commands are relative to the folder the sweep runs from
    grid = GridSpec.load(write_grid(base_dir, GRID_2X2.replace("OUTPUT", "out")))
    paths = write_wandb_sweeps(grid)
    assert [p.name for p in paths] == ["wandb_sweep.yaml", "wandb_sweep.fit.adamw.yaml"]
    everything = yaml.safe_load(paths[0].read_text())
    assert everything["method"] == "grid"
    assert everything["metric"] == {"name": "test/acc", "goal": "maximize"}
    assert everything["parameters"] == {
        "variant": {"values": ["adamw"]}, "lr": {"values": [1e-3, 3e-2]}, "weight_decay": {"values": [0.0, 1e-2]},
    }
    command = everything["command"]
    assert command[1:4] == ["lightning-decay", "sweep", "cell"] and command[-1] == "${args}"
    assert command[4:8] == ["--config", "grid.yaml", "--output", "out"]
    fit = yaml.safe_load(paths[1].read_text())
    assert set(fit["parameters"]) == {"model.init_args.lr", "model.init_args.weight_decay"}
    assert fit["command"][1:5] == ["lightning-decay", "fit", "--config", "base.yaml"]
    assert "--model.init_args.variant=adamw" in fit["command"] and fit["command"][-1] == "${args}"
    # from another folder, the paths lead there: run ``wandb agent`` from the folder the sweep ran in
    (base_dir / "sub").mkdir()
    fit = yaml.safe_load(write_wandb_sweeps(grid, root=base_dir / "sub")[1].read_text())
    assert fit["command"][3:5] == ["--config", "../base.yaml"]


def test_written_files_have_no_machine_paths(base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The W&B sweep files, cell specs, results and tables hold relative paths only (committable as is)."""
    monkeypatch.chdir(base_dir)
    grid = GridSpec.load(write_grid(base_dir, GRID_2X2.replace("OUTPUT", "out")))
    write_wandb_sweeps(grid)
    for cell in grid.cells():
        spec = cell_spec(grid, cell, grid.fingerprint(cell), threads=1)
        folder = grid.output / "cells" / cell.id
        write_json_atomic(folder / "spec.json", spec)
        write_json_atomic(folder / "result.json", {**spec, "status": "ok", "accuracy": 0.5, "weight_norm": 1.0})
        config = spec["args"][spec["args"].index("--config") + 1]
        assert config == "../base.yaml" and (grid.output / config).resolve() == (base_dir / "base.yaml").resolve()
    write_results(grid, collect_results(grid))
    written = sorted(p for p in grid.output.rglob("*") if p.is_file())
    assert {p.name for p in written} == {
        "wandb_sweep.yaml", "wandb_sweep.fit.adamw.yaml", "spec.json", "result.json", "results.json", "results.csv",
    }
    machine_paths = {str(base_dir), str(base_dir.resolve()), os.getcwd(), str(Path.home())}
    for path in written:
        text = path.read_text()
        leaks = [m for m in machine_paths if m in text]
        assert not leaks, f"{path.relative_to(base_dir)} contains {leaks}"


def test_committed_results_are_portable() -> None:
    """docs/results holds no machine path, and its W&B sweep files name files of the checkout (from its root)."""
    results = REPO / "docs" / "results"
    assert results.is_dir()
    for path in results.rglob("*"):
        if path.suffix in (".json", ".yaml", ".csv", ".md", ".log", ".txt"):
            text = path.read_text()
            for marker in ("/work/", "/tmp/", "/root", "/home/", "/Users/"):
                assert marker not in text, f"{path.relative_to(REPO)} contains {marker!r}"
    sweep_files = sorted(results.glob("*/wandb_sweep*.yaml"))
    assert sweep_files
    for path in sweep_files:
        command = yaml.safe_load(path.read_text())["command"]
        configs = [command[i + 1] for i, arg in enumerate(command) if arg in ("--config", "--output")]
        assert configs and all((REPO / item).exists() for item in configs), (path, configs)


BLOG_GRIDS = sorted(
    path for path in (REPO / "configs" / "blog").glob("*.yaml") if "axes" in (yaml.safe_load(path.read_text()) or {})
)


@pytest.mark.parametrize("path", BLOG_GRIDS, ids=lambda path: path.stem)
def test_committed_results_are_what_the_grid_file_runs(path: Path) -> None:
    """Each grid of configs/blog/ and its committed output agree: every cell finished with the grid's current settings
    (the fingerprint of the parsed configs and overrides), no other cell in the folder, and the W&B sweep files list
    the grid's axes. A grid edited without re-running it (e.g. a new weight decay) fails here."""
    from lightning_decay.sweep.locks import cell_state

    grid = GridSpec.load(path)
    cells = grid.cells()
    states = {cell.id: cell_state(grid, cell, grid.fingerprint(cell)) for cell in cells}
    assert all(state == "done" for state in states.values()), {k: v for k, v in states.items() if v != "done"}
    committed = {folder.name for folder in (grid.output / "cells").iterdir() if folder.is_dir()}
    assert committed == set(states)
    parameters = yaml.safe_load((grid.output / "wandb_sweep.yaml").read_text())["parameters"]
    assert parameters == {
        "variant": {"values": [variant.name for variant in grid.variants]},
        **{axis.name: {"values": list(axis.values)} for axis in grid.axes},
    }


# --------------------------------------------------------------------------------------------------------------
# Results tables and pictures (synthetic rows, no training)
# --------------------------------------------------------------------------------------------------------------


def synthetic_rows() -> list[dict]:
    rows = []
    for variant, best_lr in (("adamw", 1e-3), ("adamp", 1e-2)):
        for scale in (1, 10):
            for lr in (1e-3, 1e-2, 1e-1):
                for wd in (1e-4, 1e-3):
                    for seed in (0, 1):
                        accuracy = 0.9 - 0.2 * abs(np.log10(lr / best_lr)) + 0.01 * seed
                        rows.append({
                            "cell": f"{variant}-{scale}-{lr}-{wd}-{seed}", "variant": variant, "lr": lr,
                            "weight_decay": wd, "loss_scale": scale, "seed": seed, "status": "ok",
                            "accuracy": accuracy, "weight_norm": 10 * scale / (1 + 1000 * wd), "train_loss": 0.1,
                            "norm_history": [{"epoch": e, "weight_norm": 10 + e * scale} for e in range(3)],
                            "axes": ["lr", "weight_decay", "loss_scale", "seed"], "test/acc": accuracy,
                        })
    rows.append({**rows[0], "cell": "failed", "status": "error", "accuracy": None})
    return rows


def test_result_tables_average_seeds_and_split_extra_axes() -> None:
    tables = result_tables(synthetic_rows())
    assert [t.label for t in tables] == [
        "adamw, loss_scale=1", "adamw, loss_scale=10", "adamp, loss_scale=1", "adamp, loss_scale=10",
    ]
    table = tables[0]
    assert table.x_values == [1e-3, 1e-2, 1e-1] and table.y_values == [1e-4, 1e-3]
    assert table.values.shape == (2, 3)
    assert table.values[0, 0] == pytest.approx(0.905)  # mean of the two seeds
    assert (table.counts == 2).all()
    assert table.stds[0, 0] == pytest.approx(0.01 / np.sqrt(2))  # std (ddof=1) of 0.9 and 0.91
    assert len(table.rows) == 12  # the failed row is left out


def test_plots_are_written(tmp_path: Path) -> None:
    plots = plot_sweep(synthetic_rows(), tmp_path)
    assert set(plots) == {"heatmap_accuracy", "heatmap_norm", "norm_curves"}
    for path in plots.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    title = png_title(plots["heatmap_accuracy"])
    assert title.startswith("test accuracy (test/acc) (mean ± std over 2 seeds; red: best;")
    one_seed = plot_sweep([row for row in synthetic_rows() if row["seed"] == 0], tmp_path / "one")
    assert png_title(one_seed["heatmap_accuracy"]).startswith("test accuracy (test/acc) (red: best;")


def png_title(path: Path) -> str:
    """The ``Title`` a picture of the sweep carries in its PNG metadata (the title drawn above it)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.info["Title"]


def test_heatmap_titles_name_the_metric_plotted(tmp_path: Path) -> None:
    """Rows of a sweep with ``test: false`` and ``accuracy: val/acc`` (no test/acc logged): every title names
    val/acc, none says test accuracy; an explicit metric name wins; where val/acc and test/acc are equal in every
    row, the name the cells recorded decides."""
    rows = []
    for row in synthetic_rows():
        if row["variant"] == "adamw" and row["loss_scale"] == 1:  # one panel is enough here
            row = {key: value for key, value in row.items() if key != "test/acc"}
            rows.append({**row, "val/acc": row["accuracy"]})
    plots = plot_sweep(rows, tmp_path / "val")
    titles = {name: png_title(path) for name, path in plots.items()}
    assert titles["heatmap_accuracy"].startswith("validation accuracy (val/acc) (mean ± std over 2 seeds; red:")
    assert titles["heatmap_norm"] == "final total weight norm (red: best val/acc)"
    assert titles["norm_curves"].startswith("weight norm during training, runs with val/acc >= ")
    assert not any("test" in title for title in titles.values())
    assert accuracy_metric(rows) == "val/acc" and metric_title("test/acc") == "test accuracy (test/acc)"

    explicit = plot_accuracy_heatmaps(rows, tmp_path / "explicit.png", metric="top1")
    assert png_title(explicit).startswith("top1 (mean ± std over 2 seeds; red: best;")

    both = [{**row, "test/acc": row["accuracy"]} for row in rows]  # the test set is the validation set
    assert accuracy_metric(both) == "val/acc = test/acc"
    for row in both:
        if row["status"] == "ok":
            write_json_atomic(
                tmp_path / "both" / "cells" / row["cell"] / "result.json",
                {"metric_names": {"accuracy": "test/acc", "train_loss": "train/loss"}},
            )
    assert accuracy_metric(both, tmp_path / "both") == "test/acc"


GRID_VALIDATION_ONLY = """
name: val_only
configs: base.yaml
variant_key: model.init_args.variant
variants: [adamw]
axes:
  lr: {key: model.init_args.lr, values: [1e-3]}
  weight_decay: {key: model.init_args.weight_decay, values: [0.0]}
overrides:
  trainer.max_epochs: 1
metrics: {accuracy: val/acc}
test: false
output: OUTPUT
"""


def test_sweep_without_test_titles_its_heatmap_with_the_validation_metric(
    tmp_path: Path, cifar_jpeg_tar: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real one-cell sweep with ``test: false`` and ``metrics: {accuracy: val/acc}``: its accuracy heatmap is
    titled with val/acc (it said "test accuracy")."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    write_base_config(tmp_path, cifar_jpeg_tar)
    output = tmp_path / "out"
    grid = GridSpec.load(write_grid(tmp_path, GRID_VALIDATION_ONLY.replace("OUTPUT", str(output))))
    summary = run_sweep(grid, jobs=1, validate=False, log=lambda line: None)
    assert summary.exit_code == 0, summary
    (row,) = load_results(output)
    assert row["accuracy"] == row["val/acc"] and "test/acc" not in row
    title = png_title(output / "heatmap_accuracy.png")
    assert title.startswith("validation accuracy (val/acc) (red: best;") and "test" not in title
    assert png_title(output / "heatmap_norm.png") == "final total weight norm (red: best val/acc)"


# --------------------------------------------------------------------------------------------------------------
# End to end: real cells in real processes
# --------------------------------------------------------------------------------------------------------------


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_sweep(grid_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "lightning_decay.sweep", "--config", str(grid_path), "--jobs", "1", "--no-check"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def status(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["status"]
    except (OSError, ValueError):
        return None


def running_pid(folder: Path) -> int | None:
    """The pid of the process running a cell (its ``claim`` file, written by the cell command once it holds the
    cell), None before."""
    try:
        claim = json.loads((folder / "claim").read_text())
    except (OSError, ValueError):
        return None
    return claim["pid"] if claim.get("state") == "running" else None


def process_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (exited, waiting for its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


#: How the local jobs start: new interpreters, or (``auto`` with one thread per cell) forks of the sweep process.
STARTS = {"spawn": "executor: {name: local, options: {start: spawn}}\n", "fork": "threads: 1\n"}


@pytest.mark.parametrize("start", list(STARTS))
def test_sweep_end_to_end_interrupt_kill_resume(
    start: str, tmp_path: Path, cifar_jpeg_tar: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")  # never online from a test, whatever credentials the machine has
    monkeypatch.setenv("WANDB_SILENT", "true")
    write_base_config(tmp_path, cifar_jpeg_tar, step_delay=0.02)
    output = tmp_path / "out"
    grid_path = write_grid(tmp_path, GRID_2X2.replace("OUTPUT", str(output)) + STARTS[start])
    grid = GridSpec.load(grid_path)
    cells = [c.id for c in grid.cells()]
    result = {cid: output / "cells" / cid / "result.json" for cid in cells}
    folder = {cid: output / "cells" / cid for cid in cells}

    # 1. Ctrl-C after the first cell: the running cell is stopped, its claim released, the finished cell kept.
    sweep = start_sweep(grid_path)
    wait_for(lambda: result[cells[0]].exists(), 120, "the first cell")
    wait_for(lambda: running_pid(folder[cells[1]]) is not None, 60, "the second cell to start")
    sweep.send_signal(signal.SIGINT)
    out, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, out
    assert f"each a {'fork of the sweep process' if start == 'fork' else 'new interpreter'} (start: {start})" in out
    assert "interrupted" in out and "[1/4] adamw__lr=0.001__weight_decay=0.0 ok" in out
    assert json.loads(result[cells[0]].read_text())["status"] == "ok"
    assert not any(is_claimed(path) for path in folder.values())
    assert not result[cells[1]].exists() or json.loads(result[cells[1]].read_text())["status"] == "interrupted"

    # 2. A crash: SIGKILL the sweep while cell 3 runs. Its process dies with the sweep, and the OS drops its claim.
    sweep = start_sweep(grid_path)
    wait_for(lambda: status(result[cells[1]]) == "ok", 120, "the second cell")
    wait_for(lambda: running_pid(folder[cells[2]]) is not None, 60, "the third cell to start")
    child = running_pid(folder[cells[2]])
    assert is_claimed(folder[cells[2]])
    sweep.kill()
    sweep.communicate(timeout=30)
    wait_for(lambda: not process_running(child), 30, "the orphaned cell process to exit")
    # The OS drops the claim when the last process holding the lock's file is gone: forked helpers of the cell
    # (DataLoader workers check for their parent every few seconds) may outlive it briefly.
    wait_for(lambda: not is_claimed(folder[cells[2]]), 30, "the OS to drop the dead cell's claim")
    assert not result[cells[2]].exists() or json.loads(result[cells[2]].read_text())["status"] != "ok"
    stamps = {cid: result[cid].stat().st_mtime_ns for cid in cells[:2]}

    # 3. Resume (with W&B offline): only the two unfinished cells run, the finished ones are untouched.
    lines: list[str] = []
    grid_wandb = dataclasses.replace(grid, wandb={})
    summary = run_sweep(grid_wandb, jobs=2, log=lines.append)
    assert summary.skipped == cells[:2]
    assert sorted(summary.ran) == sorted(cells[2:])
    assert summary.failed == [] and summary.exit_code == 0
    assert {cid: result[cid].stat().st_mtime_ns for cid in cells[:2]} == stamps
    assert any(line.startswith("[4/4] ") and "ETA 00:00" in line for line in lines), lines
    assert any("img/s" in line for line in lines)

    rows = load_results(output)
    assert [r["cell"] for r in rows] == cells
    for row in rows:
        assert row["status"] == "ok"
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["train_loss"] > 0 and row["weight_norm"] > 0
        # 2 epochs x 5 steps of 8 images, each step sleeping 0.02 s; the first step is not timed
        assert row["train_s"] >= 9 * 0.02
        assert 0 < row["images_per_s"] <= 8 / 0.02
        assert [h["epoch"] for h in row["norm_history"]] == [0, 1, 2]
        assert row["norm_history"][-1]["weight_norm"] == pytest.approx(row["weight_norm"], rel=1e-5)
        assert row["accuracy"] == row["test/acc"] and row["train_loss"] == row["train/loss"]
    stored = [output / "results.json", output / "results.csv", *output.glob("cells/*/*.json")]
    assert len(stored) == 2 + 2 * len(cells)
    assert not [path for path in stored if str(tmp_path) in path.read_text()]  # relative paths only
    csv_lines = (output / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("cell,variant,lr,weight_decay,status,accuracy")
    for name in ("heatmap_accuracy.png", "heatmap_norm.png", "norm_curves.png"):
        assert (output / name).stat().st_size > 5_000
    decoupling = json.loads((output / "decoupling.json").read_text())
    assert 0 < decoupling["panels"]["adamw"]["rectangularity"] <= 1
    assert (output / "wandb_sweep.yaml").exists()
    for cid in cells[2:]:  # the resumed cells logged to W&B offline runs, grouped by the sweep name
        assert list((output / "cells" / cid / "wandb").glob("offline-run-*/run-*.wandb"))
    assert list((output / "wandb").glob("offline-run-*/run-*.wandb"))  # the summary run with the pictures

    # 4. Nothing left to do: nothing runs, nothing is rewritten.
    stamps = {cid: result[cid].stat().st_mtime_ns for cid in cells}
    summary = run_sweep(grid, log=lines.append)
    assert summary.ran == [] and summary.skipped == cells
    assert {cid: result[cid].stat().st_mtime_ns for cid in cells} == stamps

    # 5. Changed settings are refused unless asked for.
    base = tmp_path / "base.yaml"
    base.write_text(base.read_text().replace("step_delay: 0.02", "step_delay: 0.0"))
    with pytest.raises(GridError, match="other settings"):
        run_sweep(GridSpec.load(grid_path), log=lines.append)


#: Two cells, one fast and one slow (0.5 s per training step): the slow one runs when the fast one is done.
GRID_FAST_SLOW = """
name: fast-slow
configs: base.yaml
variant_key: model.init_args.variant
variants: [adamw]
axes:
  step_delay: {key: model.init_args.step_delay, values: [0.0, 0.5]}
overrides:
  trainer.max_epochs: 2
output: OUTPUT
"""


@pytest.mark.parametrize("start", list(STARTS))
def test_an_error_in_the_sweep_process_stops_its_running_cells(
    start: str, tmp_path: Path, cifar_jpeg_tar: Path
) -> None:
    """An exception in the sweep process (here the log's pipe closing, as under ``| head``) stops the cells still
    running before it propagates: no cell process outlives the sweep, none keeps its claim."""
    write_base_config(tmp_path, cifar_jpeg_tar)
    grid = GridSpec.load(write_grid(tmp_path, GRID_FAST_SLOW.replace("OUTPUT", str(tmp_path / "out")) + STARTS[start]))
    folders = [tmp_path / "out" / "cells" / cell.id for cell in grid.cells()]
    running: list[int] = []

    def log(line: str) -> None:
        if line.startswith("[1/"):
            running.extend(pid for pid in map(running_pid, folders) if pid is not None)
            raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        run_sweep(grid, jobs=2, validate=False, log=log)
    assert running, "a cell was still running when the error came"
    assert not [pid for pid in running if process_running(pid)]
    assert not [folder for folder in folders if is_claimed(folder)]
