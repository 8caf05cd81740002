"""Every variant of the registry against the independent float64 reference (``tests/reference.py``).

Parametrized over ``REGISTRY`` (the Adam and SGD families; Muon's: ``tests/test_muon.py``): a new variant is
covered by these tests as soon as it has a record and a reference formula (a variant without one fails here,
naming the file to edit). Per variant: the trajectory on every kernel
path it has (torch's single / foreach / fused kernels, or the compiled and eager multi-tensor steps) over 120 steps
of warmup + cosine with three parameter groups; the decay factor it reports against the reference's zero-gradient
step; scale-freeness as the record states it; and the sign-flip guard against the reference's factor. The trajectory
tests also run with a 0-dim tensor lr (filled in place by the scheduler, as torch's schedulers do) and with a complex
parameter, which every variant must step as its real pair (as torch's Adam and SGD do).
"""

from __future__ import annotations

import functools
import itertools
import runpy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lightning_decay.optim import REGISTRY, KernelAdam, KernelSGD
from lightning_decay.optim.combined import CombinedOptimizer
from lightning_decay.optim.compiled import CompiledKernelOptimizer
from lightning_decay.optim.registry import VariantInfo, rule_of
from tests import trajectory
from tests.reference import ReferenceState, SGDReferenceState, reference_sgd_step, reference_step
from tests.trajectory import max_relative_error

ROOT = Path(__file__).resolve().parents[1]
STEPS = 120
# Three groups with different lr and weight decay (one without decay); shapes include a matrix and a scalar.
GROUPS = {
    "adam": [
        {"shapes": [(7, 5), (5,)], "lr": 3e-3, "weight_decay": 0.5},
        {"shapes": [(4, 3, 2)], "lr": 1e-3, "weight_decay": 0.0},
        {"shapes": [(11,), ()], "lr": 2e-3, "weight_decay": 0.05},
    ],
    "sgd": [
        {"shapes": [(7, 5), (5,)], "lr": 0.05, "weight_decay": 0.4},
        {"shapes": [(4, 3, 2)], "lr": 0.02, "weight_decay": 0.0},
        {"shapes": [(11,), ()], "lr": 0.03, "weight_decay": 0.02},
    ],
}
# Each family's own settings: SGD with momentum in every group (Nesterov in one), so the decoupled rules run their
# compiled / eager kernel and the L2 rule puts its decay through the buffer.
FAMILY_GROUP_SETTINGS = {
    "adam": [{}, {}, {}],
    "sgd": [{"momentum": 0.9}, {"momentum": 0.8, "dampening": 0.3}, {"momentum": 0.9, "nesterov": True}],
}
KERNEL_PATHS = {
    "torch": [{}, {"fused": True}, {"foreach": True}, {"foreach": False, "fused": False}],
    "compiled": [{"fused": False}, {"foreach": True}],  # eager; the compiled kernel: test_compiled_step_...
}
#: The Adam and SGD variants, which the float64 trajectory tests here cover; the Muon variants (matrices only, and an
#: orthogonalization torch runs in bfloat16) have theirs in tests/test_muon.py.
NAMES = [name for name, info in REGISTRY.items() if info.family in GROUPS]
LR_KINDS = [(True, "float"), (False, "float"), (True, "tensor")]


def accepts_tensor_lr(info: VariantInfo, options: dict[str, Any]) -> bool:
    """torch's restriction, kept by the variants running torch's Adam kernel: no tensor lr on the foreach path
    unless capturable. torch's SGD and the compiled kernels take one everywhere."""
    return not (info.family == "adam" and info.kernel == "torch" and options.get("foreach"))


def accepts_complex(info: VariantInfo, options: dict[str, Any]) -> bool:
    """torch's fused Adam kernel has no complex version; every other path steps a complex parameter."""
    return not (info.family == "adam" and info.kernel == "torch" and options.get("fused"))


def reference_step_of(info: VariantInfo) -> Any:
    """The float64 reference step of ``info``'s family, for its name; fails naming the file to edit if missing."""
    return reference_step if info.family == "adam" else reference_sgd_step


def new_reference_state(info: VariantInfo, w: torch.Tensor) -> Any:
    return ReferenceState(torch.zeros_like(w), torch.zeros_like(w)) if info.family == "adam" else SGDReferenceState()


def run_reference(info: VariantInfo, scheduled: bool = True, steps: int = STEPS, scale: float = 1.0, eps=1e-8):
    groups = GROUPS[info.family]
    settings = FAMILY_GROUP_SETTINGS[info.family]
    step_function = reference_step_of(info)
    extra = {"eps": eps} if info.family == "adam" else {}

    def step(w, g, state, lr, alpha, group_index):
        try:
            return step_function(
                info.name, w, g, state, lr, alpha, groups[group_index]["weight_decay"], **extra, **settings[group_index]
            )
        except ValueError as error:
            if str(error) == info.name:
                pytest.fail(f"variant {info.name!r} has no float64 reference formula: add it to tests/reference.py")
            raise

    return trajectory.run_reference(lambda w: new_reference_state(info, w), step, groups, scheduled, steps, scale)


def run_variant(
    info: VariantInfo,
    scheduled: bool = True,
    steps: int = STEPS,
    scale: float = 1.0,
    *,
    tensor_lr: bool = False,
    complex_params: bool = False,
    **options,
):
    """The variant on the family's problem; ``tensor_lr``: each group's lr a float64 0-dim tensor (the scheduler
    fills it in place); ``complex_params``: the (4, 3, 2) tensor is a complex (4, 3) parameter."""
    groups = GROUPS[info.family]

    def make(params):
        param_groups = [
            {"params": p, "lr": torch.tensor(g["lr"], dtype=torch.float64) if tensor_lr else g["lr"],
             "weight_decay": g["weight_decay"], **extra}
            for p, g, extra in zip(params, groups, FAMILY_GROUP_SETTINGS[info.family])
        ]
        optimizer = info.build(param_groups, **options)
        if tensor_lr:
            assert all(isinstance(group["lr"], torch.Tensor) for group in optimizer.param_groups)
        return optimizer

    weights, optimizer = trajectory.run_optimizer(make, groups, scheduled, steps, scale, complex_params)
    if tensor_lr:  # still the tensors given, filled in place by the scheduler
        assert all(isinstance(group["lr"], torch.Tensor) for group in optimizer.param_groups)
    return weights, optimizer


@pytest.mark.parametrize(("scheduled", "lr_kind"), LR_KINDS, ids=["warmup-cosine", "constant", "tensor-lr"])
@pytest.mark.parametrize("name", NAMES)
def test_every_kernel_path_matches_the_float64_reference(name: str, scheduled: bool, lr_kind: str) -> None:
    """Every kernel path, with a float lr (scheduled or constant) and with a 0-dim tensor lr that the scheduler
    fills in place; where torch refuses a tensor lr (its foreach Adam kernel), the error names lr."""
    info = REGISTRY[name]
    tensor_lr = lr_kind == "tensor"
    expected = run_reference(info, scheduled)
    for options in KERNEL_PATHS[info.kernel]:
        if tensor_lr and not accepts_tensor_lr(info, options):
            with pytest.raises(ValueError, match=r"^lr .*Tensor.*foreach"):
                run_variant(info, scheduled, steps=1, tensor_lr=True, **options)
            continue
        actual, _ = run_variant(info, scheduled, tensor_lr=tensor_lr, **options)
        assert max_relative_error(actual, expected) < 1e-12, options
    # The trajectory really moved and the decay mattered: not a vacuous comparison.
    assert max_relative_error(expected, trajectory.initial_weights(GROUPS[info.family])) > 0.1


@pytest.mark.parametrize("name", NAMES)
def test_a_complex_parameter_steps_as_its_real_pair(name: str) -> None:
    """A complex parameter (float64 pairs) among real ones: on every kernel path its trajectory is the real pair's,
    to the last bit, and the reference's. torch's fused Adam kernel has no complex version: a clear error at
    construction instead of a failure midway through a step."""
    info = REGISTRY[name]
    steps = 40
    expected = run_reference(info, steps=steps)
    for options in KERNEL_PATHS[info.kernel]:
        if not accepts_complex(info, options):
            with pytest.raises(ValueError, match=r"fused.*complex"):
                run_variant(info, steps=1, complex_params=True, **options)
            continue
        actual, optimizer = run_variant(info, steps=steps, complex_params=True, **options)
        # The real problem on the kernel the optimizer chose (by default torch's fused kernels are not chosen when
        # a parameter is complex: torch's default kernel then runs every group)
        chosen = {"fused": bool(optimizer.defaults["fused"]), "foreach": optimizer.defaults["foreach"]}
        real_pair, _ = run_variant(info, steps=steps, **chosen)
        assert max_relative_error(actual, expected) < 1e-12, options
        assert all(torch.equal(a, b) for group_a, group_b in zip(actual, real_pair) for a, b in zip(group_a, group_b))
        complex_param = optimizer.param_groups[1]["params"][0]
        assert complex_param.is_complex()
        for value in optimizer.state[complex_param].values():  # torch's state: complex buffers, a real step count
            assert value.is_complex() == (value.dim() > 0)


@pytest.mark.parametrize("name", [name for name, info in REGISTRY.items() if info.kernel == "compiled"])
def test_compiled_step_matches_the_reference_without_recompiling(name: str) -> None:
    """The default path, the compiled kernel: one graph for a changing lr, a float or tensor lr, real or complex
    parameters (as real pairs)."""
    info = REGISTRY[name]
    expected = run_reference(info)
    torch._dynamo.reset()  # other tests may have compiled the same kernel for other shapes
    with torch._dynamo.config.patch(error_on_recompile=True):
        for kind in ({}, {"tensor_lr": True}, {"complex_params": True}):
            actual, optimizer = run_variant(info, **kind)  # the lr changes every step
            assert optimizer._kernel.compiled is not None and not optimizer._kernel.failed
            assert max_relative_error(actual, expected) < 1e-12, kind


def test_the_registry_describes_what_it_builds() -> None:
    """Each record's rule, kernel and family are those of the optimizer it builds, and every optimizer class the
    package exports is in the registry."""
    import lightning_decay.optim as optim

    for name, info in REGISTRY.items():
        if info.family == "muon":  # Muon steps matrices; torch's Muon has no fused flag
            optimizer = info.build([torch.nn.Parameter(torch.ones(2, 2))])
        else:
            optimizer = info.build([torch.nn.Parameter(torch.ones(2))], fused=False)
        assert type(rule_of(optimizer)) is type(info.rule) and optimizer.decay_rule.name == info.rule.name == name
        assert isinstance(optimizer, KernelAdam) == (info.family == "adam" and info.kernel == "torch")
        if info.family == "adam":
            assert isinstance(optimizer, CompiledKernelOptimizer) == (info.kernel == "compiled")
        assert rule_of(name) is info.rule
    exported = [getattr(optim, n) for n in optim.__all__]
    classes = {c for c in exported if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)}
    assert classes - {KernelAdam, KernelSGD, CombinedOptimizer} <= {info.optimizer for info in REGISTRY.values()}


@pytest.mark.parametrize("name", NAMES)
def test_reported_decay_factor_is_the_reference_zero_gradient_step(name: str) -> None:
    """With zero gradients and fresh state, one reference step multiplies the weights by the rule's factor: the
    factor the optimizer reports (read by the monitors) must be that ratio, mid-schedule, for every group."""
    info = REGISTRY[name]
    _, optimizer = run_variant(info, steps=30, fused=False)
    for group, config in zip(optimizer.param_groups, GROUPS[info.family]):
        lr, alpha, weight_decay = group["lr"], config["lr"], config["weight_decay"]
        assert lr != alpha  # the schedule moved the lr
        w = torch.full((3,), 2.0, dtype=torch.float64)
        if info.family == "adam":
            state, options = ReferenceState(torch.zeros_like(w), torch.zeros_like(w)), {"eps": 1e-8}
        else:
            state, options = SGDReferenceState(), {}
        new = reference_step_of(info)(name, w, torch.zeros_like(w), state, lr, alpha, weight_decay, **options)
        expected = (new / w)[0].item()
        if not info.decoupled:  # L2: zero gradient, but the decay goes through the (preconditioned) gradient
            continue
        if info.elementwise and "elementwise_factor" in info.decay_metrics:  # AdamP: D = eps at zero moments
            factor = optimizer.decay_factor(group, torch.full_like(w, 1e-8))
            torch.testing.assert_close(factor, torch.full_like(w, expected), rtol=1e-12, atol=0)
        else:
            assert float(optimizer.decay_factor(group)) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_scale_freeness_is_what_the_record_says(name: str) -> None:
    """eps = 0 and the loss times 1000: a scale-free variant's trajectory is unchanged, any other one changes."""
    info = REGISTRY[name]
    run = functools.partial(run_variant, info, True, 60, fused=False, **({"eps": 0.0} if info.family == "adam" else {}))
    base, _ = run(scale=1.0)
    scaled, _ = run(scale=1000.0)
    difference = max_relative_error(scaled, base)
    assert difference < 1e-10 if info.scale_free else difference > 1e-3


@pytest.mark.parametrize("family", ["adam", "sgd"])
def test_the_reference_separates_every_pair_of_variants(family: str) -> None:
    """No two variants of a family follow the same trajectory (a test passing with the wrong rule is impossible)."""
    finals = {n: run_reference(i, steps=40) for n, i in REGISTRY.items() if i.family == family}
    for a, b in itertools.combinations(finals, 2):
        assert max_relative_error(finals[a], finals[b]) > 1e-4, (a, b)


@pytest.mark.parametrize("name", NAMES)
def test_a_scheduler_pushing_the_decay_past_its_limit_fails_before_any_update(name: str) -> None:
    """A scheduler multiplies the lr by 11 after one step. Where the reference's zero-gradient factor at that lr is
    <= 0 (the weights would flip sign), the step raises ValueError naming weight_decay before touching any weight;
    elsewhere it steps normally."""
    info = REGISTRY[name]
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    lr, weight_decay = 0.1, (0.5 if info.rule.per_unit_lr else 5.0)
    extra = {"momentum": 0.9} if info.family == "sgd" else {}
    optimizer = info.build(params, lr=lr, weight_decay=weight_decay, fused=False, **extra)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 + 10 * step)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    scheduler.step()
    w = torch.ones(1, dtype=torch.float64)
    state = ReferenceState(torch.zeros_like(w), torch.zeros_like(w)) if info.family == "adam" else SGDReferenceState()
    pushed = reference_step_of(info)(name, w, torch.zeros_like(w), state, 11 * lr, lr, weight_decay)
    before = [p.detach().clone() for p in params]
    if info.decoupled and pushed.item() <= 0:
        with pytest.raises(ValueError, match="weight_decay"):
            optimizer.step()
        assert all(torch.equal(p, b) for p, b in zip(params, before))
    else:
        optimizer.step()
        assert all(torch.isfinite(p).all() and not torch.equal(p, b) for p, b in zip(params, before))


def test_docs_tables_are_the_registry() -> None:
    """README.md and docs/variants.md embed the registry's table as ``tools/variants_table.py`` writes it."""
    tool = runpy.run_path(str(ROOT / "tools" / "variants_table.py"))
    for path in tool["FILES"]:
        text = path.read_text()
        assert tool["with_table"](text) == text, f"{path.name}: run python tools/variants_table.py"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_variant_has_its_config_file(name: str) -> None:
    """``configs/<name>.yaml`` selects the variant (test_cli trains every config for two steps)."""
    path = ROOT / "configs" / f"{name}.yaml"
    assert path.is_file(), f"add {path.relative_to(ROOT)} (see docs/contributing.md)"
    decay = yaml.safe_load(path.read_text())["model"]["init_args"]["decay"]
    assert REGISTRY[decay["optimizer"]] is REGISTRY[name]
