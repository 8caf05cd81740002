"""Correctness at the edges, for every variant of the registry: complex parameters, a compiled step that fails
midway, and a learning rate given as a 0-dim tensor.

The trajectories themselves (complex parameters and tensor lrs on every kernel path, against the float64 reference)
are in test_variants.py; here the contract around them: a failed compiled step changes nothing and is run once
eagerly, each kernel warns once, a tensor lr is validated, kept (schedulers fill it in place), handed to torch's
kernels as torch wants it, and refused where torch refuses it, before any update.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
import warnings
from typing import Any

import pytest
import torch

import lightning_decay.optim.compiled as compiled_module
from lightning_decay import on_kernel
from lightning_decay.optim import REGISTRY
from lightning_decay.optim.base import LR_AT_CONSTRUCTION
from lightning_decay.optim.compiled import CompiledStep
from lightning_decay.optim.rules import AdamCRule, KernelDecayRule, L2Rule, ProximalRule
from lightning_decay.validation import check_lr
from tests.variant_lists import ANY_TENSOR

NAMES = ANY_TENSOR
COMPILED = [name for name, info in REGISTRY.items() if info.kernel == "compiled"]
TORCH_ADAM = [name for name, info in REGISTRY.items() if info.family == "adam" and info.kernel == "torch"]


def build(name: str, params: Any, **settings: Any) -> torch.optim.Optimizer:
    """``name`` on ``params``; SGD with momentum 0.9, so that the decoupled rules run their compiled kernel."""
    if REGISTRY[name].family == "sgd":
        settings = {"momentum": 0.9, **settings}
    return REGISTRY[name].build(params, **settings)


def problem(seed: int = 0) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    """Two small float64 parameters and their gradients (nothing here really compiles: no compile time)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(3, 2), (4,)]
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64)) for shape in shapes]
    grads = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]
    return params, grads


def assert_same_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer, params_a: list, params_b: list) -> None:
    for p, q in zip(params_a, params_b):
        assert torch.equal(p, q)
        state_a, state_b = a.state[p], b.state[q]
        assert state_a.keys() == state_b.keys()
        for key in state_a:
            assert torch.equal(state_a[key], state_b[key]), key


# --- A compiled step that fails changes nothing ---------------------------------------------------------------------


def compile_failing_after_the_update(function: Any, **kwargs: Any) -> Any:
    """A stand-in for ``torch.compile`` whose compiled step updates the weights and the state, then fails (a
    kernel failing at run time, after it began writing)."""

    def compiled(*args: Any) -> None:
        function(*args)
        raise RuntimeError("injected failure after the state update")

    return compiled


def compile_failing(function: Any, **kwargs: Any) -> Any:
    """A stand-in for ``torch.compile`` that cannot compile (no C++ compiler): fails before touching anything."""

    def compiled(*args: Any) -> None:
        raise RuntimeError("no compiler here")

    return compiled


@pytest.mark.parametrize("name", COMPILED)
def test_a_compiled_step_failing_after_its_update_is_one_eager_step(name: str, monkeypatch) -> None:
    """The failed attempt is undone and the step runs once, eagerly: weights, moments / buffers and the step count
    are one eager step's (step 1, not 2); the next steps stay eager and exact."""
    monkeypatch.setattr(torch, "compile", compile_failing_after_the_update)
    monkeypatch.setattr(CompiledStep, "_warned", set())
    params, grads = problem()
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    compiled = build(name, params, lr=1e-2, weight_decay=0.1)  # the default path: the compiled kernel
    eager = build(name, twins, lr=1e-2, weight_decay=0.1, fused=False)
    for step in range(3):
        for p, q, g in zip(params, twins, grads):
            p.grad, q.grad = g * (step + 1), g * (step + 1)
        if step == 0:
            with pytest.warns(UserWarning, match="injected failure"):
                compiled.step()
        else:
            compiled.step()
        eager.step()
        assert_same_state(compiled, eager, params, twins)
        if REGISTRY[name].family == "adam":
            assert all(compiled.state[p]["step"].item() == step + 1 for p in params)
    assert compiled._kernel.failed


def test_each_kernel_warns_once_about_its_compile_failure(monkeypatch) -> None:
    """One warning per kernel (AdamP's, cautious decay's, SGD's), not one for the whole process: a failure of one
    class's kernel does not silence another's, and a kernel that warned does not warn again."""
    monkeypatch.setattr(torch, "compile", compile_failing)
    monkeypatch.setattr(CompiledStep, "_warned", set())
    for name, label in (("adamp", "AdamP"), ("adamw-cautious", "CautiousAdamW"), ("sgdw", "SGDW")):
        params, grads = problem()
        optimizer = build(name, params)
        for p, g in zip(params, grads):
            p.grad = g
        with pytest.warns(UserWarning, match=f"{label}: torch.compile .* failed"):
            optimizer.step()
    for name in ("adamp", "adamw-paper-cautious"):  # the kernels warned already (the paper convention: same kernel)
        params, grads = problem()
        optimizer = build(name, params)
        for p, g in zip(params, grads):
            p.grad = g
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            optimizer.step()
        assert optimizer._kernel.failed


def compile_eagerly(function: Any, **kwargs: Any) -> Any:
    """A stand-in for ``torch.compile`` that compiles nothing (the step runs eagerly, at once)."""
    return function


def test_the_first_compiled_step_says_once_that_it_compiles(monkeypatch, caplog) -> None:
    """The first step of a compiled kernel says that it compiles and that later steps are fast: once per kernel and
    process (a second optimizer of the same kernel, and later steps, say nothing); another kernel says it too."""
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    monkeypatch.setattr(compiled_module, "_ANNOUNCED", set())
    caplog.set_level(logging.WARNING, logger=compiled_module.__name__)

    def announcements() -> list[str]:
        return [r.getMessage() for r in caplog.records if "the first step compiles" in r.getMessage()]

    for name in ("adamp", "adamp", "sgdw"):
        params, grads = problem()
        optimizer = build(name, params, lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g
            optimizer.step()
    assert [message.split(":")[0] for message in announcements()] == ["AdamP", "SGDW"]
    assert "after it run the compiled kernel and are fast" in announcements()[0]


def test_a_torchao_kernel_says_once_that_its_first_step_compiles(monkeypatch, caplog) -> None:
    """An on_kernel class of a kernel that compiles its first step (torchao's) says so at its first step only."""
    monkeypatch.setattr(compiled_module, "_ANNOUNCED", set())
    caplog.set_level(logging.WARNING, logger=compiled_module.__name__)
    cls = on_kernel(torch.optim.AdamW, "proxadam")
    assert not cls.compiles_first_step  # torch's AdamW: eager
    monkeypatch.setattr(cls, "compiles_first_step", True)
    for _ in range(2):
        weight = torch.nn.Parameter(torch.randn(3, 3))
        optimizer = cls([weight], lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            weight.grad = torch.ones_like(weight)
            optimizer.step()
    messages = [r.getMessage() for r in caplog.records if "the first step compiles" in r.getMessage()]
    assert messages == [f"{cls.__name__}: the first step compiles its kernel with torch.compile (seconds to "
                        "minutes, once per process); the steps after it run the compiled kernel and are fast"]


# --- Complex parameters: the contract around the trajectory tests --------------------------------------------------


@pytest.mark.parametrize("name", TORCH_ADAM)
def test_fused_adam_kernel_refuses_complex_parameters_before_any_update(name: str) -> None:
    """torch's fused Adam kernel has no complex version: the error names fused at construction and in
    add_param_group (torch's own would come midway through a step, after the earlier groups were updated)."""
    real = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    complex_param = torch.nn.Parameter(torch.ones(3, dtype=torch.complex128))
    with pytest.raises(ValueError, match=r"^fused.*complex"):
        build(name, [real, complex_param], fused=True)
    optimizer = build(name, [real], fused=True)
    with pytest.raises(ValueError, match=r"^fused=True \(param group 1\).*complex"):
        optimizer.add_param_group({"params": [complex_param]})
    assert len(optimizer.param_groups) == 1  # the refused group is not left behind
    optimizer = build(name, [real])  # the default: fused for real parameters, another path for complex ones
    optimizer.add_param_group({"params": [complex_param], "fused": False})
    for p in (real, complex_param):
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert all(not torch.equal(p, torch.ones_like(p)) for p in (real, complex_param))


@pytest.mark.parametrize("name", [name for name in ANY_TENSOR if "decayed_fraction" in REGISTRY[name].decay_metrics])
def test_cautious_mask_of_a_complex_parameter_is_its_real_pairs(name: str) -> None:
    values = torch.randn(4, 3, dtype=torch.complex128)
    complex_param = torch.nn.Parameter(values.clone())
    pair = torch.nn.Parameter(torch.view_as_real(values).clone())
    optimizers = [build(name, [p], fused=False) for p in (complex_param, pair)]
    grad = torch.randn(4, 3, dtype=torch.complex128)
    complex_param.grad, pair.grad = grad, torch.view_as_real(grad).clone()
    for optimizer in optimizers:
        optimizer.step()
    assert torch.equal(optimizers[0].decay_mask(complex_param), optimizers[1].decay_mask(pair))
    assert optimizers[0].decayed_fraction(optimizers[0].param_groups[0]) == optimizers[1].decayed_fraction(
        optimizers[1].param_groups[0]
    )


# --- Tensor lr ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_check_lr_accepts_a_0_dim_floating_tensor(dtype: torch.dtype) -> None:
    lr = torch.tensor(1e-3, dtype=dtype)
    assert check_lr("lr", lr) is lr
    assert check_lr("lr", torch.tensor(0.0, dtype=dtype)) == 0
    assert check_lr("lr", 1e-3) == 1e-3


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (torch.tensor([1e-3]), TypeError, r"^lr \(param group 1\) must be .*0-dim.*shape \(1,\)"),
        (torch.tensor(1), TypeError, r"^lr \(param group 1\) must be .*floating.*torch.int64"),
        (torch.tensor(True), TypeError, r"^lr \(param group 1\) must be .*floating.*torch.bool"),
        (torch.tensor(1e-3 + 0j), TypeError, r"^lr \(param group 1\) must be .*floating.*torch.complex"),
        (torch.tensor(-1e-3), ValueError, r"^lr \(param group 1\) must be a finite number >= 0"),
        (torch.tensor(math.nan), ValueError, r"^lr \(param group 1\) must be a finite number >= 0"),
        (torch.tensor(math.inf, dtype=torch.float64), ValueError, r"^lr \(param group 1\) must be a finite number"),
        (torch.tensor(1e39, dtype=torch.float64), ValueError, r"^lr \(param group 1\) must be .*at most 3.403e\+38"),
    ],
)
def test_check_lr_names_a_bad_tensor(value: torch.Tensor, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        check_lr("lr", value, " (param group 1)")


def kernel_rules() -> list[KernelDecayRule]:
    rules = [info.rule for info in REGISTRY.values() if isinstance(info.rule, KernelDecayRule)]
    return [*rules, AdamCRule(lr_max=4e-3)]


@pytest.mark.parametrize("rule", kernel_rules(), ids=repr)
def test_rules_compute_the_same_settings_from_a_tensor_lr(rule: KernelDecayRule) -> None:
    """``kernel_settings``, ``decay_factor`` and ``check`` take a tensor lr: lr' is a tensor of the same value,
    wd' a Python float (torch's kernels take weight decay as a number), the factor the same number, and a setting
    that would flip the weights' sign is refused as with a float."""
    lr, alpha, weight_decay = 2e-3, 3e-3, 0.5
    tensor_lr = torch.tensor(lr, dtype=torch.float64)
    settings, tensor_settings = rule.kernel_settings(lr, alpha, weight_decay), rule.kernel_settings(
        tensor_lr, alpha, weight_decay
    )
    assert isinstance(tensor_settings.lr, torch.Tensor) and isinstance(tensor_settings.weight_decay, float)
    assert tensor_settings.lr.item() == settings.lr and tensor_settings.weight_decay == settings.weight_decay
    assert float(rule.decay_factor(tensor_lr, alpha, weight_decay)) == rule.decay_factor(lr, alpha, weight_decay)
    rule.check(tensor_lr, alpha, weight_decay)

    def refusal(lr: float | torch.Tensor, weight_decay: float) -> str | None:
        try:
            rule.check(lr, 3.0, weight_decay)
        except ValueError as error:
            return str(error)
        return None

    for weight_decay in (0.1, 1e3):  # 1e3: past the sign-flip limit of the rules that have one
        assert refusal(torch.tensor(3.0, dtype=torch.float64), weight_decay) == refusal(3.0, weight_decay)
    if not isinstance(rule, (L2Rule, ProximalRule)):  # the rules with a limit: the refusal is exercised
        assert refusal(3.0, 1e3) is not None
    with pytest.raises(ValueError, match="^lr must be"):
        rule.check(torch.tensor(-1.0), alpha, weight_decay)


@pytest.mark.parametrize("name", NAMES)
def test_a_tensor_lr_is_kept_and_filled_in_place(name: str) -> None:
    """On the default path (compiled kernels eagerly here; test_variants runs them compiled): a tensor lr stays
    the group's lr object, a scheduler fills it in place, alpha is a float (not an alias of the lr that the
    scheduler would move), the steps are the float lr's, and a state dict round trip continues them."""
    lr = torch.tensor(1e-2, dtype=torch.float64)
    eager = {"fused": False} if name in COMPILED else {}
    trained = []
    for given in (lr, 1e-2):
        params, grads = problem()
        optimizer = build(name, params, lr=given, weight_decay=0.1, **eager)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
        for step in range(3):
            for p, g in zip(params, grads):
                p.grad = g * (step + 1)
            optimizer.step()
            scheduler.step()
        trained.append((params, optimizer))
    (params, optimizer), (float_params, _) = trained
    assert all(torch.equal(p, q) for p, q in zip(params, float_params))
    group = optimizer.param_groups[0]
    assert group["lr"] is lr and lr.item() == pytest.approx(1e-2 / 4, rel=1e-15)
    assert type(group[LR_AT_CONSTRUCTION]) is float and group[LR_AT_CONSTRUCTION] == 1e-2

    twin_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin = build(name, twin_params, lr=torch.tensor(1.0, dtype=torch.float64), weight_decay=0.0, **eager)
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert isinstance(twin.param_groups[0]["lr"], torch.Tensor) and twin.param_groups[0]["lr"].item() == lr.item()
    _, grads = problem()
    for p, q, g in zip(params, twin_params, grads):
        p.grad, q.grad = g, g.clone()
    optimizer.step()
    twin.step()
    assert_same_state(optimizer, twin, params, twin_params)


@pytest.mark.parametrize("name", TORCH_ADAM)
def test_torch_adam_foreach_refuses_a_tensor_lr_before_any_update(name: str) -> None:
    """torch's foreach Adam kernel takes no tensor lr unless capturable: refused at construction and, when a
    tensor lr reaches a foreach group later, at the step before any group is updated."""
    with pytest.raises(ValueError, match=r"^lr as a Tensor is not supported .*foreach=True"):
        build(name, [torch.nn.Parameter(torch.ones(3))], lr=torch.tensor(1e-3), foreach=True)
    first, second = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    optimizer = build(name, [{"params": [first]}, {"params": [second], "foreach": True}], fused=False)
    optimizer.param_groups[1]["lr"] = torch.tensor(1e-3)
    for p in (first, second):
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r"^lr as a Tensor is not supported .*foreach=True.*param group 1"):
        optimizer.step()
    assert torch.equal(first, torch.ones(3)) and torch.equal(second, torch.ones(2)) and not optimizer.state


@pytest.mark.parametrize("name", ["adamw", "proxadam", "adamc", "sgd-l2", "sgdw"])
def test_torch_kernels_get_a_tensor_lr_where_they_need_one(name: str, monkeypatch) -> None:
    """The fused kernels get lr' as a tensor (no device sync, as torch passes a tensor lr); the single-tensor and
    foreach paths a Python float; weight decay is always a number."""
    # torch's Adam.step calls torch.optim.adam.adam; the SGD variants call torch's sgd as sgd.torch_sgd
    module, function = ("torch.optim.adam", "adam") if REGISTRY[name].family == "adam" else (
        "lightning_decay.optim.sgd", "torch_sgd"
    )
    module = importlib.import_module(module)
    original = getattr(module, function)
    seen: list[tuple[Any, Any]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append((kwargs["lr"], kwargs["weight_decay"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, function, spy)
    sgd = {"momentum": 0.0} if REGISTRY[name].family == "sgd" else {}  # no momentum: torch's SGD kernel
    for options, kind in (({"fused": True}, torch.Tensor), ({"fused": False, "foreach": False}, float)):
        seen.clear()
        params, grads = problem()
        optimizer = REGISTRY[name].build(params, lr=torch.tensor(1e-2, dtype=torch.float64), **sgd, **options)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        assert seen and all(isinstance(lr, kind) and type(wd) is float for lr, wd in seen), (options, seen)


def test_decay_settings_take_a_tensor_lr_and_give_each_group_its_own() -> None:
    """``DecaySettings(lr=tensor)`` trains exactly as the float lr, with one 0-dim tensor lr per parameter group
    (a shared one would tie the groups' schedules), the schedule filling it in place; hparams keep a number."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_decay import DecayMixin, DecaySettings

    class Tiny(DecayMixin, pl.LightningModule):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

        def training_step(self, batch, batch_index):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

    def fit(lr) -> Tiny:
        torch.manual_seed(0)
        model = Tiny(decay=DecaySettings(optimizer="proxadam", lr=lr, weight_decay=0.1, warmup_steps=2))
        generator = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randn(32, 4, generator=generator), torch.randn(32, 1, generator=generator))
        trainer = pl.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu")
        trainer.fit(model, DataLoader(data, batch_size=8))
        return model

    with_float, with_tensor = fit(0.01), fit(torch.tensor(0.01, dtype=torch.float64))
    assert with_tensor.hparams["decay"]["lr"] == 0.01 and with_tensor.hparams["decay"]["tensor_lr"] is True
    lrs = [group["lr"] for group in with_tensor.trainer.optimizers[0].param_groups]
    assert all(isinstance(lr, torch.Tensor) and lr.ndim == 0 for lr in lrs) and lrs[0] is not lrs[1]
    assert not isinstance(with_float.trainer.optimizers[0].param_groups[0]["lr"], torch.Tensor)
    for a, b in zip(with_float.parameters(), with_tensor.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="lr must be a number or a 0-dim floating tensor"):
        DecaySettings(lr=torch.tensor([1e-3]))
