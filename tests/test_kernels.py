"""Every scalar decay rule on another optimizer's kernel (``lightning_decay.on_kernel``).

torch's AdamW (single-tensor, foreach, fused) and Adam as kernels against the float64 reference of
``tests/reference.py`` (warmup + cosine, three groups); ProxAdam's rule on ``torch.optim.Muon`` against the proximal
step written from its formula around torch's own Muon update; the zero-gradient factor against each rule's formula;
the refusals; copies, pickles and state dicts; the mixin and the monitor; the benchmark. The low-bit kernels
(torchao, bitsandbytes) are in ``tests/test_kernels_lowbit.py``.
"""

from __future__ import annotations

import copy
import inspect
import pickle
from typing import Any

import pytest
import torch

from lightning_decay import on_kernel
from lightning_decay.optim.kernels import kernel_decoupling
from lightning_decay.optim.registry import REGISTRY, VariantInfo, rule_of
from lightning_decay.optim.rules import AdamCRule, ProxAdamRule
from tests import trajectory
from tests.reference import warmup_cosine
from tests.test_variants import GROUPS, run_reference
from tests.trajectory import max_relative_error

SCALAR_ADAM = [name for name, info in REGISTRY.items() if info.family == "adam" and not info.elementwise]
DECOUPLED_ADAM = [name for name in SCALAR_ADAM if REGISTRY[name].decoupled]
ELEMENTWISE = [name for name, info in REGISTRY.items() if info.elementwise]
TORCH_PATHS = [{"foreach": False, "fused": False}, {"foreach": True}, {"fused": True}]


def run_on_kernel(cls: type[torch.optim.Optimizer], steps: int = 120, dtype: torch.dtype = torch.float64,
                  **options: Any) -> tuple[list[list[torch.Tensor]], torch.optim.Optimizer]:
    """``cls`` on the three-group problem of ``tests/test_variants.py`` with warmup + cosine; weights as float64."""
    groups = GROUPS["adam"]

    def make(params):
        param_groups = [{"params": [p.data.to(dtype).requires_grad_() if dtype != torch.float64 else p for p in ps],
                         "lr": g["lr"], "weight_decay": g["weight_decay"]} for ps, g in zip(params, groups)]
        return cls(param_groups, **options)

    if dtype == torch.float64:
        return trajectory.run_optimizer(make, groups, True, steps)
    # a float32 run: the same gradients, computed from the float32 weights
    params = [[w.to(dtype).requires_grad_() for w in group] for group in trajectory.initial_weights(groups)]
    optimizer = cls([{"params": ps, "lr": g["lr"], "weight_decay": g["weight_decay"]} for ps, g in zip(params, groups)],
                    **options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    for step in range(steps):
        for group_index, group in enumerate(params):
            for param_index, p in enumerate(group):
                grad = trajectory.gradient(p.detach().double(), step, 10 * group_index + param_index)
                p.grad = grad.to(dtype)
        optimizer.step()
        scheduler.step()
    return [[p.detach().double() for p in group] for group in params], optimizer


# --- torch's AdamW and Adam as kernels: exact ---------------------------------------------------------------------


@pytest.mark.parametrize("name", SCALAR_ADAM)
def test_torch_kernels_match_the_float64_reference(name: str) -> None:
    """Every scalar Adam rule on torch.optim.AdamW (its L2 rule on torch.optim.Adam), on each of torch's paths,
    follows the float64 reference to the built-in classes' tolerance (1e-12 relative, 120 steps)."""
    kernel = torch.optim.AdamW if REGISTRY[name].decoupled else torch.optim.Adam
    cls = on_kernel(kernel, name)
    expected = run_reference(REGISTRY[name])
    for options in TORCH_PATHS:
        actual, optimizer = run_on_kernel(cls, **options)
        assert max_relative_error(actual, expected) < 1e-12, options
        assert isinstance(optimizer, kernel) and rule_of(optimizer, optimizer.param_groups[0]) is not None


def test_a_tensor_lr_on_the_fused_kernel() -> None:
    """A 0-dim tensor lr (filled in place by the scheduler) on the fused AdamW kernel: still the reference."""
    cls = on_kernel(torch.optim.AdamW, "proxadam")
    groups = GROUPS["adam"]

    def make(params):
        return cls([{"params": ps, "lr": torch.tensor(g["lr"], dtype=torch.float64), "weight_decay": g["weight_decay"]}
                    for ps, g in zip(params, groups)], fused=True)

    actual, optimizer = trajectory.run_optimizer(make, groups, True, 120)
    assert all(isinstance(group["lr"], torch.Tensor) for group in optimizer.param_groups)
    assert max_relative_error(actual, run_reference(REGISTRY["proxadam"])) < 1e-12


def test_adamc_on_a_kernel_follows_the_groups_normalized_flag() -> None:
    """AdamC on AdamW: a group with normalized=False decays as torch's AdamW, a normalized one as AdamC."""
    cls = on_kernel(torch.optim.AdamW, "adamc")
    w = [torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)]
    optimizer = cls([{"params": [w[0]]}, {"params": [w[1]], "normalized": False}], lr=0.1, weight_decay=0.5)
    assert optimizer.defaults["normalized"] is True and "lr_max" in optimizer.defaults
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)  # lr_t = alpha / 2 from now on
    for p in w:
        p.grad = torch.zeros(3)
    optimizer.step()
    torch.testing.assert_close(w[0].detach(), torch.full((3,), 1 - 0.05**2 / 0.1 * 0.5), rtol=1e-6, atol=0)
    torch.testing.assert_close(w[1].detach(), torch.full((3,), 1 - 0.05 * 0.5), rtol=1e-6, atol=0)


#: Each decoupled rule's zero-gradient factor, written from its formula (blog notation; AdamC with lr_max = alpha).
FACTORS = {
    "adamw": lambda lr, alpha, wd: 1 - lr * wd,
    "adamw-paper": lambda lr, alpha, wd: 1 - lr / alpha * wd,
    "proxadam": lambda lr, alpha, wd: 1 / (1 + lr / alpha * wd),
    "adamc": lambda lr, alpha, wd: 1 - lr**2 / alpha * wd,
}


@pytest.mark.parametrize("name", DECOUPLED_ADAM)
def test_zero_gradients_shrink_by_the_rules_factor_on_torch_adamw(name: str) -> None:
    """With zero gradients each step multiplies the weights by the rule's factor (the monitors' decay_factor)."""
    cls = on_kernel(torch.optim.AdamW, name)
    w = torch.nn.Parameter(torch.linspace(-2, 2, 12, dtype=torch.float64))
    alpha, wd = 0.05, 0.3
    optimizer = cls([w], lr=alpha, weight_decay=wd)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: [1.0, 0.6, 0.2][min(step, 2)])
    for _ in range(3):
        lr = optimizer.param_groups[0]["lr"]
        expected_factor = FACTORS[name](lr, alpha, wd)
        assert optimizer.decay_factor(optimizer.param_groups[0]) == pytest.approx(expected_factor, rel=1e-14)
        before = w.detach().clone()
        w.grad = torch.zeros_like(w)
        optimizer.step()
        scheduler.step()
        torch.testing.assert_close(w.detach(), before * expected_factor, rtol=1e-14, atol=0)


# --- Muon -------------------------------------------------------------------------------------------------------------


def test_proxadams_rule_on_muon_is_the_proximal_step_with_muons_update() -> None:
    """ProxAdam's rule on torch.optim.Muon: ``w <- (w - lr_t * adjust * O_t) / (1 + eta_t * wd)``, where
    ``w - lr_t * adjust * O_t`` is torch's own Muon step without decay from the same weights and momentum (checked
    every step of a warmup + cosine schedule, two groups with different lr and weight decay)."""
    torch.manual_seed(0)
    shapes, lrs, wds = [(6, 4), (3, 5)], [0.02, 0.05], [0.4, 0.1]
    cls = on_kernel(torch.optim.Muon, "proxadam")
    assert cls.__name__ == "ProxAdamOnMuon"
    weights = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    optimizer = cls([{"params": [w], "lr": lr, "weight_decay": wd} for w, lr, wd in zip(weights, lrs, wds)])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, 3, 12))
    plain_weights = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    plain = torch.optim.Muon([{"params": [w], "lr": lr} for w, lr in zip(plain_weights, lrs)], weight_decay=0.0)
    for step in range(12):
        expected = []
        for index, (w, p, alpha, wd) in enumerate(zip(weights, plain_weights, lrs, wds)):
            w.grad = trajectory.gradient(w.detach(), step, index)
            lr = optimizer.param_groups[index]["lr"]
            with torch.no_grad():
                p.copy_(w)
            p.grad = w.grad.clone()
            plain.param_groups[index]["lr"] = lr
            if step > 0:
                plain.state[p]["momentum_buffer"] = optimizer.state[w]["momentum_buffer"].clone()
            expected.append((lr, alpha, wd))
        plain.step()
        optimizer.step()
        scheduler.step()
        for w, p, (lr, alpha, wd) in zip(weights, plain_weights, expected):
            torch.testing.assert_close(w.detach(), p.detach() / (1 + lr / alpha * wd), rtol=1e-13, atol=1e-15)
    assert weights[0].abs().max() < 10  # sane


def test_the_generic_class_takes_the_rule_as_keyword() -> None:
    """``on_kernel(kernel)``: ``Kernel<Name>(params, ..., rule=...)``, as KernelAdam; a registry record builds it."""
    cls = on_kernel(torch.optim.Muon)
    assert cls.__name__ == "KernelMuon" and cls is on_kernel("torch.optim.Muon")
    assert inspect.signature(cls).parameters["rule"].kind is inspect.Parameter.KEYWORD_ONLY
    record = VariantInfo("muon-prox-test", cls, ProxAdamRule(), "adam", "torch", "w <- (w - lr_t O_t)/(1 + eta_t*wd)",
                         ("decay_factor",))
    w = torch.randn(4, 3, requires_grad=True)
    optimizer = record.build([w], lr=0.02, weight_decay=0.1)
    assert isinstance(optimizer.decay_rule, ProxAdamRule) and rule_of(optimizer, optimizer.param_groups[0])
    assert optimizer.param_groups[0]["weight_decay"] == 0.1
    w.grad = torch.randn(4, 3)
    optimizer.step()
    with pytest.raises(TypeError, match="rule"):
        cls([torch.randn(2, 2, requires_grad=True)])
    with pytest.raises(ValueError, match="variant 'adamp' cannot run on kernel Muon: its decay is elementwise"):
        cls([torch.randn(2, 2, requires_grad=True)], rule=REGISTRY["adamp"].rule)


# --- refusals ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_rules_are_refused_saying_why(name: str) -> None:
    with pytest.raises(ValueError, match=rf"variant '{name}' cannot run on kernel AdamW: its decay is elementwise"):
        on_kernel(torch.optim.AdamW, name)


def test_l2_and_decoupled_mismatches_and_bad_kernels_are_refused() -> None:
    with pytest.raises(ValueError, match="'adaml2' cannot run on kernel AdamW: .*L2"):
        on_kernel(torch.optim.AdamW, "adaml2")
    with pytest.raises(ValueError, match="'proxadam' cannot run on kernel SGD: .*decoupled"):
        on_kernel(torch.optim.SGD, "proxadam")
    assert kernel_decoupling(torch.optim.Adam) == {True, False}
    with pytest.raises(ValueError, match="decoupled_weight_decay"):
        on_kernel(torch.optim.Adam, "proxadam")([torch.zeros(2, requires_grad=True)], decoupled_weight_decay=False)
    with pytest.raises(ValueError, match="^kernel 'no_such_module.AdamW' does not import"):
        on_kernel("no_such_module.AdamW", "adamw")
    with pytest.raises(ValueError, match="^kernel 'AdamW' is not a class path"):
        on_kernel("AdamW", "adamw")
    with pytest.raises(TypeError, match="^kernel must be a torch.optim.Optimizer subclass"):
        on_kernel(dict, "adamw")
    with pytest.raises(TypeError, match="^kernel must be"):
        on_kernel("collections.OrderedDict", "adamw")
    with pytest.raises(TypeError, match="^kernel ProxAdam already applies a decay rule"):
        on_kernel(REGISTRY["proxadam"].optimizer, "adamw")
    with pytest.raises(ValueError, match="unknown variant 'proxadamm'"):
        on_kernel(torch.optim.AdamW, "proxadamm")


def test_group_settings_are_checked_naming_the_argument() -> None:
    cls = on_kernel(torch.optim.AdamW, "adamw")
    with pytest.raises(ValueError, match="lr \\* weight_decay"):
        cls([torch.zeros(2, requires_grad=True)], lr=2.0, weight_decay=0.6)
    with pytest.raises(ValueError, match="weight_decay"):
        cls([torch.zeros(2, requires_grad=True)], weight_decay=-1.0)


# --- a torch optimizer: classes, copies, pickles, state dicts, hooks -------------------------------------------------


def test_one_class_per_kernel_and_rule_with_a_readable_name() -> None:
    assert on_kernel(torch.optim.AdamW, "proxadam") is on_kernel("torch.optim.AdamW", ProxAdamRule())
    assert on_kernel(torch.optim.AdamW, "adamc") is on_kernel(torch.optim.AdamW, AdamCRule())
    assert on_kernel(torch.optim.AdamW, AdamCRule(lr_max=0.1)) is not on_kernel(torch.optim.AdamW, "adamc")
    assert on_kernel(torch.optim.AdamW, "adamw").__name__ == "AdamWOnAdamW"
    assert on_kernel(torch.optim.AdamW, "adamw-paper").__name__ == "AdamWPaperOnAdamW"
    assert issubclass(on_kernel(torch.optim.AdamW, "proxadam"), torch.optim.AdamW)


@pytest.mark.parametrize("name", ["proxadam", "adamc"])
def test_copies_pickles_and_state_dicts_continue_bit_for_bit(name: str) -> None:
    """A deep copy and a pickled copy continue exactly as the original; the state dict loads into torch's AdamW
    and back (the state is the kernel's); the step hooks run once per step."""
    cls = on_kernel(torch.optim.AdamW, name)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    optimizer = cls([{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}], lr=0.01,
                    weight_decay=0.2)
    calls = []
    optimizer.register_step_pre_hook(lambda *args: calls.append(1))
    x = torch.randn(8, 5)

    def step(m: torch.nn.Module, o: torch.optim.Optimizer) -> None:
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()

    step(model, optimizer)
    assert calls == [1]
    twins = []
    for clone in (lambda: copy.deepcopy((model, optimizer)), lambda: pickle.loads(pickle.dumps((model, optimizer)))):
        twin_model, twin = clone()
        assert type(twin) is cls and twin.decay_rule.name == optimizer.decay_rule.name
        twins.append((twin_model, twin))
    plain_model = copy.deepcopy(model)
    plain = torch.optim.AdamW([{"params": [plain_model.weight]}, {"params": [plain_model.bias]}])
    plain.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # load_state_dict keeps the tensors given
    reloaded_model = copy.deepcopy(plain_model)
    reloaded = cls([{"params": [reloaded_model.weight]}, {"params": [reloaded_model.bias]}])
    reloaded.load_state_dict(copy.deepcopy(plain.state_dict()))
    twins.append((reloaded_model, reloaded))
    for _ in range(3):
        step(model, optimizer)
        for twin_model, twin in twins:
            step(twin_model, twin)
    for index, (twin_model, _) in enumerate(twins):
        for a, b in zip(model.parameters(), twin_model.parameters()):
            assert torch.equal(a, b), index
    assert calls == [1] * 4



class TeacherProblem:
    """A two-matrix tanh network (no biases: every parameter a 64 x 64 matrix, one compiled graph) fitting a fixed
    random teacher of the same form."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(256, 64, generator=generator)
        teacher = [torch.randn(64, 64, generator=generator) / 8 for _ in range(2)]
        self.y = torch.tanh(self.x @ teacher[0]) @ teacher[1]
        self.initial = [torch.randn(64, 64, generator=generator) / 8 for _ in range(2)]

    def train(self, cls: type[torch.optim.Optimizer], steps: int = 40, **options: Any) -> float:
        weights = [torch.nn.Parameter(w.clone()) for w in self.initial]
        optimizer = cls(weights, lr=1e-2, weight_decay=1e-2, **options)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, 10, steps))
        for _ in range(steps):
            optimizer.zero_grad()
            loss = (torch.tanh(self.x @ weights[0]) @ weights[1] - self.y).pow(2).mean()
            loss.backward()
            optimizer.step()
            scheduler.step()
        with torch.no_grad():
            return (torch.tanh(self.x @ weights[0]) @ weights[1] - self.y).pow(2).mean().item()

    def initial_loss(self) -> float:
        return (torch.tanh(self.x @ self.initial[0]) @ self.initial[1] - self.y).pow(2).mean().item()



# --- Lightning: the mixin and the monitor with a kernel (resume: test_kernels_lowbit.py) --------------------------


def two_matrix_model(**decay: Any) -> Any:
    """A DecayMixin model whose parameters are two 64 x 64 matrices (8-bit state; one compiled torchao graph)."""
    from lightning.pytorch import LightningModule

    from lightning_decay import DecayMixin, DecaySettings

    class TwoMatrices(DecayMixin, LightningModule):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.first = torch.nn.Linear(64, 64, bias=False)
            self.second = torch.nn.Linear(64, 64, bias=False)

        def training_step(self, batch: Any, batch_index: int) -> torch.Tensor:
            x, y = batch
            return (self.second(torch.tanh(self.first(x))) - y).pow(2).mean()

    torch.manual_seed(0)
    return TwoMatrices(decay=DecaySettings(**{"lr": 1e-2, "weight_decay": 1e-3, "warmup_steps": 2, "total_steps": 8,
                                              **decay}))


def teacher_loader() -> torch.utils.data.DataLoader:
    problem = TeacherProblem()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(problem.x[:64], problem.y[:64]), batch_size=16)


def fit(model: Any, root: Any, epochs: int, ckpt_path: Any = None, callbacks: Any = ()) -> Any:
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    trainer = Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=CSVLogger(root, name="", version=""),
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True), *callbacks], enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
    )
    trainer.fit(model, teacher_loader(), ckpt_path=ckpt_path)
    return trainer


def test_the_monitor_logs_the_rules_decay_factor_for_a_kernel_optimizer(tmp_path, capsys) -> None:
    """DecaySettings(kernel=...) through the mixin: the startup summary names the kernel, and EffectiveDecayMonitor
    logs decay_factor/<group> as the rule's formula (ProxAdam: 1 / (1 + eta_t * wd)) at every step."""
    import csv

    from lightning_decay.callbacks import EffectiveDecayMonitor

    model = two_matrix_model(optimizer="proxadam", kernel="torch.optim.AdamW")
    trainer = fit(model, tmp_path, 1, callbacks=[EffectiveDecayMonitor()])
    optimizer = trainer.optimizers[0]
    assert type(optimizer).__name__ == "ProxAdamOnAdamW"
    assert "kernel: torch.optim.adamw.AdamW" in model.decay_summary
    rows = [row for row in csv.DictReader(open(tmp_path / "metrics.csv")) if row.get("decay_factor/decay")]
    assert len(rows) == 4
    for row in rows:
        eta = float(row["eta/decay"])
        assert float(row["decay_factor/decay"]) == pytest.approx(1 / (1 + eta * 1e-3), rel=1e-12)



def test_the_kernels_benchmark_runs() -> None:
    """``optimizer_step.py --kernels`` on a tiny size (torch's fused AdamW only: no compile)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "benchmarks/optimizer_step.py", "--kernels", "--kernel-filter", "AdamW fused", "--sizes",
         "8192", "--tensors", "2", "--rounds", "1", "--steps", "2", "--device", "cpu"],
        cwd=root, capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "state B/param" in result.stdout and "vs fused f32" in result.stdout
    for name in DECOUPLED_ADAM:
        assert f"\ntorch AdamW fused + {name} " in result.stdout
