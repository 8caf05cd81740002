"""The optimizers against an independent float64 reference, and the torch / Lightning optimizer contract."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from lightning_decay import AdamL2, AdamP, AdamW, ProxAdam, resolve_variant
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
            from lightning_decay.decay_rules import adam_denominator

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


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_closure_missing_grads_and_state_dict_round_trip(variant):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    unused = torch.nn.Parameter(torch.ones(3))
    options = {"fused": False} if variant == "adamp" else {}
    cls, fixed = resolve_variant(variant)
    optimizer = cls([*model.parameters(), unused], lr=1e-2, weight_decay=1e-2, **fixed, **options)
    x = torch.randn(8, 4)

    def closure():
        optimizer.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    for _ in range(3):
        loss = optimizer.step(closure)
        assert isinstance(loss, torch.Tensor)
    assert torch.equal(unused, torch.ones(3)) and unused not in optimizer.state
    # Round trip: a copy resumed from the state dict continues identically.
    twin = copy.deepcopy(model)
    twin_optimizer = cls([*twin.parameters(), torch.nn.Parameter(torch.ones(3))], lr=1.0, **fixed, **options)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for m, opt in ((model, optimizer), (twin, twin_optimizer)):
        for _ in range(3):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_grad_scaler_skips_non_finite_steps(variant):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    cls, fixed = resolve_variant(variant)
    optimizer = cls(model.parameters(), lr=1e-2, weight_decay=1e-2, **fixed)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    x = torch.randn(8, 4)
    # One good step creates the state.
    optimizer.zero_grad()
    scaler.scale(model(x).pow(2).mean()).backward()
    scaler.step(optimizer)
    scaler.update()
    before = [p.detach().clone() for p in model.parameters()]
    state_before = copy.deepcopy(optimizer.state_dict()["state"])
    optimizer.zero_grad()
    scaler.scale(model(x * float("inf")).pow(2).mean()).backward()
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() < 2.0**8  # the overflow was seen
    for a, b in zip(model.parameters(), before):
        assert torch.equal(a, b)
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(value, state_before[index][key]), key
        assert state["step"].item() == 1.0


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_sparse_gradients_are_rejected(variant):
    embedding = torch.nn.Embedding(5, 3, sparse=True)
    cls, fixed = resolve_variant(variant)
    optimizer = cls(embedding.parameters(), **fixed)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()


@pytest.mark.parametrize(
    ("cls", "kwargs", "argument"),
    [
        (AdamW, {"lr": -1.0}, "lr"),
        (AdamP, {"lr": float("nan")}, "lr"),
        (ProxAdam, {"eps": -1e-8}, "eps"),
        (AdamL2, {"weight_decay": -0.1}, "weight_decay"),
        (AdamW, {"betas": (0.9, 1.0)}, r"betas\[1\]"),
        (AdamP, {"betas": (-0.1, 0.99)}, r"betas\[0\]"),
        (AdamW, {"convention": "keras"}, "convention"),
        (AdamW, {"lr": 0.5, "weight_decay": 2.0}, "lr \\* weight_decay"),
        (AdamW, {"convention": "paper", "weight_decay": 1.0}, "eta_t \\* weight_decay"),
    ],
)
def test_bad_arguments_are_named(cls, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        cls([torch.nn.Parameter(torch.ones(2))], **kwargs)


def test_bad_group_setting_names_the_group():
    params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match=r"weight_decay.*param group 1 'head'"):
        AdamW([{"params": [params[0]]}, {"params": [params[1]], "weight_decay": -1.0, "name": "head"}])
    with pytest.raises(TypeError, match="lr"):
        ProxAdam(params, lr="fast")


def test_scheduler_pushing_lr_past_the_sign_flip_fails_before_any_update():
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = AdamW([p], lr=0.1, weight_decay=5.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 + 10 * step)
    p.grad = torch.ones(3)
    optimizer.step()
    scheduler.step()
    before = p.detach().clone()
    with pytest.raises(ValueError, match="lr \\* weight_decay"):
        optimizer.step()
    assert torch.equal(p, before)
