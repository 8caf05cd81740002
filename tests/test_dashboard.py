"""W&B dashboards, checked against real offline runs read back from their ``.wandb`` files.

Three real runs, each once per module: a tiny quickstart (``configs/quickstart.yaml``: ResNet20, the three
monitors, TrainingReport, CSV + W&B offline), a tiny model with four optimizers (AdamP,
cautious AdamW, Adam-L2, AdamW on a LayerNorm'd layer: the variant-specific families and the rotational
equilibrium), and a tiny two-cell sweep with W&B on (its cells' runs and its summary run). Every panel of the
workspace view and of the sweep report must read keys these runs logged (history keys by name or regex, media
keys, config and summary keys), and every key they logged must be on some panel.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch import nn
from torch.utils.data import DataLoader

from lightning_decay.callbacks import EffectiveDecayMonitor, MonitorWarning, ScaleInvarianceMonitor, WeightNormMonitor
from lightning_decay.command import main
from lightning_decay.dashboard import build_report, build_workspace, panel_references, stable_spec
from lightning_decay.dashboard.spec import PanelReference
from lightning_decay.diagnostics.families import (
    BOOKKEEPING_KEYS,
    FAMILIES,
    chart_table_key,
    families_of,
    families_table,
    family_of,
)
from lightning_decay.diagnostics.wandb_files import (
    find_run_file,
    read_config,
    read_history,
    read_metric_definitions,
    read_summary,
)
from lightning_decay.optim import REGISTRY
from tests.test_callbacks import classification_data

#: The three runs are module fixtures: ``--dist loadgroup`` keeps this module on one xdist worker (one run each).
pytestmark = pytest.mark.xdist_group("dashboard")

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
EXAMPLE_ENTITY = "my-team"
QUICKSTART_VIEW = REPO / "docs" / "dashboard" / "quickstart-workspace.json"
SWEEP_REPORT = REPO / "docs" / "dashboard" / "adamw-vs-adamp-report.json"


class RunKeys:
    """What one or more offline W&B runs logged: history keys (media flattened to ``<key>/<field>``), summary keys,
    config keys (nested dicts as ``a.b``)."""

    def __init__(self, files: list[Path]) -> None:
        self.rows = [row for path in files for row in read_history(path)]
        self.history = {key for row in self.rows for key in row}
        self.summaries = [read_summary(path, quiet_seconds=0) for path in files]
        self.summary = {key for summary in self.summaries for key in summary}
        self.config = {key for path in files for key in _flatten(read_config(path, quiet_seconds=0))}

    def media_logged(self, key: str) -> bool:
        return key in self.history or any(k.startswith(key + "/") for k in self.history)

    def regex_logged(self, regex: str) -> bool:
        return any(re.search(regex, key) for key in self.history)


def _flatten(config: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in config.items():
        yield prefix + key
        if isinstance(value, dict):
            yield from _flatten(value, prefix + key + ".")


def reads_logged_keys(reference: PanelReference, runs: RunKeys) -> list[str]:
    """What the panel reads that the runs did not log (empty: every name, regex, media, config and summary key of
    the panel was logged)."""
    missing = [f"history {k}" for k in reference.history if not runs.media_logged(k)]
    missing += [f"regex {r}" for r in reference.regexes if not runs.regex_logged(r)]
    missing += [f"media {k}" for k in reference.media if not runs.media_logged(k)]
    missing += [f"config {k}" for k in reference.config if k not in runs.config]
    missing += [f"summary {k}" for k in reference.summary if k not in runs.summary]
    return missing


def shown_by(key: str, references: list[PanelReference]) -> bool:
    """Some panel draws this history key (by name, regex, or as a media key's field)."""
    for reference in references:
        if key in reference.history or any(re.search(r, key) for r in reference.regexes):
            return True
        if any(key == m or key.startswith(m + "/") for m in (*reference.media, *reference.history)):
            return True
    return False


@pytest.fixture(scope="module")
def offline() -> Iterator[pytest.MonkeyPatch]:
    """W&B offline (never online from a test, whatever credentials the machine has), silent, for the module's runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        patch.delenv("WANDB_API_KEY", raising=False)
        yield patch


def _finish_wandb() -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish()


@pytest.fixture(scope="module")
def quickstart(
    offline: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, cifar_jpeg_dir: Path
) -> tuple[Path, RunKeys]:
    """The quickstart config (its model, monitors, TrainingReport, CSV + W&B loggers), tiny: 2 epochs of 2 steps of
    8 images, every step logged. The images are the tiny JPEG folder of ``conftest.py``, not the embedded sample
    (decoding its 12,000 JPEGs takes longer than the fit; the keys logged do not depend on the images)."""
    folder = tmp_path_factory.mktemp("quickstart")
    offline.chdir(folder)
    main([
        "fit", "--config", str(QUICKSTART), f"--data.init_args.data_dir={cifar_jpeg_dir}",
        "--data.init_args.train_subset=16",
        "--data.init_args.test_subset=8", "--data.init_args.batch_size=8", "--trainer.max_epochs=2",
        "--trainer.log_every_n_steps=1", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false", "--model.init_args.decay.warmup_steps=0",
    ])
    _finish_wandb()
    return folder, RunKeys([find_run_file(folder / "outputs")])


class FourOptimizers(pl.LightningModule):
    """One layer per optimizer (manual optimization): AdamP, cautious AdamW, AdamW on a bias-free Linear before a
    LayerNorm (scale-invariant: the equilibrium keys), Adam-L2 on the head."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 8)
        self.c, self.norm = nn.Linear(8, 8, bias=False), nn.LayerNorm(8, elementwise_affine=False)
        self.d = nn.Linear(8, 3)

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.d(self.norm(self.c(torch.tanh(self.b(torch.tanh(self.a(x))))))), y)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        loss = self.loss(batch)
        optimizers = self.optimizers()
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in optimizers:
            optimizer.step()
        self.log("train/loss", loss)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        parts = {"adamp": self.a, "adamw-cautious": self.b, "adamw": self.c, "adaml2": self.d}
        return [
            REGISTRY[variant].build([{"params": list(m.parameters()), "name": "decay"}], lr=0.01, weight_decay=0.1,
                                    fused=False)
            for variant, m in parts.items()
        ]


@pytest.fixture(scope="module")
def four_optimizers(offline: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> RunKeys:
    folder = tmp_path_factory.mktemp("four")
    logger = WandbLogger(offline=True, save_dir=str(folder), project="dashboard-tests")
    trainer = pl.Trainer(
        max_epochs=2, log_every_n_steps=1, logger=[CSVLogger(folder, name="csv"), logger],
        callbacks=[
            WeightNormMonitor(per_module=True), EffectiveDecayMonitor(),
            ScaleInvarianceMonitor(loss_fn=lambda module, batch: module.loss(batch)),  # manual optimization
        ],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    with warnings.catch_warnings():  # what the monitors do not log for this toy is not the point here
        warnings.simplefilter("ignore", MonitorWarning)
        trainer.fit(FourOptimizers(), DataLoader(classification_data(32), batch_size=8))
    logger.experiment.finish()
    return RunKeys([find_run_file(folder)])


SWEEP_GRID = """
name: dash-sweep
configs: base.yaml
variant_key: model.init_args.variant
variants: [adamw]
axes:
  lr: {key: model.init_args.lr, values: [1e-3]}
  weight_decay: {key: model.init_args.weight_decay, values: [0.0, 1e-2]}
overrides:
  trainer.max_epochs: 2
wandb: {project: dash-sweep}
output: OUTPUT
"""


@pytest.fixture(scope="module")
def sweep(offline: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, cifar_jpeg_tar: Path) -> tuple[
    Path, RunKeys, RunKeys
]:
    """A finished two-cell sweep with W&B on: its output folder, its cells' runs, its summary run."""
    from lightning_decay.sweep.cell import cell_spec
    from lightning_decay.sweep.grid import GridSpec
    from lightning_decay.sweep.results import cell_dir, write_json_atomic
    from tests.test_sweep import write_base_config

    folder = tmp_path_factory.mktemp("sweep")
    offline.chdir(REPO)  # tests.sweep_toy resolves from the repository root
    write_base_config(folder, cifar_jpeg_tar)
    output = folder / "out"
    grid = folder / "grid.yaml"
    grid.write_text(SWEEP_GRID.replace("OUTPUT", str(output)))
    spec = GridSpec.load(grid)
    for cell in spec.cells():  # what the sweep's pool does, in this process: spec.json, then run-cell
        folder = cell_dir(output, cell.id)
        folder.mkdir(parents=True)
        cell_settings = {**cell_spec(spec, cell, spec.fingerprint(cell), 1), "parent_pid": None}
        write_json_atomic(folder / "spec.json", cell_settings)
        assert main(["sweep", "run-cell", str(folder / "spec.json")]) == 0
    assert main(["sweep", "--config", str(grid), "--plot-only"]) == 0
    _finish_wandb()
    cells = RunKeys(sorted(output.glob("cells/*/wandb/offline-run-*/run-*.wandb")))
    summary = RunKeys(sorted(output.glob("wandb/offline-run-*/run-*.wandb")))
    return output, cells, summary


# -- the run side: define_metric and the family charts --------------------------------------------------------


def test_every_logged_family_gets_its_define_metric_and_summary(quickstart: tuple[Path, RunKeys]) -> None:
    folder, runs = quickstart
    definitions = read_metric_definitions(find_run_file(folder / "outputs"), quiet_seconds=0)
    by_name = {d["name"]: d for d in definitions}
    for family in FAMILIES:  # every family's glob, once, with its summary and the trainer's step
        if family.summary and family.kind == "number":
            assert by_name[family.glob]["summary"] == [family.summary], family.name
            assert by_name[family.glob]["step_metric"] == "trainer/global_step"
    logged = [key for key in runs.history if (f := family_of(key)) is not None and f.summary and f.kind == "number"]
    assert len(logged) > 150
    for key in logged:  # and each key by its own name (a key's own definition beats Lightning's '*' glob)
        name = key.replace(".", "\\.")  # W&B reads an unescaped "." as nesting
        assert by_name[name]["summary"] == [family_of(key).summary] and not by_name[name]["glob"], key
    # the summaries hold what the definitions ask for: the last norm, the smallest decay factor, the mean angle
    summary = runs.summaries[0]
    series = {key: [row[key] for row in runs.rows if key in row] for key in logged}
    assert summary["weight_norm/total"] == {"last": pytest.approx(series["weight_norm/total"][-1])}
    assert summary["decay_factor/decay"] == {"min": pytest.approx(min(series["decay_factor/decay"]))}
    angle = "scale_invariance/angular_update/network.fc.weight"
    assert summary[angle] == {"mean": pytest.approx(sum(series[angle]) / len(series[angle]))}
    assert len(series[angle]) == 4


def test_one_multi_line_chart_per_family_at_each_epoch_end(quickstart: tuple[Path, RunKeys]) -> None:
    """``charts/<family>``: a table of (step, line, value) with every logged point of every layer, at both epoch
    ends (the fit ends at an epoch end: no third copy)."""
    folder, runs = quickstart
    charted = {f.name for f in FAMILIES if f.chart} & families_of(runs.history)
    assert charted == {"weight_norm", "neuron_norm_mean", "decay_factor", "cos", "angular_update"}
    for family in (f for f in FAMILIES if f.name in charted):
        key = chart_table_key(family)
        rows = [row for row in runs.rows if f"{key}/path" in row]
        assert len(rows) == 2, family.name
        steps = [row["trainer/global_step"] for row in rows]
        assert steps == [2, 4]
    family = next(f for f in FAMILIES if f.name == "weight_norm")
    last = [row for row in runs.rows if "charts/weight_norm_table/path" in row][-1]
    table = json.loads(next(folder.glob("outputs/quickstart/wandb/offline-run-*/files/"
                                        + last["charts/weight_norm_table/path"])).read_text())
    drawn = {(row[0], row[1]): row[2] for row in table["data"]}  # (step, layer) -> value
    logged = {
        (row["trainer/global_step"], key[len(family.prefix):]): value
        for row in runs.rows for key, value in row.items() if family_of(key) is family
    }
    assert len(logged) == 4 * 40 and drawn == pytest.approx(logged)  # 4 logging steps x 40 parameters


# -- the workspace ------------------------------------------------------------------------------------------------


def test_quickstart_view_panels_read_what_the_quickstart_logged(
    quickstart: tuple[Path, RunKeys], sweep: tuple[Path, RunKeys, RunKeys]
) -> None:
    """The view built from the quickstart's keys: every panel reads keys the quickstart logged, every key the
    quickstart logged is on a panel, no Sweep section (the quickstart is no sweep); the view of the sweep's cells
    (``--sweep-group``): every sweep panel reads keys the sweep's runs logged."""
    _, runs = quickstart
    _, cells, summary_run = sweep
    spec = stable_spec(build_workspace(EXAMPLE_ENTITY, "lightning-decay", keys=runs.history))
    references = panel_references(spec)
    sections = [s["name"] for s in spec["spec"]["section"]["panelBankConfig"]["sections"]]
    assert sections == ["Training", "Weight norms", "Effective decay", "Scale invariance", "All layers"]
    assert 30 <= len(references) <= 60  # against ~250 single-metric panels by default
    for reference in references:
        assert not reads_logged_keys(reference, runs), (reference.title, reads_logged_keys(reference, runs))
    left_out = [k for k in runs.history if k not in BOOKKEEPING_KEYS and not shown_by(k, references)]
    assert not left_out
    assert len(runs.history) > 250
    for section in spec["spec"]["section"]["panelBankConfig"]["sections"]:  # at most 10 lines a line plot
        for panel in (p for p in section["panels"] if p["viewType"] == "Run History Line Plot"):
            config = panel["config"]
            regex = config.get("metricRegex") if config.get("useMetricRegex") else None
            lines = sum(1 for k in runs.history if re.search(regex, k)) if regex else len(config["metrics"])
            assert 1 <= lines <= 10, (config["chartTitle"], lines)
    sweep_runs = RunKeys([])
    sweep_runs.rows = cells.rows + summary_run.rows
    sweep_runs.history = cells.history | summary_run.history
    sweep_runs.summary, sweep_runs.config = cells.summary | summary_run.summary, cells.config
    sweep_view = panel_references(stable_spec(build_workspace(EXAMPLE_ENTITY, "p", sweep_group="dash-sweep")))
    sweep_panels = [reference for reference in sweep_view if reference.section == "Sweep"]
    assert len(sweep_panels) == 5
    for reference in sweep_panels:
        assert not reads_logged_keys(reference, sweep_runs), (reference.title, reads_logged_keys(reference, sweep_runs))


def test_full_view_every_panel_reads_keys_of_a_real_run(
    quickstart: tuple[Path, RunKeys], four_optimizers: RunKeys, sweep: tuple[Path, RunKeys, RunKeys]
) -> None:
    """The view for any project (all families): each panel reads keys one of the real runs logged, and the
    variant-specific run's keys (AdamP, cautious, L2, equilibrium, per-module) are all on panels."""
    _, runs = quickstart
    _, cells, summary_run = sweep
    every = RunKeys([])
    every.rows = runs.rows + four_optimizers.rows + cells.rows + summary_run.rows
    every.history = runs.history | four_optimizers.history | cells.history | summary_run.history
    every.summary = cells.summary | summary_run.summary
    every.config = cells.config
    references = panel_references(stable_spec(build_workspace(EXAMPLE_ENTITY, "any", sweep_group="dash-sweep")))
    assert len(references) == 53
    for reference in references:
        assert not reads_logged_keys(reference, every), (reference.title, reads_logged_keys(reference, every))
    assert {f.name for f in FAMILIES} == families_of(every.history)  # every family really logged by some run
    left_out = [k for k in four_optimizers.history if k not in BOOKKEEPING_KEYS and not shown_by(k, references)]
    assert not left_out
    assert any(k.startswith("scale_invariance/angular_update_equilibrium/") for k in four_optimizers.history)


def test_committed_quickstart_view_is_the_dry_run(
    quickstart: tuple[Path, RunKeys], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = quickstart
    out = tmp_path / "view.json"
    code = main(["dashboard", "--entity", EXAMPLE_ENTITY, "--project", "lightning-decay", "--keys-from",
                 str(folder / "outputs"), "--dry-run", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "5 sections, 50 panels" in printed and "nothing sent to W&B" in printed
    text = out.read_text()
    assert not re.search(r"/(tmp|root|home|work|Users)/", text)
    assert json.loads(text) == json.loads(QUICKSTART_VIEW.read_text()), "regenerate docs/dashboard (README)"


# -- the sweep report ---------------------------------------------------------------------------------------------


def test_sweep_report_panels_read_what_the_sweep_logged(sweep: tuple[Path, RunKeys, RunKeys]) -> None:
    output, cells, summary_run = sweep
    spec = stable_spec(build_report(output, entity=EXAMPLE_ENTITY))
    assert spec["project"]["name"] == "dash-sweep"  # the grid's wandb project
    references = panel_references(spec)
    assert len(references) == 6
    blocks = spec["spec"]["blocks"]
    markdown = [b for b in blocks if b["type"] == "markdown-block"]
    assert len(markdown) == 1 and "| adamw |" in markdown[0]["content"]
    text = json.dumps(spec)
    assert "Decay No More" in text and "JobType" not in text and "sweep-cell" in text
    for reference in references:
        pictures = reference.view_type == "Media Browser"
        source = summary_run if pictures else cells
        assert not reads_logged_keys(reference, source), (reference.title, reads_logged_keys(reference, source))
    assert cells.config >= {"variant", "lr", "weight_decay"}


def test_committed_sweep_report_is_the_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    code = main(["dashboard", "--report", str(REPO / "docs" / "results" / "adamw-vs-adamp"), "--entity",
                 EXAMPLE_ENTITY, "--project", "lightning-decay", "--dry-run", str(out)])
    assert code == 0 and "6 panels" in capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(SWEEP_REPORT.read_text()), "regenerate docs/dashboard (README)"


def test_report_of_a_folder_that_is_no_sweep_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--report", str(tmp_path), "--entity", "e", "--dry-run", str(tmp_path / "r.json")]) == 2
    assert f"folder {str(tmp_path)!r} is not a finished lightning-decay sweep" in capsys.readouterr().err


# -- no account, no extra ------------------------------------------------------------------------------------------


class NoPrompt:
    def read(self, *args: Any) -> str:
        raise AssertionError("the command read from stdin (a prompt)")

    readline = read


def test_not_logged_in_says_what_it_would_create_without_network_or_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(sys, "stdin", NoPrompt())
    code = main(["dashboard", "--entity", "e", "--project", "p"])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("not logged in to W&B (no WANDB_API_KEY, no netrc entry for the W&B host): nothing created")
    assert "workspace view 'lightning-decay: what weight decay does' for e/p: 5 sections, 48 panels" in out
    assert "wandb login" in out and "--dry-run" in out and "lightning-decay dashboard --entity e --project p" in out
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    os.chmod(tmp_path / ".netrc", 0o600)
    from lightning_decay.dashboard.command import credentials_source

    assert credentials_source() == "netrc"  # wandb's own netrc reader sees the entry
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["dashboard", "--entity", "e", "--project", "p"]) == 1  # offline: still nothing sent
    assert "W&B is offline (WANDB_MODE=offline): nothing created" in capsys.readouterr().out


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Creating the view needs the extra (the dry run does not: ``tests/test_dashboard_layout.py``)."""
    for name in [m for m in sys.modules if m == "wandb_workspaces" or m.startswith("wandb_workspaces.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert main(["dashboard", "--entity", "e", "--project", "p"]) == 2
    assert "needs the optional extra [dashboard]" in capsys.readouterr().err


def test_workspace_arguments_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["dashboard", "--project", "p"])
    assert "--entity required" in capsys.readouterr().err
    with pytest.raises(ValueError, match="project must be a non-empty string"):
        build_workspace("e", " ")


# -- the docs -------------------------------------------------------------------------------------------------


def test_docs_table_says_which_panel_shows_which_key() -> None:
    text = (REPO / "docs" / "monitoring.md").read_text()
    begin, end = "<!-- dashboard panels: generated", "<!-- end of dashboard panels -->"
    assert begin in text and end in text
    table = text.split(begin, 1)[1].split("\n", 1)[1].split(end, 1)[0].strip()
    assert table == families_table().strip(), "docs/monitoring.md: paste families_table() (see the comment there)"
    for family in FAMILIES:
        assert "`" + family.shown_as.replace("|", "\\|") + "`" in table


def test_readme_has_the_dashboard_section() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## W&B dashboard", 1)[1].split("\n## ", 1)[0]
    assert "lightning-decay dashboard --entity" in section and "--report" in section and "--dry-run" in section
    assert readme.index("## Monitoring callbacks") < readme.index("## W&B dashboard")
    assert yaml.safe_load(QUICKSTART.read_text())  # the config the committed view comes from


def test_every_decay_metric_of_the_registry_has_its_families() -> None:
    """A variant whose record lists a decay metric no family stands for would log keys no panel shows."""
    tagged = {family.decay_metric for family in FAMILIES if family.decay_metric}
    listed = {metric for record in REGISTRY.values() for metric in record.decay_metrics}
    assert listed - {"decay_factor"} <= tagged, listed - tagged
    for family in FAMILIES:  # one family per key: no key pattern shadows another's
        if family.prefix:
            assert family_of(family.prefix + "x") is family
        elif family.key:
            assert family_of(family.key) is family


def test_charts_at_the_fit_end_when_it_stops_mid_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """max_steps=3 with 2 steps per epoch: charts after epoch 1 (step 2) and at the fit's end (step 3), the last
    one with all three points of each line."""
    from tests.test_training_report import ZeroBiasNet

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="dashboard-tests")
    trainer = pl.Trainer(
        max_steps=3, log_every_n_steps=1, logger=logger, callbacks=[WeightNormMonitor(), EffectiveDecayMonitor()],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    trainer.fit(ZeroBiasNet(), DataLoader(classification_data(16), batch_size=8))
    logger.experiment.finish()
    rows = read_history(find_run_file(tmp_path))
    charted = [row for row in rows if "charts/weight_norm_table/path" in row]
    assert [row["trainer/global_step"] for row in charted] == [2, 3]
    assert [row["charts/weight_norm_table/nrows"] for row in charted] == [2 * 4, 3 * 4]  # 4 parameters
    assert [row["charts/decay_factor_table/nrows"] for row in rows if "charts/decay_factor_table/path" in row] == [
        2 * 2, 3 * 2  # groups decay and no_decay
    ]


def test_logged_in_saves_the_view(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """With credentials the command saves (here: W&B's save replaced, nothing sent) and prints where; a failing save
    is one error line and exit code 1."""
    import wandb_workspaces.workspaces as ws

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    saved: list[Any] = []

    def save(view: Any) -> Any:
        saved.append(view)
        object.__setattr__(view, "_internal_name", "nw-test")
        return view

    monkeypatch.setattr(ws.Workspace, "save", save)
    monkeypatch.setattr(ws.Workspace, "url", property(lambda view: f"https://wandb.example/{view.entity}?nw=test"))
    assert main(["dashboard", "--entity", "e", "--project", "p", "--name", "decay view"]) == 0
    assert len(saved) == 1 and saved[0].name == "decay view" and len(saved[0].sections) == 5
    assert "saved (WANDB_API_KEY credentials): https://wandb.example/e?nw=test" in capsys.readouterr().out

    def fail(view: Any) -> Any:
        raise ConnectionError("no route to host")

    monkeypatch.setattr(ws.Workspace, "save", fail)
    assert main(["dashboard", "--entity", "e", "--project", "p"]) == 1
    assert "could not save the workspace to W&B (ConnectionError: no route to host)" in capsys.readouterr().err
