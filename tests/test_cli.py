"""The ``lightning-decay`` command: every config in configs/ trains, --print_config round-trips, bad configs fail."""

from __future__ import annotations

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
    variant = (((content.get("model") or {}).get("init_args") or {}).get("decay") or {}).get("optimizer")
    if variant is not None:  # the variant file really selected its optimizer
        from lightning_decay.optim import resolve_variant

        assert isinstance(cli.trainer.optimizers[0], resolve_variant(variant)[0])
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
