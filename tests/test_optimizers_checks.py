"""A step checks only what changed: the validators run when a group's settings changed since their last check.

Counted with ``sys.setprofile``: every call into ``lightning_decay/validation.py`` from outside it (as
``benchmarks/validation_calls.py`` counts). A change is a new value, a new tensor, or an in-place update of a
tensor (a scheduler's ``lr.fill_``); every refused setting is still refused at the step, before any weight moves.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
import torch

import lightning_decay.validation as validation
from lightning_decay.optim import REGISTRY
from lightning_decay.optim.rules import RULES, KernelDecayRule, rule_named

SCALAR = [name for name, info in REGISTRY.items() if not info.elementwise and info.family != "muon"]


def validator_calls(action: Callable[[], Any]) -> int:
    calls = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" and frame.f_code.co_filename == validation.__file__:
            caller = frame.f_back
            if caller is None or caller.f_code.co_filename != validation.__file__:
                calls += 1

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return calls


def two_groups(name: str, lr: float | torch.Tensor = 1e-2) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4))]
    groups = [{"params": [params[0]], "weight_decay": 0.01}, {"params": [params[1]], "weight_decay": 0.0}]
    optimizer = REGISTRY[name].build(groups, lr=lr)
    for param in params:
        param.grad = torch.randn_like(param)
    return optimizer, params


@pytest.mark.parametrize("name", SCALAR)
def test_a_step_checks_only_what_changed(name: str) -> None:
    optimizer, _ = two_groups(name)
    assert validator_calls(optimizer.step) == 0  # checked at construction
    assert validator_calls(optimizer.step) == 0
    for group in optimizer.param_groups:
        group["lr"] *= 0.5
    assert validator_calls(optimizer.step) == 2  # each group's lr
    optimizer.param_groups[0]["weight_decay"] = 0.02
    assert validator_calls(optimizer.step) == 1
    assert validator_calls(optimizer.step) == 0


@pytest.mark.parametrize("name", SCALAR)
def test_a_changed_setting_is_refused_at_the_step_before_any_update(name: str) -> None:
    optimizer, params = two_groups(name)
    optimizer.step()
    before = [param.detach().clone() for param in params]
    optimizer.param_groups[1]["lr"] = -1.0
    with pytest.raises(ValueError, match=r"lr \(param group 1\) must be"):
        optimizer.step()
    optimizer.param_groups[1]["lr"] = 1e-2
    optimizer.param_groups[0]["weight_decay"] = float("nan")
    with pytest.raises(ValueError, match=r"weight_decay \(param group 0\)"):
        optimizer.step()
    optimizer.param_groups[0]["weight_decay"] = 0.01
    key = "betas" if "betas" in optimizer.param_groups[0] else "momentum"
    optimizer.param_groups[0][key] = (0.9, 1.5) if key == "betas" else 1.5
    with pytest.raises(ValueError, match=key):
        optimizer.step()
    assert all(torch.equal(param, old) for param, old in zip(params, before))


@pytest.mark.parametrize("name", ["adamw", "adamw-paper", "proxadam", "sgdw"])
def test_an_lr_tensor_filled_in_place_is_checked_again(name: str) -> None:
    lr = torch.tensor(1e-2, dtype=torch.float64)
    optimizer, params = two_groups(name, lr=lr)
    optimizer.step()
    lr.fill_(5e-3)  # what a scheduler does to a tensor lr
    assert validator_calls(optimizer.step) > 0
    before = [param.detach().clone() for param in params]
    lr.fill_(-1.0)
    with pytest.raises(ValueError, match="lr"):
        optimizer.step()
    assert all(torch.equal(param, old) for param, old in zip(params, before))


def test_the_rule_limits_are_checked_when_the_lr_grows_past_them() -> None:
    optimizer, _ = two_groups("adamw-paper")
    optimizer.step()
    optimizer.param_groups[0]["lr"] = 1e-2 * 200  # eta_t * wd = 2 >= 1
    with pytest.raises(ValueError, match=r"eta_t \* weight_decay = 2 >= 1 .*\(param group 0\)"):
        optimizer.step()


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_rule_is_named_once_in_the_rules(name: str) -> None:
    record = REGISTRY[name]
    rule = rule_named(name.upper().replace("-", "_"))
    assert RULES[name] is rule and rule.name == name
    assert type(rule) is type(record.rule) and repr(rule) == repr(record.rule)
    for attribute in ("decoupled", "scale_free", "elementwise", "per_unit_lr"):
        assert getattr(rule, attribute) == getattr(record.rule, attribute)
    if isinstance(rule, KernelDecayRule):  # the data says what the settings do
        assert rule.kernel_settings(1e-3, 1e-3, 0.1).decoupled is rule.decoupled


def test_an_unknown_rule_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown variant 'adamx'; valid variants: adaml2, adamw"):
        rule_named("adamx")
    with pytest.raises(TypeError, match="variant name must be a string"):
        rule_named(3)  # type: ignore[arg-type]
