"""Fuzzed input (hypothesis): the optimizers' constructor arguments, the factory, and the CLI's config values.

Every rejection must be a ``ValueError``/``TypeError`` (for the CLI: a parser error, exit code 2) whose message
names an argument that was given; settings from the sensible ranges must train a few steps without an error or a
NaN. An accepted but absurd value (``lr=1e30``) may diverge, as with torch's optimizers; through the CLI it must then
stop with the non-finite guard's error naming a parameter, never leave NaN weights. Values above float32's largest
are rejected. The draws are the same on every run (``tests/conftest.py``; ``HYPOTHESIS_PROFILE=explore`` for fresh
ones).

Values are drawn mostly from each argument's sensible range, mixed with junk (NaN, inf, negatives, huge numbers,
bools, strings, None, lists). Accepted settings train with a bounded lr (Adam moves each weight by about ``lr`` per
step; SGD's growth is bounded by ``lr``, ``weight_decay`` and the momentum), so "no NaN" is a fair demand.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_decay.integration import build_lr_scheduler, build_optimizer_config
from lightning_decay.integration.guards import NonFiniteGradientError
from lightning_decay.optim import VARIANTS
from tests.test_resume import single_thread  # noqa: F401 - autouse fixture
from tests.variant_lists import ANY_TENSOR

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: How each argument is drawn: left out, from its sensible range, or junk (about one in five).
KINDS = ["omit", "valid", "valid", "valid", "junk"]

JUNK = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -1e-3, 1e30, -5, 0, 2, True, False, None, "0.1", "x", []]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 3),
    st.text(max_size=3),
)

#: The sensible range of each argument (where training a few steps must stay finite).
VALID: dict[str, st.SearchStrategy] = {
    "lr": st.floats(1e-6, 0.5),
    "weight_decay": st.one_of(st.just(0.0), st.floats(1e-6, 1.0)),
    "eps": st.one_of(st.floats(1e-12, 1e-3), st.just(1e-8)),
    "betas": st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999)),
    "amsgrad": st.booleans(),
    "maximize": st.just(False),
    "momentum": st.floats(0.0, 0.95),
    "dampening": st.floats(0.0, 1.0),
    "nesterov": st.booleans(),
    "convention": st.sampled_from(["torch", "paper"]),
    "normalized": st.booleans(),
    "lr_max": st.one_of(st.none(), st.floats(1e-3, 1.0)),
    "foreach": st.sampled_from([None, True, False]),
    "fused": st.sampled_from([None, True, False]),
}


class Drawn(dict):
    """Drawn arguments; ``junk`` names those drawn from :data:`JUNK`."""

    junk: frozenset[str] = frozenset()


@st.composite
def arguments(draw: st.DrawFn, names: list[str]) -> Drawn:
    """Each name omitted, valid, or junk."""
    out, junk = Drawn(), set()
    for name in names:
        kind = draw(st.sampled_from(KINDS))
        if kind == "valid":
            out[name] = draw(VALID[name])
        elif kind == "junk":
            out[name] = draw(JUNK)
            junk.add(name)
    out.junk = frozenset(junk)
    return out


def assert_names_an_argument(error: BaseException, given: dict[str, Any], missing: tuple[str, ...] = ()) -> None:
    """A ValueError/TypeError naming one of the ``given`` arguments (or one of ``missing``: arguments that were not
    given and that the given ones require, e.g. ``total_steps`` for a cosine schedule without a trainer)."""
    assert isinstance(error, (ValueError, TypeError)), f"{type(error).__name__}: {error}"
    message = str(error)
    candidates = list(given) + [name for name in missing if name not in given]
    named = [name for name in candidates if re.search(rf"(?<![A-Za-z_]){re.escape(name)}(?![A-Za-z])", message)]
    assert named, f"{type(error).__name__}({message!r}) names none of {sorted(candidates)}"


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any = None, steps: int = 3) -> None:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=generator), torch.randn(16, 3, generator=generator)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        assert math.isfinite(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def constructor_names(cls: type) -> list[str]:
    return [name for name in inspect.signature(cls).parameters if name in VALID]


def compiled(cls: type) -> bool:
    """Classes whose ``fused`` path is a ``torch.compile``'d kernel (seconds to build): fuzzed eagerly."""
    return not issubclass(cls, torch.optim.Adam)


@FUZZ
@given(data=st.data(), variant=st.sampled_from(sorted(ANY_TENSOR)))
def test_optimizer_constructors(data: st.DataObject, variant: str) -> None:
    cls, fixed = VARIANTS[variant]
    names = [n for n in constructor_names(cls) if n not in fixed]
    given_args = data.draw(arguments(names), label="arguments")
    kwargs = dict(fixed, **given_args)
    both = kwargs.get("fused") is True and kwargs.get("foreach") is True  # a ValueError naming both, before any step
    if both:
        event("fused and foreach")
    elif compiled(cls):
        kwargs["fused"] = False  # the same step eagerly (foreach as drawn): no compile in a fuzz
    model = tiny_model()
    try:
        optimizer = cls(model.parameters(), **kwargs)
    except Exception as error:  # noqa: BLE001 - the assertion checks the type
        event("rejected")
        assert_names_an_argument(error, given_args)
        return
    event("accepted")
    try:
        train_steps(model, optimizer)
    except AssertionError:
        if not given_args.junk:
            raise  # settings from the sensible ranges must train cleanly
        # an accepted but absurd value (lr 1e30: weights of 1e30, a squared loss past float32) may diverge, as with
        # torch's optimizers; under Lightning the non-finite guard turns that into an error (test_cli_config_values)
        event("accepted junk, diverged")
    except Exception as error:  # noqa: BLE001 - an accepted setting may only fail at the step with a clear error
        pytest.fail(f"{variant}({kwargs}) was accepted but its step raised {type(error).__name__}: {error}")


@pytest.mark.parametrize(
    ("variant", "flags"),
    [
        # torch.optim.AdamW(fused=True) accepts these two; its kernel raises a TypeError naming no argument at the
        # first step
        ("adamw", {"amsgrad": "yes"}),
        ("proxadam", {"maximize": 2}),
        # torch's Adam and SGD accept these as truthy: they silently maximize the loss
        ("adamp", {"maximize": math.nan, "fused": False}),
        ("sgdw", {"maximize": "no", "momentum": 0.9}),
    ],
)
def test_non_bool_flags_are_rejected(variant: str, flags: dict[str, Any]) -> None:
    """Non-bool flags are rejected at construction with a TypeError naming them (torch itself does not check)."""
    cls, fixed = VARIANTS[variant]
    with pytest.raises(TypeError, match=next(iter(flags))):
        cls(tiny_model().parameters(), **fixed, **flags)


@pytest.mark.parametrize("variant", sorted(ANY_TENSOR))
def test_fused_and_foreach_together_are_rejected(variant: str) -> None:
    """``fused=True`` with ``foreach=True``: a ValueError naming both, at construction (torch's own optimizers raise
    a RuntimeError), for every variant -- the compiled ones too, before anything compiles."""
    cls, fixed = VARIANTS[variant]
    with pytest.raises(ValueError, match=r"^fused and foreach cannot both be True"):
        cls(tiny_model().parameters(), **fixed, fused=True, foreach=True)


FACTORY_NAMES = ["lr", "weight_decay", "schedule", "warmup_steps", "warmup_ratio", "total_steps", "min_lr_ratio",
                 "decay_timescale_epochs", "steps_per_epoch"]
FACTORY_VALID: dict[str, st.SearchStrategy] = {
    "schedule": st.sampled_from(["cosine", "linear", "constant"]),
    "warmup_steps": st.integers(0, 3),
    "warmup_ratio": st.one_of(st.just(0.0), st.floats(0.0, 0.5)),
    "total_steps": st.integers(4, 50),
    "min_lr_ratio": st.floats(0.0, 1.0),
    "decay_timescale_epochs": st.floats(0.5, 100.0),
    "steps_per_epoch": st.integers(1, 100),
}


@FUZZ
@given(data=st.data(), variant=st.sampled_from(sorted(ANY_TENSOR)))
def test_factory(data: st.DataObject, variant: str) -> None:
    given_args: dict[str, Any] = {}
    for name in FACTORY_NAMES:
        kind = data.draw(st.sampled_from(KINDS), label=f"{name} kind")
        if kind != "omit":
            strategy = FACTORY_VALID[name] if name in FACTORY_VALID else VALID[name]
            given_args[name] = data.draw(strategy if kind == "valid" else JUNK, label=name)
    cls, _ = VARIANTS[variant]
    options = {"fused": False} if compiled(cls) else {}
    model = tiny_model()
    try:
        config = build_optimizer_config(model, variant, optimizer_kwargs=options, **given_args)
    except Exception as error:  # noqa: BLE001 - the assertion checks the type
        event(f"rejected: {str(error)[:40]}")
        given_args["optimizer"] = variant
        assert_names_an_argument(error, given_args, missing=("total_steps", "steps_per_epoch"))
        return
    event("accepted")
    scheduler = config["lr_scheduler"]["scheduler"]
    try:
        train_steps(model, config["optimizer"], scheduler, steps=4)
    except AssertionError:
        raise
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"{variant} {given_args} was accepted but training raised {type(error).__name__}: {error}")


SCHEDULER_VALID: dict[str, st.SearchStrategy] = {
    "schedule": st.sampled_from(["cosine", "linear", "constant"]),
    "warmup_steps": st.integers(0, 5),
    "warmup_ratio": st.floats(0.0, 0.5),
    "total_steps": st.integers(1, 20),
    "min_lr_ratio": st.floats(0.0, 1.0),
}


@FUZZ
@given(data=st.data())
def test_lr_scheduler(data: st.DataObject) -> None:
    given_args: dict[str, Any] = {}
    for name, valid in SCHEDULER_VALID.items():
        kind = data.draw(st.sampled_from(KINDS), label=f"{name} kind")
        if kind != "omit":
            given_args[name] = data.draw(valid if kind == "valid" else JUNK, label=name)
    total_steps = given_args.get("total_steps")
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    try:
        scheduler = build_lr_scheduler(optimizer, **given_args)
    except Exception as error:  # noqa: BLE001
        event("rejected")
        assert_names_an_argument(error, given_args, missing=("total_steps",))
        return
    event("accepted")
    steps = total_steps + 2 if isinstance(total_steps, int) else 6
    train_steps(model, optimizer, scheduler, steps=steps)
    assert all(math.isfinite(g["lr"]) and g["lr"] >= 0 for g in optimizer.param_groups)


# --------------------------------------------------------------------------------------------------------------
# The CLI: config values through LightningCLI, then a real fit of 2 steps when accepted
# --------------------------------------------------------------------------------------------------------------

CLI_VALID: dict[str, st.SearchStrategy] = {
    "model.init_args.decay.optimizer": st.sampled_from(sorted(ANY_TENSOR)),
    "model.init_args.decay.lr": st.floats(1e-5, 0.05),
    "model.init_args.decay.weight_decay": st.floats(0.0, 0.5),
    "model.init_args.decay.warmup_steps": st.integers(0, 4),  # > 1: longer than the 2-step run, shortened
    "model.init_args.decay.schedule": st.sampled_from(["cosine", "linear", "constant"]),
    "model.init_args.decay.min_lr_ratio": st.floats(0.0, 1.0),
    "model.init_args.decay.nonfinite_grads": st.sampled_from(["raise", "skip", "off"]),
    "model.init_args.loss_scale": st.floats(1e-2, 1e2),  # SGD is not scale-free: lr * loss_scale stays sane
    "data.init_args.batch_size": st.integers(1, 16),
}
CLI_JUNK = st.one_of(
    st.sampled_from(["nan", "inf", "-1", "-0.5", "0", "abc", "null", "true", "[1]", "1e40", "adamx"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-3, 3).map(str),
)


def write_base(folder: Path, data_dir: Path) -> Path:
    config = {
        "seed_everything": 0,
        "model": {"class_path": "lightning_decay.experiments.ImageClassifier",
                  "init_args": {"architecture": "small_cnn", "channels_last": False}},
        "data": {"class_path": "lightning_decay.experiments.CIFAR10DataModule",
                 "init_args": {"data_dir": str(data_dir), "augment": False}},
        "trainer": {"max_steps": 2, "accelerator": "cpu", "devices": 1, "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "num_sanity_val_steps": 0, "limit_val_batches": 0, "default_root_dir": str(folder)},
    }
    path = folder / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def cli_base(tmp_path_factory: pytest.TempPathFactory, cifar_jpeg_dir: Path) -> Path:
    return write_base(tmp_path_factory.mktemp("cli_fuzz"), cifar_jpeg_dir)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cli_config_values(data: st.DataObject, cli_base: Path) -> None:
    from lightning_decay.cli import run_cli

    given_args: dict[str, str] = {}
    junk = False
    for key, valid in CLI_VALID.items():
        kind = data.draw(st.sampled_from(["omit", *KINDS]), label=f"{key} kind")
        if kind == "valid":
            value = data.draw(valid, label=key)
            given_args[key] = value if isinstance(value, str) else repr(value)
        elif kind == "junk":
            given_args[key] = data.draw(CLI_JUNK, label=key)
            junk = True
    argv = ["fit", "--config", str(cli_base)]
    argv += [f"--{key}={value}" for key, value in given_args.items()]  # "=": values like "-1e+16" stay values
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            cli = run_cli(argv)
    except SystemExit as exit_:
        event("rejected")
        message = stderr.getvalue()
        assert exit_.code == 2, message[-2000:]
        named = [key for key in given_args if key.rsplit(".", 1)[-1] in message]
        assert named, f"the parser error names none of {sorted(given_args)}: {message[-1500:]}"
        return
    except (ValueError, TypeError) as error:
        # a setting checked only once the fit starts (against the trainer, or at the first step) must name the setting
        # (a warmup longer than the run is not such an error: it is shortened with a warning)
        event("rejected at fit start")
        named = [key for key in given_args if key.rsplit(".", 1)[-1] in str(error)]
        assert named, f"{type(error).__name__}({error}) names none of {sorted(given_args)}"
        return
    except NonFiniteGradientError as error:
        event("accepted, diverged")
        # an accepted but absurd value (lr 1e40, loss_scale 1e40) diverges: never into silent NaN weights, into the
        # guard's error naming the parameter; settings from the sensible ranges must train cleanly
        assert junk, f"sensible settings {given_args} diverged: {error}"
        assert "in parameter 'network." in str(error)
        return
    event("accepted")
    trainer, model = cli.trainer, cli.model
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_settings_beyond_float32_are_rejected(cli_base: Path) -> None:
    """Cases hypothesis found: ``lr=1e40`` with ``nonfinite_grads=skip`` was accepted, and its first step (an lr
    that is inf in float32) made every weight inf, which the gradient guard cannot see. Settings above float32's
    largest value are now rejected, by the optimizers and by the CLI's parser, naming the setting."""
    from lightning_decay.cli import run_cli

    for variant in ("adamw", "adamp", "sgdw"):
        cls, fixed = VARIANTS[variant]
        with pytest.raises(ValueError, match=r"^lr must be a finite number >= 0 and at most 3\.403e\+38"):
            cls(tiny_model().parameters(), **fixed, lr=1e40)
    argv = ["fit", "--config", str(cli_base), "--model.init_args.decay.lr=1e40",
            "--model.init_args.decay.nonfinite_grads=skip"]
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_, contextlib.redirect_stderr(stderr):
        with contextlib.redirect_stdout(io.StringIO()):
            run_cli(argv)
    assert exit_.value.code == 2 and "lr" in stderr.getvalue()
