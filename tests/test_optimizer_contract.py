"""The torch optimizer contract, checked for every variant of the registry: closures, parameters without gradients,
``state_dict`` round trips and deep copies, GradScaler's skipped steps, sparse gradients, and named errors.

Each variant's math is tested against the float64 reference in test_variants.py; here every variant must behave
like a torch optimizer.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from lightning_decay.optim import (
    REGISTRY,
    AdamC,
    AdamL2,
    AdamP,
    AdamW,
    CautiousAdamW,
    ProxAdam,
    resolve_variant,
)
from lightning_decay.optim.sgd import SGDL2, SGDW, ProxSGD
from tests.variant_lists import ANY_TENSOR

# Variants whose default path compiles a kernel (seconds per test) run eagerly here; their compiled kernels are
# tested in test_variants.py.
COMPILED_BY_DEFAULT = {name for name, info in REGISTRY.items() if info.kernel == "compiled"}


def build(variant: str, params: Any, **settings: Any) -> torch.optim.Optimizer:
    """``variant`` on ``params``; SGD with momentum 0.9 (its buffers are state), the eager path where the default
    compiles."""
    cls, fixed = resolve_variant(variant)
    if REGISTRY[variant].family == "sgd":
        settings = {"momentum": 0.9, "fused": False, **settings}
    elif variant in COMPILED_BY_DEFAULT:
        settings = {"fused": False, **settings}
    return cls(params, **fixed, **settings)


def settings_of(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, steps: int = 3) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()


@pytest.mark.parametrize("variant", ANY_TENSOR)
def test_closure_missing_grads_and_state_dict_round_trip(variant):
    """A closure's loss comes back; a parameter without a gradient is not touched; a fresh optimizer loaded from the
    state dict has every group setting back (AdamC's lr_max / normalized, SGD's momentum / nesterov) and continues
    bit for bit; a deep copy (a checkpoint callback's) keeps working."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    unused = torch.nn.Parameter(torch.ones(3))
    groups: list[dict[str, Any]] = [
        {"params": list(model[0].parameters())},
        {"params": [*model[1].parameters(), unused]},
    ]
    if variant == "adamc":
        groups[0]["lr_max"], groups[1]["normalized"] = 2e-2, False
    if REGISTRY[variant].family == "sgd":
        groups[0]["nesterov"], groups[1]["momentum"] = True, 0.0
    optimizer = build(variant, groups, lr=1e-2, weight_decay=1e-1)
    start = copy.deepcopy(model)
    x = torch.randn(8, 4)

    def closure():
        optimizer.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    for _ in range(3):
        assert isinstance(optimizer.step(closure), torch.Tensor)
    assert torch.equal(unused, torch.ones(3)) and unused not in optimizer.state
    assert all(not torch.equal(a, b) for a, b in zip(model.parameters(), start.parameters()))

    twin = copy.deepcopy(model)
    twin_groups = [{"params": list(twin[0].parameters())}, {"params": [*twin[1].parameters(), torch.ones(3)]}]
    twin_optimizer = build(variant, twin_groups, lr=1.0, weight_decay=0.0)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert settings_of(twin_optimizer) == settings_of(optimizer)
    train(model, optimizer, x)
    train(twin, twin_optimizer, x)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    clone = copy.deepcopy(optimizer)
    assert clone.decay_rule.name == variant
    clone.step()


@pytest.mark.parametrize("variant", ANY_TENSOR)
def test_grad_scaler_skips_non_finite_steps(variant):
    """After an overflow, GradScaler skips the step: weights, moments / buffers and step counters stay as they were."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = build(variant, model.parameters(), lr=1e-2, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    x = torch.randn(8, 4)
    for inputs in (x, x * float("inf")):
        if inputs is not x:
            before = [p.detach().clone() for p in model.parameters()]
            state_before = copy.deepcopy(optimizer.state_dict()["state"])
            assert state_before  # the good step created the state the bad one must not touch
        optimizer.zero_grad()
        scaler.scale(model(inputs).pow(2).mean()).backward()
        scaler.step(optimizer)
        scaler.update()
    assert scaler.get_scale() < 2.0**8  # the overflow was seen
    for a, b in zip(model.parameters(), before):
        assert torch.equal(a, b)
    for index, state in optimizer.state_dict()["state"].items():
        assert state.keys() == state_before[index].keys()
        for key, value in state.items():
            assert torch.equal(value, state_before[index][key]), key


@pytest.mark.parametrize("options", [{}, {"fused": False}, {"foreach": True}], ids=["default", "eager", "foreach"])
@pytest.mark.parametrize("variant", ANY_TENSOR)
def test_sparse_gradients_are_rejected_before_any_update(variant, options):
    embedding = torch.nn.Embedding(5, 3, sparse=True)
    cls, fixed = resolve_variant(variant)
    momentum = {"momentum": 0.9} if REGISTRY[variant].family == "sgd" else {}
    optimizer = cls(embedding.parameters(), **fixed, **momentum, **options)
    embedding(torch.tensor([1, 2])).sum().backward()
    before = embedding.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()
    assert torch.equal(embedding.weight, before)


@pytest.mark.parametrize(
    ("cls", "kwargs", "error", "argument"),
    [
        (AdamW, {"lr": -1.0}, ValueError, "lr"),
        (AdamP, {"lr": float("nan")}, ValueError, "lr"),
        (ProxAdam, {"lr": "fast"}, TypeError, "lr"),
        (ProxAdam, {"eps": -1e-8}, ValueError, "eps"),
        (AdamL2, {"weight_decay": -0.1}, ValueError, "weight_decay"),
        (AdamW, {"betas": (0.9, 1.0)}, ValueError, r"betas\[1\]"),
        (AdamP, {"betas": (-0.1, 0.99)}, ValueError, r"betas\[0\]"),
        (AdamW, {"convention": "keras"}, ValueError, "convention"),
        (AdamW, {"lr": 0.5, "weight_decay": 2.0}, ValueError, r"lr \* weight_decay"),
        (AdamW, {"convention": "paper", "weight_decay": 1.0}, ValueError, r"eta_t \* weight_decay"),
        (AdamC, {"lr_max": -1.0}, ValueError, "lr_max"),
        (AdamC, {"lr_max": 0.0}, ValueError, "lr_max"),
        (AdamC, {"lr_max": "peak"}, TypeError, "lr_max"),
        (AdamC, {"normalized": "yes"}, TypeError, "normalized"),
        (AdamC, {"lr": 0.5, "weight_decay": 8.0, "lr_max": 1.0}, ValueError, r"lr\^2 / lr_max \* weight_decay"),
        (AdamC, {"lr": 0.5, "weight_decay": 3.0, "normalized": False}, ValueError, r"lr \* weight_decay"),
        (AdamC, {"betas": (0.9, 1.0)}, ValueError, r"betas\[1\]"),
        (CautiousAdamW, {"lr": -1.0}, ValueError, "lr"),
        (CautiousAdamW, {"eps": -1e-8}, ValueError, "eps"),
        (CautiousAdamW, {"convention": "keras"}, ValueError, "convention"),
        (CautiousAdamW, {"lr": 0.5, "weight_decay": 2.0}, ValueError, r"lr \* weight_decay"),
        (CautiousAdamW, {"convention": "paper", "weight_decay": 1.0}, ValueError, r"eta_t \* weight_decay"),
        (CautiousAdamW, {"fused": True, "foreach": True}, ValueError, "fused and foreach"),
        (SGDW, {"lr": -1.0}, ValueError, "lr"),
        (SGDL2, {"lr": "fast"}, TypeError, "lr"),
        (SGDL2, {"weight_decay": -0.1}, ValueError, "weight_decay"),
        (ProxSGD, {"momentum": -0.1}, ValueError, "momentum"),
        (SGDW, {"momentum": 1.0}, ValueError, "momentum"),
        (SGDL2, {"dampening": 1.5}, ValueError, "dampening"),
        (SGDW, {"nesterov": True}, ValueError, "nesterov"),
        (SGDW, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "nesterov"),
        (ProxSGD, {"nesterov": "yes", "momentum": 0.9}, TypeError, "nesterov"),
        (SGDW, {"convention": "keras"}, ValueError, "convention"),
        (SGDW, {"lr": 0.5, "weight_decay": 2.0}, ValueError, r"lr \* weight_decay"),
        (SGDW, {"convention": "paper", "weight_decay": 1.0}, ValueError, r"eta_t \* weight_decay"),
        (SGDL2, {"fused": True, "foreach": True}, ValueError, "fused and foreach"),
    ],
)
def test_bad_arguments_are_named(cls, kwargs, error, argument):
    with pytest.raises(error, match=argument):
        cls([torch.nn.Parameter(torch.ones(2))], **kwargs)


@pytest.mark.parametrize(
    ("variant", "setting"),
    [("adamw", {"weight_decay": -1.0}), ("adamc", {"lr_max": -1.0}), ("adamw-cautious", {"eps": -1.0}),
     ("sgdw", {"momentum": 2.0})],
)
def test_bad_group_setting_names_the_group(variant, setting):
    params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))]
    (name,) = setting
    with pytest.raises(ValueError, match=rf"{name}.*param group 1 'head'"):
        build(variant, [{"params": [params[0]]}, {"params": [params[1]], **setting, "name": "head"}])
