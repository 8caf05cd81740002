"""The workspace view's layout, without a fit: a Sweep section only for sweep runs, axis titles in words, at most
ten lines on a per-layer chart (the rest in a collapsed section), and the dry run without the ``[dashboard]`` extra
(``wandb_workspaces`` made unimportable in a fresh interpreter, the package's own code untouched)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lightning_decay.dashboard import build_workspace, panel_references, stable_spec
from lightning_decay.dashboard.workspace import ALL_LAYERS, MAX_LINES
from lightning_decay.diagnostics.families import FAMILIES, PANELS, family_of, panel_families

REPO = Path(__file__).resolve().parents[1]

#: The 40 parameters of ResNet20 without batch norm (the quickstart's model), in the model's order.
LAYERS = (
    ["network.conv1.weight", "network.conv1.bias"]
    + [f"network.layer{s}.{b}.conv{c}.{p}" for s in (1, 2, 3) for b in (0, 1, 2) for c in (1, 2)
       for p in ("weight", "bias")]
    + ["network.fc.weight", "network.fc.bias"]
)
GROUPS = ("decay", "no_decay")


def fit_keys() -> list[str]:
    """The keys a quickstart-like fit logs: per-layer families over :data:`LAYERS`, per-group families, training
    keys; no sweep key."""
    keys = ["train/loss", "val/loss", "val/acc", "lr-AdamW/decay", "lr-AdamW/no_decay", "trainer/global_step",
            "weight_norm/total", "epoch"]
    for prefix in ("weight_norm/", "neuron_norm_min/", "neuron_norm_mean/", "neuron_norm_max/",
                   "scale_invariance/cos/", "scale_invariance/relative_update/", "scale_invariance/angular_update/",
                   "scale_invariance/invariant/", "scale_invariance/loss_change/"):
        keys += [prefix + layer for layer in LAYERS]
    for prefix in ("lr/", "eta/", "decay_factor/", "decay_timescale_steps/", "decay_timescale_epochs/"):
        keys += [prefix + group for group in GROUPS]
    return keys


def sections(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec["spec"]["section"]["panelBankConfig"]["sections"]


def line_count(panel: dict[str, Any], keys: list[str]) -> int:
    """How many lines a panel draws for one run that logged ``keys``: a line plot one per metric it names or key
    its regex matches; a multi-line chart of ``charts/<family>`` one per key of the family."""
    config = panel["config"]
    if panel["viewType"] == "Run History Line Plot":
        if config.get("useMetricRegex"):
            return sum(1 for key in keys if re.search(config["metricRegex"], key))
        return len(config["metrics"])
    if panel["viewType"] == "Vega2":
        table = json.dumps(config["userQuery"])
        name = re.search(r"charts/(\w+)_table", table).group(1)
        return sum(1 for key in keys if (f := family_of(key)) is not None and f.name == name)
    return 1


# -- the Sweep section ---------------------------------------------------------------------------------------------


def test_sweep_section_only_for_sweep_runs() -> None:
    names = lambda spec: [s["name"] for s in sections(spec)]  # noqa: E731
    fit = stable_spec(build_workspace("e", "p", keys=fit_keys()))
    assert "Sweep" not in names(fit)
    assert "sweep" not in json.dumps(fit)  # no sweep panel, no sweep column pinned
    assert "Sweep" not in names(stable_spec(build_workspace("e", "p")))  # any project, no sweep named
    assert "Sweep" in names(stable_spec(build_workspace("e", "p", keys=[*fit_keys(), "sweep/weight_norm"])))
    grouped = stable_spec(build_workspace("e", "p", sweep_group="dash-sweep"))
    assert "Sweep" in names(grouped) and "summary:sweep/accuracy" in json.dumps(grouped)


# -- at most ten lines a chart ---------------------------------------------------------------------------------------


def test_no_chart_in_the_open_sections_draws_more_than_ten_lines() -> None:
    """40 layers: each per-layer line plot draws at most 10 of them (a spread over the depth), and the collapsed
    "All layers" section holds every layer in charts of at most 10 lines (and the epoch-end charts of all lines);
    every logged key is still drawn somewhere."""
    keys = fit_keys()
    spec = stable_spec(build_workspace("e", "p", keys=keys))
    shown: set[str] = set()
    for section in sections(spec):
        for panel in section["panels"]:
            lines = line_count(panel, keys)
            if section["name"] == ALL_LAYERS:
                assert not section["isOpen"]
                assert panel["viewType"] == "Vega2" or lines <= MAX_LINES, panel["config"].get("chartTitle")
            else:
                assert lines <= MAX_LINES, (section["name"], panel["config"].get("chartTitle"), lines)
            config = panel["config"]
            if panel["viewType"] == "Run History Line Plot":
                shown |= set(config["metrics"])
                if config.get("useMetricRegex"):
                    shown |= {key for key in keys if re.search(config["metricRegex"], key)}
    assert MAX_LINES == 10
    assert set(keys) - {"trainer/global_step", "epoch"} <= shown
    weight_norm = [p for s in sections(spec) if s["name"] == "Weight norms" for p in s["panels"]
                   if p["config"].get("chartTitle", "").startswith("weight norm per layer")]
    assert len(weight_norm) == 1
    drawn = weight_norm[0]["config"]["metrics"]
    layers = sorted(LAYERS)  # the layers in name order: conv1, fc, layer1.0, ..., layer3.2
    assert drawn[0] == "weight_norm/total" and drawn[1] == f"weight_norm/{layers[0]}"  # the total and the first
    assert drawn[-1] == f"weight_norm/{layers[-1]}" and len(drawn) == 10  # ... the last, layers between
    assert len(LAYERS) == 40 and len(set(LAYERS)) == 40
    assert "10 of 41" in weight_norm[0]["config"]["chartTitle"]


# -- axis titles in words ----------------------------------------------------------------------------------------


REGEX_CHARACTERS = set("^$|\\*+?()[]{}<>")


@pytest.mark.parametrize("keys", [None, "fit"])
def test_axis_titles_are_words(keys: str | None) -> None:
    keys = fit_keys() if keys else None
    spec = stable_spec(build_workspace("e", "p", keys=keys, sweep_group="g"))
    patterns = {family.pattern for family in FAMILIES} | {family.shown_as for family in FAMILIES}
    plots = [p for s in sections(spec) for p in s["panels"] if p["viewType"] == "Run History Line Plot"]
    assert len(plots) >= 10
    for panel in plots:
        config = panel["config"]
        for axis in ("xAxisTitle", "yAxisTitle"):
            title = config.get(axis, "")
            assert title and not (set(title) & REGEX_CHARACTERS), (config.get("chartTitle"), axis, title)
            assert title not in patterns and "/" not in title, (config.get("chartTitle"), axis, title)


def test_every_plotted_family_has_its_axis_words() -> None:
    from lightning_decay.dashboard.workspace import AXIS_WORDS

    plotted = {f.name for p in PANELS for f in panel_families(p) if f.kind in {"number", "histogram"}}
    assert plotted <= set(AXIS_WORDS), plotted - set(AXIS_WORDS)


# -- the dry run without the [dashboard] extra -------------------------------------------------------------------


WITHOUT_EXTRA = (
    "import sys; sys.modules['wandb_workspaces'] = None; "  # import wandb_workspaces -> ImportError
    "from lightning_decay.command import main; sys.exit(main(sys.argv[1:]))"
)


def run_without_extra(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRA, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_dry_run_writes_its_json_without_the_extra_and_a_real_save_names_it(tmp_path: Path) -> None:
    keys = tmp_path / "metrics.csv"
    keys.write_text(",".join(fit_keys()) + "\n" + ",".join("1" for _ in fit_keys()) + "\n")
    out = tmp_path / "view.json"
    done = run_without_extra("dashboard", "--entity", "e", "--project", "p", "--keys-from", str(keys),
                             "--dry-run", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "[dashboard]" in done.stdout and "nothing sent to W&B" in done.stdout
    outline = json.loads(out.read_text())
    assert outline["format"].startswith("lightning-decay dashboard outline")
    names = [section["name"] for section in outline["view"]["sections"]]
    assert names[:4] == ["Training", "Weight norms", "Effective decay", "Scale invariance"] and "Sweep" not in names
    # the outline holds the same sections and panel titles as the full specification (built here, with the extra)
    full = stable_spec(build_workspace("e", "p", keys=fit_keys()))
    assert names == [s["name"] for s in sections(full)]
    titles = [p.get("title") for s in outline["view"]["sections"] for p in s["panels"] if p.get("title")]
    assert titles == [r.title for r in panel_references(full) if r.view_type in {"Run History Line Plot",
                                                                                  "Media Browser"}]
    assert f"{len(panel_references(full))} panels" in done.stdout  # describes the same view

    report = run_without_extra("dashboard", "--report", str(REPO / "docs" / "results" / "adamw-vs-adamp"),
                               "--entity", "e", "--dry-run", str(tmp_path / "report.json"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert json.loads((tmp_path / "report.json").read_text())["view"]["type"] == "Report"

    save = run_without_extra("dashboard", "--entity", "e", "--project", "p", cwd=tmp_path)
    assert save.returncode == 2 and "needs the optional extra [dashboard]" in save.stderr, save.stderr
    assert "Traceback" not in save.stderr
