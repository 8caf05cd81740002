"""Weight-decay conventions and EMA timescales: closed forms, round trips, and the optimizers' actual decay."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_decay.optim import VARIANTS, AdamP, AdamW, resolve_variant
from lightning_decay.optim.conventions import (
    convert_weight_decay,
    decay_rule_of,
    epochs_to_steps,
    paper_to_torch,
    steps_to_epochs,
    timescale_epochs,
    timescale_steps,
    torch_to_paper,
    weight_decay_for_timescale,
    weight_decay_for_timescale_epochs,
)


def has_timescale(variant: str) -> bool:
    try:
        timescale_steps(0.01, 1e-3, variant)
    except ValueError:
        return False
    return True


TIMESCALE_VARIANTS = [name for name in VARIANTS if has_timescale(name)]
lrs = st.floats(1e-5, 1.0)
taus = st.floats(1.5, 1e7)


def test_the_expected_variants_have_a_timescale() -> None:
    assert {"adamw", "adamw-paper", "proxadam"} <= set(TIMESCALE_VARIANTS)
    assert "adaml2" not in TIMESCALE_VARIANTS and "adamp" not in TIMESCALE_VARIANTS


def test_blog_example_same_number_two_conventions() -> None:
    """wd = 0.01 at alpha = 1e-3: torch decays by 1e-5 per step (timescale 100k steps), the paper by 1e-2
    (100 steps); the torch-convention value with the paper's decay is 10."""
    assert timescale_steps(0.01, 1e-3, "adamw") == pytest.approx(1e5, rel=1e-9)
    assert timescale_steps(0.01, 1e-3, "adamw-paper") == pytest.approx(100.0, rel=1e-12)
    assert paper_to_torch(0.01, 1e-3) == pytest.approx(10.0)
    assert torch_to_paper(10.0, 1e-3) == pytest.approx(0.01)
    assert convert_weight_decay(0.01, 1e-3, "adamw-paper", "adamw") == pytest.approx(10.0, rel=1e-9)


def test_wang_aitchison_epochs() -> None:
    """tau_iter = 1/(lr*wd) = 1/(1e-3 * 0.1) = 10,000 steps; at 391 steps per epoch (CIFAR-10, batch 128) that is
    25.58 epochs, and back."""
    assert timescale_steps(0.1, 1e-3) == pytest.approx(10_000.0, rel=1e-9)
    assert timescale_epochs(0.1, 1e-3, 391) == pytest.approx(10_000 / 391, rel=1e-9)
    assert weight_decay_for_timescale_epochs(10_000 / 391, 1e-3, 391) == pytest.approx(0.1, rel=1e-12)
    assert steps_to_epochs(782, 391) == 2.0 and epochs_to_steps(2.0, 391) == 782.0


@settings(max_examples=60, deadline=None)
@given(wd=st.just(0.0) | st.floats(1e-12, 1e3), lr=lrs)
def test_torch_paper_round_trip(wd: float, lr: float) -> None:
    assert torch_to_paper(wd, lr) == lr * wd
    assert paper_to_torch(torch_to_paper(wd, lr), lr) == pytest.approx(wd, rel=1e-12, abs=0.0)


@settings(max_examples=60, deadline=None)
@given(tau=taus, lr=lrs)
def test_closed_forms_of_the_inverse(tau: float, lr: float) -> None:
    """The rule-based inverse matches the closed forms: torch 1/(lr tau), paper 1/tau, proximal 1/(tau - 1)."""
    assert weight_decay_for_timescale(tau, lr, "adamw") == pytest.approx(1.0 / (lr * tau), rel=1e-9)
    assert weight_decay_for_timescale(tau, lr, "adamw-paper") == pytest.approx(1.0 / tau, rel=1e-9)
    assert weight_decay_for_timescale(tau, lr, "proxadam") == pytest.approx(1.0 / (tau - 1.0), rel=1e-9)


@pytest.mark.parametrize("variant", TIMESCALE_VARIANTS)
@settings(max_examples=25, deadline=None)
@given(tau=taus, lr=st.floats(1e-4, 1e-1))
def test_timescale_round_trip_every_variant(variant: str, tau: float, lr: float) -> None:
    weight_decay = weight_decay_for_timescale(tau, lr, variant)
    assert timescale_steps(weight_decay, lr, variant) == pytest.approx(tau, rel=1e-8)


@pytest.mark.parametrize("variant", TIMESCALE_VARIANTS)
def test_timescale_is_what_the_optimizer_does(variant: str) -> None:
    """With zero gradients only the decay acts: after n steps the weights are ``w0 * (1 - 1/tau)^n``."""
    lr, tau, steps = 1e-2, 40.0, 60
    weight_decay = weight_decay_for_timescale(tau, lr, variant)
    cls, fixed = resolve_variant(variant)
    if "fused" in inspect.signature(cls).parameters:
        fixed = {**fixed, "fused": False}  # no compiled kernel (seconds to build) for this check
    w = torch.nn.Parameter(torch.linspace(-2.0, 3.0, 14, dtype=torch.float64).reshape(7, 2))  # a matrix: Muon too
    w0 = w.detach().clone()
    optimizer = cls([w], lr=lr, weight_decay=weight_decay, **fixed)
    for _ in range(steps):
        w.grad = torch.zeros_like(w)
        optimizer.step()
    torch.testing.assert_close(w.detach(), w0 * (1.0 - 1.0 / tau) ** steps, rtol=1e-9, atol=0.0)
    assert (1.0 - 1.0 / tau) ** steps == pytest.approx(math.exp(-steps / tau), rel=0.02)


def test_convert_between_variants_keeps_the_timescale() -> None:
    lr = 3e-4
    assert convert_weight_decay(0.05, lr, "adamw", "adamw-paper") == pytest.approx(torch_to_paper(0.05, lr), rel=1e-9)
    prox = convert_weight_decay(0.05, lr, "adamw", "proxadam")
    assert timescale_steps(prox, lr, "proxadam") == pytest.approx(timescale_steps(0.05, lr, "adamw"), rel=1e-8)


def test_rules_of_names_classes_and_instances_agree() -> None:
    w = [torch.nn.Parameter(torch.zeros(2))]
    assert type(decay_rule_of("adamw-paper")) is type(AdamW(w, convention="paper").decay_rule)
    assert type(decay_rule_of(AdamW)) is type(decay_rule_of("adamw"))
    assert decay_rule_of(AdamP(w, fused=False)).name == "adamp"
    # One lookup for the package (the monitors use the same): torch's optimizers map to the rule they implement.
    assert decay_rule_of(torch.optim.AdamW(w)).name == "adamw"
    assert decay_rule_of(torch.optim.SGD(w, lr=0.1)).name == "sgd-l2"
    assert decay_rule_of(torch.optim.Adam).name == "adaml2"
    with pytest.raises(ValueError, match="RMSprop has no decay rule"):
        decay_rule_of(torch.optim.RMSprop(w, lr=0.1))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: timescale_steps(0.1, 1e-3, "adaml2"), ValueError, "'adaml2' has no decay timescale.*gradient"),
        (lambda: timescale_steps(0.1, 1e-3, "adamp"), ValueError, "'adamp' has no decay timescale.*elementwise"),
        (lambda: weight_decay_for_timescale(100.0, 1e-3, "adaml2"), ValueError, "'adaml2' has no decay timescale"),
        (lambda: weight_decay_for_timescale(0.0, 1e-3), ValueError, "decay timescale must be a number > 0"),
        (lambda: weight_decay_for_timescale(1.0, 1e-3), ValueError, "decay timescale must be > 1 step"),
        (lambda: weight_decay_for_timescale_epochs(0.0, 1e-3, 100), ValueError, r"decay timescale \(epochs\)"),
        (lambda: weight_decay_for_timescale(10.0, -1e-3), ValueError, "lr must be a finite number > 0"),
        (lambda: timescale_steps(-0.1, 1e-3), ValueError, "weight_decay must be a finite number >= 0"),
        (lambda: torch_to_paper(0.1, 0.0), ValueError, "lr must be a finite number > 0"),
        (lambda: steps_to_epochs(10, 0), ValueError, "steps_per_epoch must be a finite number > 0"),
        (lambda: timescale_steps("0.1", 1e-3), TypeError, "weight_decay must be a real number"),
        (lambda: timescale_steps(0.1, 1e-3, "adamx"), ValueError, "valid variants: " + ", ".join(VARIANTS)),
    ],
)
def test_bad_input_is_named(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


def test_infinite_timescale_means_no_decay() -> None:
    assert weight_decay_for_timescale(math.inf, 1e-3) == 0.0
    assert timescale_steps(0.0, 1e-3, "adamw") == math.inf
