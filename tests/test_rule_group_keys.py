"""A scalar variant is its rule: a rule that reads a param-group key runs on every kernel with no class code.

AdamC reads ``normalized`` and ``lr_max`` per group; these tests hold the mechanism to that promise with a rule
written here (torch's AdamW decay at ``scale * wd`` for a group's ``scale``): its one-line Adam and SGD classes,
its class on a foreign kernel (``on_kernel``), the constructor's defaults, the checks, the monitors' decay factor,
copies and a torch state dict all follow the rule's declaration, and every step equals torch's own optimizer run
with the scaled weight decay, bitwise.
"""

from __future__ import annotations

import copy
import inspect
import pickle
from collections.abc import Mapping
from typing import Any

import pytest
import torch

from lightning_decay import SGDW, AdamC, on_kernel
from lightning_decay.optim.adam import KernelAdam
from lightning_decay.optim.rules import DecayRule, KernelSettings, TorchConventionRule
from lightning_decay.optim.sgd import KernelSGD
from lightning_decay.validation import check_positive


class ScaledRule(TorchConventionRule):
    """``w <- (1 - lr_t * scale * wd) w - lr_t u_t`` with a group's ``scale`` (default: the rule's)."""

    name = "scaled-adamw"
    scale_free = True
    group_keys = ("scale",)

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = check_positive("scale", scale)

    def __repr__(self) -> str:
        return f"ScaledRule({self.scale!r})"

    def check_group_keys(self, group: Mapping[str, Any], where: str = "") -> None:
        check_positive("scale", group["scale"], where)

    def for_group(self, group: Mapping[str, Any]) -> DecayRule:
        return self if group["scale"] == self.scale else ScaledRule(group["scale"])

    def check_domain(self, lr: float | torch.Tensor, initial_lr: float, weight_decay: float) -> None:
        super().check_domain(lr, initial_lr, weight_decay * self.scale)

    def kernel_settings(self, lr: float | torch.Tensor, initial_lr: float, weight_decay: float) -> KernelSettings:
        return super().kernel_settings(lr, initial_lr, weight_decay * self.scale)


class ScaledAdam(KernelAdam, rule=ScaledRule):
    """The rule's Adam: one line."""


class ScaledSGD(KernelSGD, rule=ScaledRule):
    """The rule's SGD: one line."""


def _weights() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]


def _run(optimizer: torch.optim.Optimizer, weights: list[torch.nn.Parameter], steps: int = 6) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    for _ in range(steps):
        for weight in weights:
            weight.grad = torch.randn(weight.shape, generator=generator)
        optimizer.step()
        scheduler.step()
    return [weight.detach().clone() for weight in weights]


#: The rule's optimizer (groups: the first with the constructor's scale 0.5, the second its own 0.25) and the
#: torch optimizer that must give the same weights (weight decay 0.4 scaled by each group's scale).
CASES = {
    "adam": (lambda w: ScaledAdam([{"params": [w[0]]}, {"params": [w[1]], "scale": 0.25}], lr=0.05,
                                  weight_decay=0.4, scale=0.5),
             lambda w: torch.optim.AdamW([{"params": [w[0]], "weight_decay": 0.4 * 0.5},
                                          {"params": [w[1]], "weight_decay": 0.4 * 0.25}], lr=0.05, fused=True)),
    "on_kernel": (lambda w: on_kernel(torch.optim.AdamW, ScaledRule(0.5))(
                      [{"params": [w[0]]}, {"params": [w[1]], "scale": 0.25}], lr=0.05, weight_decay=0.4),
                  lambda w: torch.optim.AdamW([{"params": [w[0]], "weight_decay": 0.4 * 0.5},
                                               {"params": [w[1]], "weight_decay": 0.4 * 0.25}], lr=0.05)),
    "sgd": (lambda w: ScaledSGD([{"params": [w[0]]}, {"params": [w[1]], "scale": 0.25}], lr=0.05,
                                weight_decay=0.4, scale=0.5),
            lambda w: SGDW([{"params": [w[0]], "weight_decay": 0.4 * 0.5},
                            {"params": [w[1]], "weight_decay": 0.4 * 0.25}], lr=0.05)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_rule_with_a_group_key_runs_on_every_kernel_as_declared(case: str) -> None:
    make, make_expected = CASES[case]
    ours_weights, theirs_weights = _weights(), _weights()
    ours = make(ours_weights)
    assert [group["scale"] for group in ours.param_groups] == [0.5, 0.25]  # the constructor's default, the group's
    assert ours.defaults["scale"] == 0.5
    assert [ours.rule_for(group).scale for group in ours.param_groups] == [0.5, 0.25]
    assert ours.decay_factor(ours.param_groups[1]) == 1 - 0.05 * (0.4 * 0.25)  # what the monitors log
    actual, expected = _run(ours, ours_weights), _run(make_expected(theirs_weights), theirs_weights)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    assert not torch.equal(actual[1], _weights()[1])  # the weights moved
    # a copy keeps the rule and its defaults; a group added later inherits the constructor's scale
    for twin in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert twin.decay_rule.scale == 0.5 and [g["scale"] for g in twin.param_groups] == [0.5, 0.25]
        twin.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))]})
        assert twin.param_groups[-1]["scale"] == 0.5


def test_the_constructor_takes_the_rules_group_keys_and_checks_them() -> None:
    for cls, default in ((ScaledAdam, 1.0), (ScaledSGD, 1.0), (on_kernel(torch.optim.AdamW, ScaledRule(2.0)), 2.0)):
        parameter = inspect.signature(cls).parameters["scale"]
        assert (parameter.kind, parameter.default) == (inspect.Parameter.KEYWORD_ONLY, default), cls
    weight = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0"):
        ScaledAdam([weight], scale=-1.0)
    with pytest.raises(ValueError, match=r"scale \(param group 1\) must be a finite number > 0"):
        ScaledAdam([{"params": [weight]}, {"params": [torch.nn.Parameter(torch.ones(2))], "scale": 0.0}])
    optimizer = ScaledAdam([weight], lr=0.1, weight_decay=1.0)
    optimizer.param_groups[0]["scale"] = 20.0  # the rule's limit at the group's own scale: lr * scale * wd >= 1
    weight.grad = torch.zeros(3)
    with pytest.raises(ValueError, match=r"lr\*weight_decay"):
        optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(3))  # refused before any update


def test_a_torch_state_dict_loads_with_the_constructors_group_keys() -> None:
    """torch's AdamW state dict has no ``scale``: the loading optimizer's default fills it, as AdamC's keys."""
    weights = _weights()
    theirs = torch.optim.AdamW(weights, lr=0.05, weight_decay=0.2)
    _run(theirs, weights, steps=2)
    for ours, key, value in ((ScaledAdam(_weights(), lr=1.0, scale=0.5), "scale", 0.5),
                             (AdamC(_weights(), lr=1.0, normalized=False), "normalized", False)):
        ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
        assert all(group[key] == value for group in ours.param_groups)
        assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
