"""The ``lightning-decay`` command: every config in configs/ trains, --print_config round-trips, bad configs fail."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from lightning_decay.cli import run_cli
from lightning_decay.command import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
QUICKSTART = CONFIGS / "quickstart.yaml"
TINY = [
    "--trainer.max_steps=2",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
    '--trainer.logger={"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "logs"}}',
    "--data.init_args.data_dir=null",  # the embedded sample (the blog config points at the full data set)
    "--data.init_args.train_subset=40",
    "--data.init_args.test_subset=20",
    "--model.init_args.decay.warmup_steps=0",
    "--data.init_args.batch_size=8",
]


def lightning_configs() -> list[Path]:
    """Every LightningCLI config (grid files for ``lightning-decay sweep`` are tested in test_sweep)."""
    found = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        content = yaml.safe_load(path.read_text()) or {}
        if "grid" in content or "axes" in content or "variants" in content:
            continue
        found.append(path)
    return found


def config_args(path: Path) -> list[str]:
    content = yaml.safe_load(path.read_text()) or {}
    standalone = "class_path" in (content.get("model") or {})
    return (["--config", str(path)] if standalone else ["--config", str(QUICKSTART), "--config", str(path)]) + TINY


@pytest.mark.parametrize("path", lightning_configs(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_trains_two_steps(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cli = run_cli(["fit", *config_args(path)])
    assert cli.trainer.global_step == 2
    content = yaml.safe_load(path.read_text())
    decay = ((content.get("model") or {}).get("init_args") or {}).get("decay") or {}
    variant = decay.get("optimizer")
    if variant is not None:  # the variant file really selected its optimizer (on its kernel, if it names one)
        from lightning_decay.optim import on_kernel, resolve_variant
        from lightning_decay.optim.combined import CombinedOptimizer

        optimizer = cli.trainer.optimizers[0]
        optimizer = optimizer.parts[0] if isinstance(optimizer, CombinedOptimizer) else optimizer  # Muon + others
        expected = on_kernel(decay["kernel"], variant) if decay.get("kernel") else resolve_variant(variant)[0]
        assert isinstance(optimizer, expected)
    for parameter in cli.model.parameters():
        assert parameter.isfinite().all()


def test_quickstart_writes_logs_plot_and_wandb_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with_loggers = [arg for arg in TINY if not arg.startswith(("--trainer.logger", "--trainer.max_steps"))]
    main(["fit", "--config", str(QUICKSTART), *with_loggers, "--trainer.max_steps=12", "--trainer.log_every_n_steps=2"])
    printed = capsys.readouterr().out
    assert "diagnostics plot:" in printed and "W&B run (offline)" in printed
    plot = next(tmp_path.glob("outputs/quickstart/csv/version_*/diagnostics.png"))
    assert plot.stat().st_size > 10_000
    metrics = next(tmp_path.glob("outputs/quickstart/csv/version_*/metrics.csv")).read_text()
    assert "weight_norm/total" in metrics and "decay_factor/decay" in metrics
    assert list(tmp_path.glob("outputs/quickstart/wandb/offline-run-*/run-*.wandb"))


def run_cli_expecting_exit(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command in-process until it exits (``--print_config``, a parser error); returns (code, out, err)."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_print_config_round_trips(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, first, _ = run_cli_expecting_exit(
        capsys, "fit", "--config", str(QUICKSTART), "--config", str(CONFIGS / "proxadam.yaml"), "--print_config"
    )
    assert code == 0 and "optimizer: proxadam" in first
    (tmp_path / "printed.yaml").write_text(first)
    code, second, _ = run_cli_expecting_exit(capsys, "fit", "--config", "printed.yaml", "--print_config")
    assert code == 0 and second == first


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("--model.init_args.decay.optimizer=adamx", "adamx"),
        ("--model.init_args.decay.lr=-0.1", "lr"),
        ("--model.init_args.decay.wieght_decay=0.1", "wieght_decay"),
        ("--data.init_args.data_dir=/no/such/folder", "data_dir"),
        ("--model.init_args.loss_scale=0", "loss_scale"),
    ],
)
def test_bad_configs_fail_before_training_naming_the_key(override, named, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli_expecting_exit(
        capsys, "fit", "--config", str(QUICKSTART), override, "--trainer.max_steps=1"
    )
    assert code != 0
    assert named in err
    assert "Epoch 0" not in out + err  # nothing trained
    assert not list(tmp_path.rglob("metrics.csv")) and not list(tmp_path.rglob("*.ckpt"))


# --- the help, parse-time errors, the user's own modules -------------------------------------------------------------


def test_help_documents_every_decay_setting_and_lists_the_variants(monkeypatch, capsys):
    from dataclasses import fields

    from lightning_decay.integration import DecaySettings
    from lightning_decay.optim.registry import variant_names

    monkeypatch.setenv("COLUMNS", "1000")  # one line per key: no wrapping inside a variant name
    code, out, _ = run_cli_expecting_exit(capsys, "fit", "--model.help", "lightning_decay.experiments.ImageClassifier")
    assert code == 0
    lines = out.splitlines()
    helps = {}
    for index, line in enumerate(lines):
        if line.strip().startswith("--model.decay."):
            key = line.split()[0].removeprefix("--model.decay.")
            rest = " ".join(line.split()[2:]) if len(line.split()) > 2 else lines[index + 1].strip()
            helps[key] = rest
    for field in fields(DecaySettings):
        if field.name == "groups":  # a nested group: its own keys, under ParamGroupSettings' header
            continue
        assert not helps[field.name].startswith("(type:"), f"--model.decay.{field.name} has no help line"
    for name in variant_names():
        assert name in helps["optimizer"]
    assert "(type: str | null, default: null)" in helps["lr_scheduler_interval"]
    header = lines[next(i for i, line in enumerate(lines) if line.strip().startswith("--model.decay.optimizer")) - 1]
    assert header == "The decay optimizer and its lr schedule (model.decay); every key is checked before training:"


def test_misspelt_variant_is_a_short_parse_error(tmp_path, monkeypatch, capsys):
    """Before: a 59-line report (the whole usage, the union's subtypes, the parsed config dumped)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning-decay"])  # the program name in the usage line
    (tmp_path / "typo.yaml").write_text("model:\n  init_args:\n    decay:\n      optimizer: adam-p\n")
    code, out, err = run_cli_expecting_exit(capsys, "fit", "--config", str(QUICKSTART), "--config", "typo.yaml")
    assert code == 2
    from lightning_decay.optim.registry import variant_names

    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Seed set")]
    assert lines == [
        "usage: lightning-decay fit [-h] [-c CONFIG] [--print_config] [--KEY VALUE ...]",
        "tip: For details of accepted options run: lightning-decay fit --help",
        "error: model.init_args.decay.optimizer: unknown variant 'adam-p' (did you mean 'adamp'?); valid variants: "
        f"{', '.join(variant_names())}; or a dotted torch.optim.Optimizer class path",
    ]
    assert "Traceback" not in out + err and not list(tmp_path.rglob("metrics.csv"))


CONSOLE_SCRIPT = """import re
import sys

from lightning_decay.command import main

if __name__ == "__main__":  # what pip writes for [project.scripts] lightning-decay = "lightning_decay.command:main"
    sys.argv[0] = re.sub(r"(-script\\\\.pyw|\\\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""

USER_MODULE = """import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_decay import DecayMixin


class MyMLP(DecayMixin, LightningModule):
    def __init__(self, hidden: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.LayerNorm(hidden), nn.Linear(hidden, 2))

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        return nn.functional.cross_entropy(self.net(inputs), labels)


class MyData(LightningDataModule):
    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        inputs, labels = torch.randn(16, 4, generator=generator), torch.randint(0, 2, (16,), generator=generator)
        return DataLoader(TensorDataset(inputs, labels), batch_size=4)
"""


def test_console_script_finds_class_paths_in_the_current_folder(tmp_path):
    """The sweep's dry run prints ``lightning-decay fit --config base.yaml``: run as printed from the folder of the
    user's module it trains (before: ``No module named 'mymodel'``; ``python -m lightning_decay`` worked)."""
    import os
    import subprocess

    work, scripts = tmp_path / "work", tmp_path / "bin"
    work.mkdir()
    scripts.mkdir()
    (work / "mymodel.py").write_text(USER_MODULE)
    (work / "base.yaml").write_text(yaml.safe_dump({
        "model": {"class_path": "mymodel.MyMLP", "init_args": {"decay": {"optimizer": "proxadam", "lr": 0.01}}},
        "data": {"class_path": "mymodel.MyData"},
        "trainer": {"max_steps": 2, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                    "enable_model_summary": False},
    }))
    (scripts / "lightning-decay").write_text(CONSOLE_SCRIPT)  # sys.path[0] is the script's folder, not the cwd
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, str(scripts / "lightning-decay"), "fit", "--config", "base.yaml"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "MyMLP: ProxAdam (proxadam), paper convention" in output


def test_the_settings_help_lists_the_registry_variants() -> None:
    """DecaySettings' help lines (its docstring, written out, not rewritten at import) list exactly the registry's
    variants in each class: every name, the torch and paper conventions, L2, elementwise, Muon."""
    import re

    from lightning_decay.integration.settings import DecaySettings
    from lightning_decay.optim.registry import REGISTRY

    text = " ".join(DecaySettings.__doc__.split())

    def listed(before: str, after: str) -> list[str]:
        return re.search(re.escape(before) + r"(.*?)" + re.escape(after), text).group(1).replace(",", " ").split()

    def names(keep) -> list[str]:
        return [name for name, info in REGISTRY.items() if keep(info)]

    assert listed("the weight-decay variant: ", " (adamw is") == list(REGISTRY)
    assert listed("decay lr_t*wd per step for ", ";") == names(lambda i: i.decoupled and not i.rule.per_unit_lr)
    assert listed("eta_t*wd for ", ";") == names(lambda i: i.decoupled and i.rule.per_unit_lr)
    assert listed("in the gradient for ", ".") == names(lambda i: not i.decoupled)
    assert listed("not the elementwise ", ")") == names(lambda i: i.elementwise)
    assert listed("with a Muon variant (", ", which") == names(lambda i: i.family == "muon")
