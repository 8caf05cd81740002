"""Every script in ``examples/`` runs in its tiny mode and prints what it is meant to show.

The scripts are found by a glob (``examples/*.py``), so a new example is covered without touching this file: it must
have a module docstring saying how to run it, and must exit 0 with ``LIGHTNING_DECAY_EXAMPLE_TINY=1`` (plus the
arguments in :data:`ARGUMENTS`, if it needs some). Outputs go under pytest's ``tmp_path``
(``LIGHTNING_DECAY_EXAMPLE_OUTPUT``), never into the repository. The known examples get their output checked by a
function in :data:`CHECKS`.

The examples are mostly process start-up (importing torch and Lightning takes seconds), so all of them are started
at once, one thread each, when the first test needs them and overlap on the cores; under pytest-xdist each test
starts its own.
"""

from __future__ import annotations

import ast
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
TIMEOUT_S = 600

#: Extra command-line arguments of an example's tiny run (given its output folder); the others take none.
ARGUMENTS: dict[str, Callable[[Path], list[str]]] = {
    "own_cli.py": lambda output: [
        "fit", "--config", "examples/own_cli.yaml", "--trainer.max_steps=5", "--data.samples=512",
        f"--trainer.default_root_dir={output}", f"--trainer.logger.init_args.save_dir={output}",
        "--trainer.enable_progress_bar=false",
    ],
}


@dataclass
class Run:
    """One example's process; its stdout and stderr go to ``log``."""

    process: subprocess.Popen[bytes]
    log: Path
    output: Path

    def wait(self) -> tuple[int, str]:
        """The exit code and everything the script printed."""
        try:
            code = self.process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            code = self.process.wait()
        return code, self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Kill the example and what it started (its own process group), if it still runs."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start(script: Path, folder: Path) -> Run:
    output = folder / script.stem
    output.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "LIGHTNING_DECAY_EXAMPLE_TINY": "1",
        "LIGHTNING_DECAY_EXAMPLE_OUTPUT": str(output),
        "WANDB_MODE": "offline",
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ inside examples/
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",  # tiny models: one thread each is fastest, and the examples share the cores
    }
    arguments = ARGUMENTS.get(script.name, lambda _: [])(output)
    log = folder / f"{script.stem}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, str(script.relative_to(REPO)), *arguments], cwd=REPO, env=environment, stdout=sink,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Run(process, log, output)


def example_files() -> set[Path]:
    return {path for path in (REPO / "examples").rglob("*") if "__pycache__" not in path.parts}


@dataclass
class Examples:
    """The examples' runs (by script name), their output folder and the files of ``examples/`` before them."""

    folder: Path
    runs: dict[str, Run]
    files_before: set[Path]

    def run(self, script: Path) -> Run:
        if script.name not in self.runs:
            self.runs[script.name] = start(script, self.folder)
        return self.runs[script.name]


@pytest.fixture(scope="module")
def examples(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Examples]:
    """The selected examples started at once (one process each), or, under pytest-xdist, each when its test asks."""
    started = Examples(tmp_path_factory.mktemp("examples"), {}, example_files())
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        for item in request.session.items:
            if getattr(item, "originalname", None) == test_example_runs_in_tiny_mode.__name__:
                started.run(item.callspec.params["script"])
    yield started
    for run in started.runs.values():
        run.stop()


# --------------------------------------------------------------------------------------------------------------
# What each known example must print or write
# --------------------------------------------------------------------------------------------------------------

NUMBER = r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"


def check_plain_pytorch(printed: str, output: Path) -> None:
    rows = {}
    for name in ("no decay (reference)", "AdamW, paper convention", "ProxAdam", "AdamP"):
        match = re.search(rf"^{re.escape(name)}\s+" + r"\s+".join([NUMBER] * 5) + r"\s*$", printed, re.MULTILINE)
        assert match, f"no row of final loss and weight norms for {name}"
        rows[name] = [float(value) for value in match.groups()]
        assert all(math.isfinite(value) and value > 0 for value in rows[name])
    for name in ("AdamW, paper convention", "ProxAdam", "AdamP"):  # weight decay shrinks the total norm
        assert rows[name][-1] < rows["no decay (reference)"][-1], name


def parameter_groups(printed: str) -> dict[str, tuple[float, list[str]]]:
    """``group -> (weight decay, member lines)`` from the listing ``mixin_transformer.py`` prints."""
    lines = printed[printed.index("parameter groups chosen by DecayMixin:") :].splitlines()[1:]
    groups: dict[str, tuple[float, list[str]]] = {}
    for line in lines:
        header = re.match(rf"^  (\w+) \(weight_decay={NUMBER}\): \d+ tensors$", line)
        if header:
            members: list[str] = []
            groups[header.group(1)] = (float(header.group(2)), members)
        elif line.startswith("    ") and groups:
            members.append(line.strip())
        else:
            break
    return groups


def check_mixin_transformer(printed: str, output: Path) -> None:
    groups = parameter_groups(printed)
    assert set(groups) == {"decay", "no_decay"}
    assert groups["decay"][0] == 0.1 and groups["no_decay"][0] == 0.0
    decay, no_decay = groups["decay"][1], groups["no_decay"][1]
    layer_norms = [line for line in decay + no_decay if "[LayerNorm]" in line]
    assert len(layer_norms) == 10 and all(line in no_decay for line in layer_norms)  # 2 per block x 2, final 2
    assert all(line in no_decay for line in decay + no_decay if line.split(" ")[0].endswith("bias"))
    tied = [line for line in decay + no_decay if "head.weight" in line]
    assert tied == ["embedding.weight [Embedding] = head.weight [Linear]  (tied: one tensor, listed once)"]
    assert tied[0] in decay
    for key in ("train/loss", "weight_norm/total", "decay_factor/decay", "scale_invariance/angular_update/"):
        assert re.search(rf"^  {re.escape(key)}\S*\s+{NUMBER}$", printed, re.MULTILINE), key
    assert "scale-invariant layers (numerical check):" in printed
    metrics = list(output.glob("mixin_transformer/csv/version_*/metrics.csv"))
    assert metrics and "weight_norm/total" in metrics[0].read_text()


def check_own_cli(printed: str, output: Path) -> None:
    trained = r"trained adamw-paper \(lr 0.003, weight_decay 0.0001\) for 5 steps"
    match = re.search(rf"{trained}: train/loss {NUMBER}", printed)
    assert match and math.isfinite(float(match.group(1)))
    assert "decay: 2 tensors" in printed and "no_decay: 4 tensors" in printed  # the mixin's report of its groups
    config = next(output.glob("csv/version_*/config.yaml")).read_text()
    assert "optimizer: adamw-paper" in config and "weight_decay: 0.0001" in config


def check_factory_only(printed: str, output: Path) -> None:
    assert "optimizer ProxAdam with groups:" in printed
    assert re.search(r"^    head\s+lr=0.0003\s+weight_decay=0.001\s+\(8, 128\)$", printed, re.MULTILINE)
    assert re.search(r"^    no_decay\s+lr=0.003\s+weight_decay=0\s", printed, re.MULTILINE)
    assert "lr_scheduler LambdaLR, stepped every step" in printed
    assert re.search(rf"val/acc {NUMBER}", printed)
    assert list(output.glob("factory_only/csv/version_*/metrics.csv"))


def check_conventions(printed: str, output: Path) -> None:
    assert "AdamW lr 0.001 wd 0.05 at 391 steps/epoch = 51.2 epochs (20,000 steps" in printed
    assert "paper convention: wd 5e-05 for the same decay; wd 0.05 read as paper convention = 20 steps" in printed
    match = re.search(rf"^   adamw-paper\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", printed, re.MULTILINE)
    assert match
    weight_decay, back, converted = (float(value) for value in match.groups())
    assert math.isclose(weight_decay, 1 / (10 * 391), rel_tol=1e-5) and back == 10 and converted == weight_decay


def check_small_sweep(printed: str, output: Path) -> None:
    folder = output / "small_sweep_tiny"
    assert "4/4 cells finished" in printed
    for name in ("heatmap_accuracy.png", "heatmap_norm.png", "norm_curves.png"):
        picture = folder / name
        assert f"  {picture}" in printed
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
    assert (folder / "results.csv").read_text().count("\nadamw__") == 4


CHECKS: dict[str, Callable[[str, Path], None]] = {
    "plain_pytorch.py": check_plain_pytorch,
    "mixin_transformer.py": check_mixin_transformer,
    "own_cli.py": check_own_cli,
    "factory_only.py": check_factory_only,
    "conventions.py": check_conventions,
    "small_sweep.py": check_small_sweep,
}


# --------------------------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------------------------


def test_examples_are_found() -> None:
    assert {script.name for script in EXAMPLES} >= set(CHECKS)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda script: script.name)
def test_example_has_a_docstring_saying_how_to_run_it(script: Path) -> None:
    docstring = ast.get_docstring(ast.parse(script.read_text()))
    assert docstring, f"{script.name} has no module docstring"
    assert f"python examples/{script.name}" in docstring, f"{script.name}'s docstring does not say how to run it"
    assert 'if __name__ == "__main__":' in script.read_text()


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda script: script.name)
def test_example_runs_in_tiny_mode(script: Path, examples: Examples) -> None:
    run = examples.run(script)
    code, printed = run.wait()
    assert code == 0, f"{script.name} exited with {code}:\n{printed[-6000:]}"
    assert printed.strip()
    assert example_files() == examples.files_before, "an example wrote into examples/"
    if script.name in CHECKS:
        try:
            CHECKS[script.name](printed, run.output)
        except (AssertionError, ValueError, StopIteration) as error:
            raise AssertionError(f"{script.name}: {error!r}\n{printed[-6000:]}") from error
