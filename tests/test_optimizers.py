"""The blog's five Adam variants against an independent float64 reference, and AdamW against torch's AdamW.

The contract every variant keeps (closures, state dicts, GradScaler, named errors) is in test_optimizer_contract.py.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from lightning_decay import AdamW, resolve_variant
from tests import trajectory
from tests.reference import ReferenceState, reference_step
from tests.trajectory import max_relative_error

# The blog's five; the later variants are tested in test_optimizers_extra.py and test_sgd.py.
ALL_VARIANTS = ["adaml2", "adamw", "adamw-paper", "proxadam", "adamp"]
# Three groups with different lr and weight decay (one without decay); shapes include a matrix and a scalar.
GROUPS = [
    {"shapes": [(7, 5), (5,)], "lr": 3e-3, "weight_decay": 0.5},
    {"shapes": [(4, 3, 2)], "lr": 1e-3, "weight_decay": 0.0},
    {"shapes": [(11,), ()], "lr": 2e-3, "weight_decay": 0.05},
]
STEPS = 120


def initial_weights() -> list[list[torch.Tensor]]:
    return trajectory.initial_weights(GROUPS)


def make_optimizer(variant: str, params: list[list[torch.Tensor]], **options):
    cls, fixed = resolve_variant(variant)
    groups = [{"params": p, "lr": g["lr"], "weight_decay": g["weight_decay"]} for p, g in zip(params, GROUPS)]
    return cls(groups, **fixed, **options)


def run_optimizer(variant, scheduled, scale=1.0, eps=1e-8, steps=STEPS, **options):
    make = functools.partial(make_optimizer, variant, eps=eps, **options)
    return trajectory.run_optimizer(make, GROUPS, scheduled, steps, scale)


def run_reference(variant, scheduled, scale=1.0, eps=1e-8, steps=STEPS):
    def step(w, g, state, lr, alpha, group_index):
        return reference_step(variant, w, g, state, lr, alpha, GROUPS[group_index]["weight_decay"], eps=eps)

    return trajectory.run_reference(
        lambda w: ReferenceState(torch.zeros_like(w), torch.zeros_like(w)), step, GROUPS, scheduled, steps, scale
    )


KERNEL_PATHS = [{}, {"fused": True}, {"foreach": True}, {"foreach": False, "fused": False}]


@pytest.mark.parametrize("scheduled", [True, False], ids=["warmup-cosine", "constant"])
@pytest.mark.parametrize("variant", ["adaml2", "adamw", "adamw-paper", "proxadam"])
def test_kernel_variants_match_reference(variant, scheduled):
    expected = run_reference(variant, scheduled)
    for options in KERNEL_PATHS:
        actual, _ = run_optimizer(variant, scheduled, **options)
        assert max_relative_error(actual, expected) < 1e-12, options
    # The trajectory really moved and decay mattered: not a vacuous comparison.
    assert max_relative_error(expected, initial_weights()) > 0.1


@pytest.mark.parametrize("scheduled", [True, False], ids=["warmup-cosine", "constant"])
def test_adamp_eager_matches_reference(scheduled):
    expected = run_reference("adamp", scheduled)
    actual, _ = run_optimizer("adamp", scheduled, fused=False)
    assert max_relative_error(actual, expected) < 1e-12


def test_adamp_compiled_matches_reference_without_recompiling():
    expected = run_reference("adamp", True)
    actual, optimizer = run_optimizer("adamp", True)  # default: the compiled kernel
    assert optimizer._kernel.compiled is not None and not optimizer._kernel.failed
    assert optimizer.compile_seconds is not None
    assert max_relative_error(actual, expected) < 1e-12


def test_variants_differ_from_each_other():
    """The reference separates the rules (so a test passing with the wrong rule is impossible)."""
    finals = {v: run_reference(v, True, steps=40) for v in ALL_VARIANTS}
    for a in ALL_VARIANTS:
        for b in ALL_VARIANTS:
            if a < b:
                assert max_relative_error(finals[a], finals[b]) > 1e-4, (a, b)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_scale_freeness(variant):
    """eps = 0 and the loss times 1000: AdamW (both) and ProxAdam unchanged, AdamL2 and AdamP changed."""
    base, optimizer = run_optimizer(variant, True, scale=1.0, eps=0.0, steps=60, fused=False)
    scaled, _ = run_optimizer(variant, True, scale=1000.0, eps=0.0, steps=60, fused=False)
    difference = max_relative_error(scaled, base)
    if optimizer.decay_rule.scale_free:
        assert variant in {"adamw", "adamw-paper", "proxadam"}
        assert difference < 1e-10
    else:
        assert variant in {"adaml2", "adamp"}
        assert difference > 1e-3


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_decay_factor_matches_formula(variant):
    """The factor the optimizer exposes equals the blog's factor at the current lr (here mid-schedule)."""
    _, optimizer = run_optimizer(variant, True, steps=30, fused=False)
    for group, config in zip(optimizer.param_groups, GROUPS):
        lr, alpha, wd = group["lr"], config["lr"], config["weight_decay"]
        assert group["lr"] != alpha  # the schedule moved lr
        eta = lr / alpha
        if variant == "adamp":
            p = group["params"][0]
            state = optimizer.state[p]
            t = state["step"].item()
            D = (state["exp_avg_sq"] / (1 - 0.999**t)).sqrt() + 1e-8
            from lightning_decay.optim.rules import adam_denominator

            denominator = adam_denominator(state["exp_avg_sq"], (1 - 0.999**t) ** 0.5, 1e-8)
            torch.testing.assert_close(optimizer.decay_factor(group, denominator), 1 / (1 + lr * wd / D))
            continue
        expected = {"adaml2": 1.0, "adamw": 1 - lr * wd, "adamw-paper": 1 - eta * wd, "proxadam": 1 / (1 + eta * wd)}
        assert optimizer.decay_factor(group) == pytest.approx(expected[variant], rel=1e-14, abs=1e-15)


def test_adamw_is_a_drop_in_for_torch_adamw():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    twin = copy.deepcopy(model)
    ours = AdamW(model.parameters(), lr=1e-2)
    theirs = torch.optim.AdamW(twin.parameters(), lr=1e-2, fused=True)
    assert ours.defaults["weight_decay"] == theirs.defaults["weight_decay"] == 1e-2
    x = torch.randn(16, 6)
    for _ in range(5):
        for m, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert ours_state["state"][0].keys() == theirs_state["state"][0].keys()
    assert set(theirs_state["param_groups"][0]) <= set(ours_state["param_groups"][0])


def test_torch_adamw_state_dict_continues_exactly():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x = torch.randn(16, 6)
    theirs = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        theirs.zero_grad()
        model(x).pow(2).mean().backward()
        theirs.step()
    twin = copy.deepcopy(model)
    ours = AdamW(twin.parameters(), lr=5.0, weight_decay=0.0)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    assert ours.param_groups[0]["lr"] == 1e-2 and ours.param_groups[0]["weight_decay"] == 0.1
    for m, opt in ((model, theirs), (twin, ours)):
        for _ in range(4):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
