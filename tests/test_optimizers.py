"""AdamW against torch's AdamW: a drop-in (bit-identical steps) that continues torch's state dicts.

Every variant's math against the float64 reference: test_variants.py; the torch optimizer contract:
test_optimizer_contract.py.
"""

from __future__ import annotations

import copy
import functools

import torch

from lightning_decay import AdamW, resolve_variant
from tests import trajectory
from tests.reference import ReferenceState, reference_step

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
