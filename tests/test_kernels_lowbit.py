"""The low-bit kernels: every scalar rule on torchao's ``_AdamW`` (float32 / float64 weights), ``AdamW8bit``,
``AdamW4bit``, ``AdamWFp8`` and bitsandbytes' 8-bit AdamWs (where installed).

Trajectories against the float64 reference of ``tests/reference.py``, exact zero-gradient shrinking, no recompiles
of torchao's compiled step, a small model's loss against the float32 variant's, state dict and bitwise Lightning
resume. Each torchao step is a torch.compile'd per-parameter function: every (kernel, shape, dtype) compiles once per
process (~10-30 s cold on 2 CPU cores, seconds with inductor's on-disk cache), so the tests share few shapes: (8, 8)
for the float kernels, (64, 64) (4096 values: the smallest torchao quantizes) for the 8-bit, 4-bit and fp8 states.
"""

from __future__ import annotations

import copy
from importlib.util import find_spec
from typing import Any

import pytest
import torch

from lightning_decay import on_kernel
from lightning_decay.optim.registry import REGISTRY
from tests import trajectory
from tests.reference import ReferenceState, reference_step, warmup_cosine
from tests.test_kernels import DECOUPLED_ADAM, FACTORS, TeacherProblem, fit, two_matrix_model
from tests.trajectory import max_relative_error

# --- torchao ------------------------------------------------------------------------------------------------------

needs_torchao = pytest.mark.skipif(find_spec("torchao") is None, reason="torchao is not installed (extra [lowbit])")
SMALL_GROUPS = [  # three groups, different lr and weight decay (one without), one shape: one compiled graph
    {"shapes": [(8, 8)], "lr": 3e-3, "weight_decay": 0.5},
    {"shapes": [(8, 8)], "lr": 1e-3, "weight_decay": 0.0},
    {"shapes": [(8, 8)], "lr": 2e-3, "weight_decay": 0.05},
]


def torchao_optim() -> Any:
    import torchao.optim

    return torchao.optim


def run_small(cls: type[torch.optim.Optimizer], dtype: torch.dtype, steps: int = 120, **options: Any):
    """``cls`` on :data:`SMALL_GROUPS` in ``dtype`` (warmup + cosine; gradients from the weights in float64)."""
    params = [[w.to(dtype).requires_grad_() for w in group] for group in trajectory.initial_weights(SMALL_GROUPS)]
    optimizer = cls([{"params": ps, "lr": g["lr"], "weight_decay": g["weight_decay"]}
                     for ps, g in zip(params, SMALL_GROUPS)], **options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    for step in range(steps):
        for group_index, group in enumerate(params):
            for param_index, p in enumerate(group):
                p.grad = trajectory.gradient(p.detach().double(), step, 10 * group_index + param_index).to(dtype)
        optimizer.step()
        scheduler.step()
    return [[p.detach().double() for p in group] for group in params]


def small_reference(name: str, steps: int = 120) -> list[list[torch.Tensor]]:
    def step(w, g, state, lr, alpha, group_index):
        return reference_step(name, w, g, state, lr, alpha, SMALL_GROUPS[group_index]["weight_decay"])

    return trajectory.run_reference(lambda w: ReferenceState(torch.zeros_like(w), torch.zeros_like(w)), step,
                                    SMALL_GROUPS, True, steps)


@needs_torchao
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_torchao_adamw_kernel_adds_no_error_of_its_own(dtype: torch.dtype) -> None:
    """torchao's ``_AdamW`` (full-precision state) as the kernel of every decoupled rule, against the float64
    reference (warmup + cosine, three groups, 120 steps). torchao computes in float32 (``p.float()``, also for
    float64 weights; bias corrections of a float32 step count), so the bare kernel is 2e-5 (relative) off the
    reference of plain AdamW here: every rule on it stays within 3x of that and below 1e-4."""
    kernel = torchao_optim()._AdamW
    bare = max_relative_error(run_small(kernel, dtype), small_reference("adamw"))
    assert 1e-7 < bare < 5e-5
    for name in DECOUPLED_ADAM:
        expected = small_reference(name)
        ours = max_relative_error(run_small(on_kernel(kernel, name), dtype), expected)
        assert ours < 3 * bare and ours < 1e-4, (name, ours, bare)
    assert max_relative_error(expected, trajectory.initial_weights(SMALL_GROUPS)) > 0.01  # it moved


@needs_torchao
@pytest.mark.parametrize("kernel_name", ["AdamW8bit", "AdamW4bit", "AdamWFp8"])
def test_quantized_state_with_zero_gradients_shrinks_by_exactly_the_rules_factor(kernel_name: str) -> None:
    """With zero gradients the quantized moments stay zero, and each step multiplies the weights by the rule's
    factor (written from its formula; lr changing every step) to float32 rounding (2 ulp)."""
    kernel = getattr(torchao_optim(), kernel_name)
    names = DECOUPLED_ADAM if kernel_name == "AdamW8bit" else ["proxadam"]
    for name in names:
        w = torch.nn.Parameter(torch.linspace(-2, 2, 4096).reshape(64, 64))
        alpha, wd = 0.05, 0.3
        optimizer = on_kernel(kernel, name)([w], lr=alpha, weight_decay=wd)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: [1.0, 0.6, 0.2][min(step, 2)])
        for _ in range(3):
            lr = optimizer.param_groups[0]["lr"].item()
            factor = FACTORS[name](lr, alpha, wd)
            assert optimizer.decay_factor(optimizer.param_groups[0]) == pytest.approx(factor, rel=1e-6)
            before = w.detach().clone()
            w.grad = torch.zeros_like(w)
            optimizer.step()
            scheduler.step()
            torch.testing.assert_close(w.detach(), before * factor, rtol=2.5e-7, atol=0)
        assert type(optimizer.state[w]["exp_avg"]).__name__.startswith("OptimState"), name


@needs_torchao
@pytest.mark.parametrize("name", ["adamc", "proxadam"])
def test_per_step_settings_do_not_recompile_torchaos_step(name: str) -> None:
    """AdamC's ``wd'`` and ProxAdam's ``lr'`` change every step under a schedule; torchao compiles its step with
    ``weight_decay`` as an argument, so they are handed over as 0-dim tensors: after the first step no new graph
    (counted by dynamo) and no recompile (dynamo set to fail on one) over 6 more steps."""
    from torch._dynamo.utils import counters

    kernel = torchao_optim().AdamW8bit
    w = torch.nn.Parameter(torch.randn(64, 64, generator=torch.Generator().manual_seed(1)))
    optimizer = on_kernel(kernel, name)([w], lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.8**step)
    w.grad = torch.randn(64, 64)
    optimizer.step()
    scheduler.step()
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # dynamo counted the compiled step (in this test or an earlier one)
    settings = set()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(6):
            kernel_settings = optimizer.kernel_settings_for(optimizer.param_groups[0])
            settings.add((float(kernel_settings.lr), kernel_settings.weight_decay))
            w.grad = torch.randn(64, 64)
            optimizer.step()
            scheduler.step()
    assert counters["stats"]["unique_graphs"] == graphs
    assert len(settings) == 6  # the settings really changed every step


@needs_torchao
@pytest.mark.parametrize("name", ["proxadam", "adamw-paper"])
def test_a_small_model_trains_to_the_float32_variants_loss_with_8bit_state(name: str) -> None:
    """The variant on AdamW8bit reaches the float32 variant's final loss within 10% (relative) after 40 steps of
    warmup + cosine on a teacher problem where training lowers the loss more than 5x."""
    problem = TeacherProblem()
    info = REGISTRY[name]
    reference = problem.train(info.optimizer, **info.kwargs)
    eight_bit = problem.train(on_kernel(torchao_optim().AdamW8bit, name))
    assert reference < problem.initial_loss() / 5
    assert abs(eight_bit - reference) < 0.1 * reference, (eight_bit, reference)


@needs_torchao
def test_an_8bit_state_dict_round_trips_through_a_file(tmp_path) -> None:
    """state_dict -> torch.save -> torch.load (as Lightning calls it) -> load_state_dict into a fresh optimizer: the
    quantized state and the alpha bookkeeping come back, and both continue bit for bit; a bare AdamW8bit's state
    dict (its tensor subclasses as they are) loads too."""
    cls = on_kernel(torchao_optim().AdamW8bit, "proxadam")
    weights = [torch.nn.Parameter(torch.randn(64, 64, generator=torch.Generator().manual_seed(i))) for i in range(2)]
    optimizer = cls([{"params": [weights[0]]}, {"params": [weights[1]], "weight_decay": 0.0}], lr=1e-2,
                    weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, 2, 10))

    def step(ws: list[torch.Tensor], o: torch.optim.Optimizer, s: Any, index: int) -> None:
        for i, w in enumerate(ws):
            w.grad = trajectory.gradient(w.detach().double(), index, i).float()
        o.step()
        s.step()

    for index in range(3):
        step(weights, optimizer, scheduler, index)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp_path / "state.pt")
    twins = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    twin = cls([{"params": [twins[0]]}, {"params": [twins[1]]}])
    twin_scheduler = torch.optim.lr_scheduler.LambdaLR(twin, lambda step: warmup_cosine(step, 2, 10))
    # as Lightning loads a checkpoint: a callable map_location (torch cannot apply one to a tensor subclass, so the
    # quantized state is stored as its plain inner tensors) and weights_only
    saved = torch.load(tmp_path / "state.pt", map_location=lambda storage, location: storage, weights_only=True)
    assert saved["optimizer"]["state"][0]["exp_avg"]["tensor_subclass"].endswith("OptimState8bit")
    twin.load_state_dict(saved["optimizer"])
    twin_scheduler.load_state_dict(saved["scheduler"])
    assert type(twin.state[twins[0]]["exp_avg"]).__name__ == "OptimState8bit"
    assert twin.initial_lr(twin.param_groups[0]) == pytest.approx(1e-2, rel=1e-7)  # torchao's float32 lr
    assert twin.param_groups[1]["weight_decay"] == 0.0
    for index in range(3, 6):
        step(weights, optimizer, scheduler, index)
        step(twins, twin, twin_scheduler, index)
    for a, b in zip(weights, twins):
        assert torch.equal(a, b)
    bare = torchao_optim().AdamW8bit.state_dict(optimizer)  # the kernel's own form (tensor subclasses)
    assert type(bare["state"][0]["exp_avg"]).__name__ == "OptimState8bit"
    loaded = cls([{"params": [torch.nn.Parameter(w.detach().clone())]} for w in weights])
    loaded.load_state_dict(bare)
    assert type(next(iter(loaded.state.values()))["exp_avg"]).__name__ == "OptimState8bit"


@needs_torchao
def test_bitwise_resume_through_lightning_with_an_8bit_kernel(tmp_path) -> None:
    """ProxAdam on AdamW8bit through DecayMixin: a fit resumed from its epoch-1 checkpoint ends bitwise where the
    uninterrupted 2-epoch fit ends (weights and the quantized moments)."""
    settings = {"optimizer": "proxadam", "kernel": "torchao.optim.AdamW8bit"}
    whole = two_matrix_model(**settings)
    whole_trainer = fit(whole, tmp_path / "whole", 2)
    first = two_matrix_model(**settings)
    fit(first, tmp_path / "first", 1)
    resumed = two_matrix_model(**settings)
    resumed_trainer = fit(resumed, tmp_path / "resumed", 2, ckpt_path=tmp_path / "first" / "ckpt" / "last.ckpt")
    assert resumed_trainer.global_step == whole_trainer.global_step == 8
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    states = [trainer.optimizers[0].state for trainer in (whole_trainer, resumed_trainer)]
    for p, q in zip(whole.parameters(), resumed.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = states[0][p][key], states[1][q][key]
            assert type(a).__name__ == "OptimState8bit"
            assert torch.equal(a.dequantize(), b.dequantize()), key


@needs_torchao
@pytest.mark.parametrize("kernel", ["torchao.optim.Adam8bit", "torchao.optim.Adam4bit"])
def test_the_monitor_reads_adams_quantized_state(tmp_path, kernel: str) -> None:
    """Adam + L2 on a quantized-state Adam through DecayMixin with EffectiveDecayMonitor: the monitor reads Adam's
    8-/4-bit second moment (a torchao tensor subclass), and its logged preconditioned decay at the last step is
    ``lr * wd / D``, ``D = sqrt(v / (1 - beta2^t)) + eps``, evaluated here in float64 on the dequantized state."""
    import csv

    from lightning_decay.callbacks import EffectiveDecayMonitor

    model = two_matrix_model(optimizer="adaml2", kernel=kernel)
    trainer = fit(model, tmp_path, 1, callbacks=[EffectiveDecayMonitor()])
    optimizer = trainer.optimizers[0]
    rows = [row for row in csv.DictReader(open(tmp_path / "metrics.csv")) if row.get("preconditioned_decay/decay")]
    assert len(rows) == trainer.global_step == 4
    last, group = rows[-1], optimizer.param_groups[0]
    beta2, eps, lr = group["betas"][1], group["eps"], float(last["lr/decay"])
    expected = {}
    for name, param in model.named_parameters():
        state = optimizer.state[param]
        assert type(state["exp_avg_sq"]).__name__.startswith("OptimState")  # quantized, not a plain tensor
        v = state["exp_avg_sq"].dequantize().double()
        step = float(state["step"])
        denominator = (v / (1 - beta2**step)).sqrt() + eps
        expected[name] = lr * group["weight_decay"] / denominator
        assert float(last[f"preconditioned_decay_mean/{name}"]) == pytest.approx(float(expected[name].mean()), rel=1e-5)
        assert float(last[f"preconditioned_decay_max/{name}"]) == pytest.approx(float(expected[name].max()), rel=1e-5)
    overall = torch.cat([e.flatten() for e in expected.values()]).mean()
    assert float(last["preconditioned_decay/decay"]) == pytest.approx(float(overall), rel=1e-5)


# --- bitsandbytes (where installed: its CPU backend runs the 8-bit AdamW here) ----------------------------------------

needs_bitsandbytes = pytest.mark.skipif(find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")


@needs_bitsandbytes
@pytest.mark.parametrize("kernel_name", ["AdamW8bit", "PagedAdamW8bit"])
def test_bitsandbytes_8bit_adamw_runs_every_rule(kernel_name: str) -> None:
    """bitsandbytes' 8-bit AdamW (plain uint8 state tensors, no compile): zero gradients shrink the weights by each
    rule's factor, the teacher problem trains to the float32 variant's loss within 10%, and the state dict loads."""
    import bitsandbytes

    kernel = getattr(bitsandbytes.optim, kernel_name)
    for name in DECOUPLED_ADAM:
        w = torch.nn.Parameter(torch.linspace(-2, 2, 4096).reshape(64, 64))
        optimizer = on_kernel(kernel, name)([w], lr=0.05, weight_decay=0.3)
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.6)
        before = w.detach().clone()
        w.grad = torch.zeros_like(w)
        optimizer.step()
        torch.testing.assert_close(w.detach(), before * FACTORS[name](0.03, 0.05, 0.3), rtol=2.5e-7, atol=0)
        assert optimizer.state[w]["state1"].dtype == torch.uint8
    problem = TeacherProblem()
    reference = problem.train(REGISTRY["proxadam"].optimizer)
    assert abs(problem.train(on_kernel(kernel, "proxadam")) - reference) < 0.1 * reference
    twin = on_kernel(kernel, "proxadam")([torch.nn.Parameter(w.detach().clone())])
    twin.load_state_dict(copy.deepcopy(on_kernel(kernel, "proxadam").state_dict(optimizer)))
