"""AdamC and cautious weight decay against the independent float64 reference (their optimizer contract: in
test_optimizer_contract.py)."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch

from lightning_decay.optim import REGISTRY, VARIANTS, AdamC, CautiousAdamW, resolve_variant
from lightning_decay.optim.compiled import CompiledStep
from lightning_decay.optim.rules import AdamCRule, AdamWTorchRule, CautiousRule
from tests import trajectory
from tests.reference import ReferenceState, reference_step, warmup_cosine
from tests.trajectory import gradient, max_relative_error
from tests.variant_lists import ANY_TENSOR

CAUTIOUS = [name for name in ANY_TENSOR if isinstance(REGISTRY[name].rule, CautiousRule)]
# Three groups: a normalized one with its own lr_max, one that is not normalized, and a normalized one whose
# lr_max defaults to alpha. The flags only reach AdamC; the other variants see lr and weight decay alone.
GROUPS = [
    {"shapes": [(7, 5), (5,)], "lr": 3e-3, "weight_decay": 0.5, "normalized": True, "lr_max": 4.5e-3},
    {"shapes": [(4, 3, 2)], "lr": 1e-3, "weight_decay": 0.3, "normalized": False},
    {"shapes": [(11,), ()], "lr": 2e-3, "weight_decay": 0.2, "normalized": True},
]
STEPS = 120
KERNEL_PATHS = [{}, {"fused": True}, {"foreach": True}, {"foreach": False, "fused": False}]


def initial_weights() -> list[list[torch.Tensor]]:
    return trajectory.initial_weights(GROUPS)


def make_optimizer(variant: str, params, **options):
    cls, fixed = resolve_variant(variant)
    groups = []
    for p, config in zip(params, GROUPS):
        group = {"params": p, "lr": config["lr"], "weight_decay": config["weight_decay"]}
        if variant == "adamc":
            group["normalized"] = config["normalized"]
            if "lr_max" in config:
                group["lr_max"] = config["lr_max"]
        groups.append(group)
    return cls(groups, **fixed, **options)


def run_optimizer(variant, scheduled, scale=1.0, eps=1e-8, steps=STEPS, **options):
    make = functools.partial(make_optimizer, variant, eps=eps, **options)
    return trajectory.run_optimizer(make, GROUPS, scheduled, steps, scale)


def run_reference(variant, scheduled, scale=1.0, eps=1e-8, steps=STEPS):
    def step(w, g, state, lr, alpha, group_index):
        config = GROUPS[group_index]
        return reference_step(
            variant, w, g, state, lr, alpha, config["weight_decay"], eps=eps, normalized=config["normalized"],
            lr_max=config.get("lr_max"),
        )

    return trajectory.run_reference(
        lambda w: ReferenceState(torch.zeros_like(w), torch.zeros_like(w)), step, GROUPS, scheduled, steps, scale
    )


# --- AdamC --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduled", [True, False], ids=["warmup-cosine", "constant"])
def test_adamc_matches_reference(scheduled):
    expected = run_reference("adamc", scheduled)
    for options in KERNEL_PATHS:
        actual, optimizer = run_optimizer("adamc", scheduled, **options)
        assert max_relative_error(actual, expected) < 1e-12, options
    assert [type(optimizer.rule_for(g)) for g in optimizer.param_groups] == [AdamCRule, AdamWTorchRule, AdamCRule]
    # Not vacuous: the weights moved, and AdamC's decay is not AdamW's (group 0 has lr_max != alpha).
    assert max_relative_error(expected, initial_weights()) > 0.1
    assert max_relative_error(expected, run_reference("adamw", scheduled)) > 1e-3


def test_adamc_is_adamw_at_the_peak_lr_and_weaker_below_it():
    """lr_max = alpha and a constant lr: AdamC's decay is AdamW's; under a schedule it decays less."""
    torch.manual_seed(0)
    weights = [torch.randn(6, 4, dtype=torch.float64) for _ in range(2)]
    runs = {}
    for name, scheduled in (("adamc", False), ("adamw", False), ("adamc-scheduled", True), ("adamw-scheduled", True)):
        params = [w.clone().requires_grad_(True) for w in weights]
        cls = AdamC if name.startswith("adamc") else resolve_variant("adamw")[0]
        optimizer = cls(params, lr=1e-2, weight_decay=0.5)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine) if scheduled else None
        for step in range(60):
            for index, p in enumerate(params):
                p.grad = gradient(p.detach(), step, index)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        runs[name] = [[p.detach() for p in params]]
    assert max_relative_error(runs["adamc"], runs["adamw"]) < 1e-13
    assert max_relative_error(runs["adamc-scheduled"], runs["adamw-scheduled"]) > 1e-3
    norm = {name: sum(float(p.norm()) for p in run[0]) for name, run in runs.items()}
    assert norm["adamc-scheduled"] > norm["adamw-scheduled"]  # less decay once the lr is below its peak


def test_adamc_defaults_and_decay_factor():
    _, optimizer = run_optimizer("adamc", True, steps=30, fused=False)
    assert optimizer.defaults["normalized"] is True and optimizer.defaults["lr_max"] is None
    for group, config in zip(optimizer.param_groups, GROUPS):
        lr, alpha, wd = group["lr"], config["lr"], config["weight_decay"]
        assert lr != alpha  # the schedule moved lr
        lr_max = config.get("lr_max", alpha)
        rule = optimizer.rule_for(group)
        assert rule.peak_lr(alpha) == lr_max if config["normalized"] else type(rule) is AdamWTorchRule
        with pytest.warns(DeprecationWarning, match="rule_for"):
            assert optimizer.lr_max(group) == lr_max
        expected = 1 - lr * lr / lr_max * wd if config["normalized"] else 1 - lr * wd
        assert optimizer.decay_factor(group) == pytest.approx(expected, rel=1e-14, abs=1e-15)
    # A group added later gets the constructor's defaults.
    extra = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    optimizer.add_param_group({"params": [extra]})
    assert optimizer.param_groups[-1]["normalized"] is True and optimizer.param_groups[-1]["lr_max"] is None
    assert AdamC([torch.nn.Parameter(torch.ones(2))], normalized=False, lr_max=0.1).param_groups[0]["lr_max"] == 0.1


def test_adamc_loads_a_torch_adamw_state_dict():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x = torch.randn(16, 6)
    theirs = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        theirs.zero_grad()
        model(x).pow(2).mean().backward()
        theirs.step()
    twin = copy.deepcopy(model)
    ours = AdamC(twin.parameters(), lr=5.0, weight_decay=0.0, normalized=False)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    group = ours.param_groups[0]
    assert group["lr"] == 1e-2 and group["normalized"] is False and group["lr_max"] is None
    for m, opt in ((model, theirs), (twin, ours)):
        for _ in range(4):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# --- Cautious weight decay ----------------------------------------------------------------------------------------


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken_compile(function, **kwargs):
        def fail(*args):
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(CompiledStep, "_warned", set())
    expected = run_reference("adamw-cautious", True, steps=20)
    with pytest.warns(UserWarning, match="CautiousAdamW: torch.compile .* failed"):
        actual, optimizer = run_optimizer("adamw-cautious", True, steps=20)
    assert optimizer._kernel.failed and optimizer.compile_seconds is None
    assert max_relative_error(actual, expected) < 1e-12


@pytest.mark.parametrize("variant", CAUTIOUS)
def test_cautious_monitoring_interface(variant):
    """The mask, the fraction of decayed coordinates and the factor, for a monitoring callback."""
    _, optimizer = run_optimizer(variant, True, steps=30, fused=False)
    assert optimizer.decay_rule.elementwise and optimizer.decay_rule.name == variant
    for group, config in zip(optimizer.param_groups, GROUPS):
        lr, alpha, wd = group["lr"], config["lr"], config["weight_decay"]
        coefficient = lr * wd if variant == "adamw-cautious" else lr / alpha * wd
        assert optimizer.decay_factor(group) == pytest.approx(1 - coefficient, rel=1e-14)
        param = group["params"][0]
        state = optimizer.state[param]
        t = state["step"].item()
        u = state["exp_avg"] / (1 - 0.9**t) / ((state["exp_avg_sq"] / (1 - 0.999**t)).sqrt() + 1e-8)
        expected_mask = u * param >= 0
        mask = optimizer.decay_mask(param)
        assert torch.equal(mask, expected_mask)
        factor = optimizer.decay_factor(group, mask=mask)
        torch.testing.assert_close(factor, torch.where(expected_mask, 1 - coefficient, 1.0).to(factor.dtype))
        fraction = optimizer.decayed_fraction(group)
        numel = sum(p.numel() for p in group["params"])
        masks = [optimizer.decay_mask(p) for p in group["params"]]
        assert fraction == pytest.approx(sum(int(m.sum()) for m in masks) / numel)
    fractions = [optimizer.decayed_fraction(g) for g in optimizer.param_groups]
    assert any(0.0 < f < 1.0 for f in fractions), fractions  # the mask is not trivially all-on or all-off
    fresh = CautiousAdamW([torch.nn.Parameter(torch.ones(3))])
    assert fresh.decay_mask(fresh.param_groups[0]["params"][0]) is None
    assert fresh.decayed_fraction(fresh.param_groups[0]) is None


def test_cautious_rule_timescale_and_factor():
    rule = CautiousRule(AdamWTorchRule())
    assert rule.name == "adamw-cautious" and rule.scale_free
    assert rule.timescale_steps(1e-3, 1e-3, 0.1) == pytest.approx(1e4)
    mask = torch.tensor([True, False, True])
    torch.testing.assert_close(rule.decay_factor(0.1, 0.1, 0.5, mask=mask), torch.tensor([0.95, 1.0, 0.95]))
    assert math.isinf(rule.timescale_steps(1e-3, 1e-3, 0.0))
    with pytest.raises(ValueError, match="decoupled"):
        CautiousRule(resolve_variant("adaml2")[0]([torch.nn.Parameter(torch.ones(1))]).decay_rule)


# --- Scale-freeness, distinctness, registry names -----------------------------------------------------------------


def test_registry_names():
    assert VARIANTS["adamc"] == (AdamC, {})
    assert VARIANTS["adamw-cautious"] == (CautiousAdamW, {"convention": "torch"})
    assert resolve_variant("AdamW_Paper_Cautious") == (CautiousAdamW, {"convention": "paper"})
