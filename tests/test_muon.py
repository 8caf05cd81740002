"""The Muon variants against the float64 reference, Muon + Adam as one optimizer, and Muon's rotational equilibrium.

The reference (``tests/reference.py``: ``reference_muon_step``) writes Muon's momentum, Nesterov direction, shape
adjustment and each decay rule in float64; only the orthogonalization is torch's own Newton-Schulz iteration (it runs
in bfloat16 inside torch's kernel), so a float64 run of the optimizer must follow the reference to rounding.
"""

from __future__ import annotations

import copy
import itertools
import math
import pickle

import pytest
import torch

from lightning_decay.diagnostics.equilibrium import rotational_equilibrium
from lightning_decay.optim import REGISTRY
from lightning_decay.optim.combined import CombinedOptimizer
from tests import trajectory
from tests.reference import MuonReferenceState, reference_muon_step
from tests.test_resume import single_thread  # noqa: F401 - autouse fixture: one thread for these small kernels
from tests.trajectory import max_relative_error

torch_muon = pytest.importorskip("torch.optim._muon")
NAMES = [name for name, info in REGISTRY.items() if info.family == "muon"]
GROUPS = [
    {"shapes": [(12, 6), (5, 9)], "lr": 0.03, "weight_decay": 0.3},
    {"shapes": [(8, 8)], "lr": 0.02, "weight_decay": 0.0},
    {"shapes": [(4, 10)], "lr": 0.01, "weight_decay": 0.05},
]
STEPS = 40


def orthogonalize(direction: torch.Tensor) -> torch.Tensor:
    return torch_muon._zeropower_via_newtonschulz(direction, (3.4445, -4.7750, 2.0315), 5, 1e-7)


def run_reference(name: str, scheduled: bool = True, steps: int = STEPS, scale: float = 1.0) -> trajectory.Weights:
    def step(w, g, state, lr, alpha, index):
        return reference_muon_step(name, w, g, state, lr, alpha, GROUPS[index]["weight_decay"],
                                   orthogonalize=orthogonalize)

    return trajectory.run_reference(lambda w: MuonReferenceState(), step, GROUPS, scheduled, steps, scale)


def run_variant(name: str, scheduled: bool = True, steps: int = STEPS, scale: float = 1.0, tensor_lr: bool = False):
    def make(params):
        groups = [
            {"params": p, "lr": torch.tensor(g["lr"], dtype=torch.float64) if tensor_lr else g["lr"],
             "weight_decay": g["weight_decay"]}
            for p, g in zip(params, GROUPS)
        ]
        return REGISTRY[name].build(groups)

    return trajectory.run_optimizer(make, GROUPS, scheduled, steps, scale)


@pytest.mark.parametrize("scheduled", [True, False], ids=["warmup-cosine", "constant"])
@pytest.mark.parametrize("name", NAMES)
def test_every_muon_variant_follows_the_float64_reference(name: str, scheduled: bool) -> None:
    expected = run_reference(name, scheduled)
    actual, _ = run_variant(name, scheduled)
    assert max_relative_error(actual, expected) < 1e-9
    assert max_relative_error(expected, trajectory.initial_weights(GROUPS)) > 0.1  # the weights moved


@pytest.mark.parametrize("name", [n for n in NAMES if REGISTRY[n].kernel == "torch" and not REGISTRY[n].elementwise])
def test_a_tensor_lr_filled_by_the_scheduler_gives_the_same_trajectory(name: str) -> None:
    expected = run_reference(name)
    actual, optimizer = run_variant(name, tensor_lr=True)
    assert all(isinstance(group["lr"], torch.Tensor) for group in optimizer.param_groups)
    assert max_relative_error(actual, expected) < 1e-9


def test_the_reference_separates_every_pair_of_muon_variants() -> None:
    finals = {name: run_reference(name, steps=30) for name in NAMES}
    for a, b in itertools.combinations(finals, 2):
        assert max_relative_error(finals[a], finals[b]) > 1e-4, (a, b)


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradients_shrink_the_weights_by_the_reported_factor(name: str) -> None:
    """Mid-schedule, a zero gradient (fresh momentum): the weights shrink by exactly the reference's factor, which is
    the factor the optimizer reports to the monitors."""
    _, optimizer = run_variant(name, steps=20)
    for group, config in zip(optimizer.param_groups, GROUPS):
        lr, alpha, weight_decay = float(group["lr"]), config["lr"], config["weight_decay"]
        w = torch.full((4, 3), 2.0, dtype=torch.float64)
        new = reference_muon_step(name, w, torch.zeros_like(w), MuonReferenceState(), lr, alpha, weight_decay,
                                  orthogonalize=orthogonalize)
        expected = (new / w)[0, 0].item()
        assert float(optimizer.decay_factor(group)) == pytest.approx(expected, rel=1e-12, abs=1e-15)
        fresh = REGISTRY[name].build([torch.nn.Parameter(w.clone())], lr=alpha, weight_decay=weight_decay)
        fresh.param_groups[0]["lr"] = lr
        fresh.param_groups[0]["params"][0].grad = torch.zeros_like(w)
        fresh.step()
        torch.testing.assert_close(fresh.param_groups[0]["params"][0].detach(), new, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_muon_variants_are_scale_free(name: str) -> None:
    """The orthogonalization normalizes the momentum: the loss times 1024 (exact in bfloat16) changes nothing."""
    assert REGISTRY[name].scale_free
    base, _ = run_variant(name, steps=30)
    scaled, _ = run_variant(name, steps=30, scale=1024.0)
    assert max_relative_error(scaled, base) < 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_a_decay_past_its_limit_fails_before_any_update(name: str) -> None:
    params = [torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(2, 2))]
    info = REGISTRY[name]
    optimizer = info.build(params, lr=0.1, weight_decay=0.5 if info.rule.per_unit_lr else 5.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 + 30 * step)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    scheduler.step()
    before = [p.detach().clone() for p in params]
    if name == "proxmuon":  # 1 / (1 + eta wd) never flips a sign
        optimizer.step()
        assert not torch.equal(params[0], before[0])
        return
    with pytest.raises(ValueError, match="weight_decay"):
        optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_muon_refuses_a_vector_and_steps_a_filter_as_its_matrix() -> None:
    """A bias is refused (naming its size); a conv filter ``4 x 3 x 3 x 3`` steps exactly as torch's Muon steps the
    ``4 x 27`` matrix (its momentum buffer has the matrix's shape)."""
    with pytest.raises(ValueError, match=r"1-D parameter of size \(3,\)"):
        REGISTRY["proxmuon"].build([torch.nn.Parameter(torch.ones(3))], lr=0.02)
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3, generator=generator))
    matrix = torch.nn.Parameter(weight.detach().reshape(4, 27).clone())
    optimizer = REGISTRY["muon"].build([weight], lr=0.02, weight_decay=0.1)
    reference = torch.optim.Muon([matrix], lr=0.02, weight_decay=0.1)
    for _ in range(3):
        grad = torch.randn(4, 3, 3, 3, generator=generator)
        weight.grad, matrix.grad = grad.clone(), grad.reshape(4, 27).clone()
        optimizer.step()
        reference.step()
    assert torch.equal(weight.detach().reshape(4, 27), matrix.detach())
    assert optimizer.state[weight]["momentum_buffer"].shape == (4, 27)


# --- Muon + Adam in one optimizer ------------------------------------------------------------------------------


def _combined(model: torch.nn.Module, adam_lr: float = 1e-3) -> CombinedOptimizer:
    matrices = [p for p in model.parameters() if p.ndim == 2][:-1]
    others = [p for p in model.parameters() if all(p is not m for m in matrices)]
    muon = REGISTRY["proxmuon"].build([{"params": matrices, "name": "muon"}], lr=0.02, weight_decay=0.01)
    adam = REGISTRY["adamw-paper"].build([{"params": others, "name": "adam"}], lr=adam_lr, weight_decay=1e-4)
    return CombinedOptimizer([muon, adam])


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3))


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, start: int = 0) -> None:
    # a resumed run (start > 0): the schedule continues where the checkpoint was taken
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 / (1.0 + 0.1 * step), last_epoch=start - 1
    )
    for step in range(start, start + steps):
        x = torch.randn(32, 6, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        model(x).sin().sum().backward()
        optimizer.step()
        scheduler.step()


def test_combined_optimizer_steps_each_part_with_its_rule_and_resumes_exactly() -> None:
    model, reference_model = _model(), _model()
    optimizer = _combined(model)
    assert [group["name"] for group in optimizer.param_groups] == ["muon", "adam"]
    assert optimizer.rule_for(optimizer.param_groups[0]).name == "proxmuon"
    assert optimizer.rule_for(optimizer.param_groups[1]).name == "adamw-paper"
    _train(model, optimizer, 5)
    # the same two optimizers stepped side by side, each with its own scheduler: the combined one is exactly them
    reference = _combined(reference_model)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(part, lambda step: 1.0 / (1.0 + 0.1 * step))
                  for part in reference.parts]
    for step in range(5):
        x = torch.randn(32, 6, generator=torch.Generator().manual_seed(step))
        reference_model.zero_grad()
        reference_model(x).sin().sum().backward()
        for part, scheduler in zip(reference.parts, schedulers):
            part.step()
            scheduler.step()
    for p, q in zip(model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # resume: a state_dict saved after 5 steps, loaded into a fresh model + optimizer, continues bit for bit
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    _train(model, optimizer, 4, start=5)
    resumed_model = _model()
    resumed_model.load_state_dict(saved_model)
    resumed = _combined(resumed_model, adam_lr=5e-3)  # a different constructor lr: the checkpoint's wins
    resumed.load_state_dict(saved)
    assert resumed.parts[0].state is resumed.state and resumed.param_groups[1] is resumed.parts[1].param_groups[0]
    _train(resumed_model, resumed, 4, start=5)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
    assert isinstance(pickle.loads(pickle.dumps(resumed)), CombinedOptimizer)


def test_combined_optimizer_checks_every_part_before_any_weight_moves() -> None:
    model = _model()
    optimizer = _combined(model)
    _train(model, optimizer, 1)
    optimizer.param_groups[1]["weight_decay"] = -1.0  # the Adam part's group: refused
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="weight_decay"):
        optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_combined_optimizer_refuses_a_parameter_in_two_parts() -> None:
    shared = torch.nn.Parameter(torch.ones(3, 3))
    with pytest.raises(ValueError, match="parts\\[0\\] and parts\\[1\\]"):
        CombinedOptimizer([torch.optim.Muon([shared]), torch.optim.AdamW([shared])])


# --- the rotational equilibrium --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["torch.optim.Muon", "proxmuon"])
def test_a_scale_invariant_matrix_reaches_muons_predicted_equilibrium(name: str) -> None:
    """``<LayerNorm(W x), xi>`` with fresh noise every step is scale-invariant in ``W`` (32 x 16): after 6 decay
    timescales the mean angle per step and the norm are within 10% of the prediction (measured: 4-5%). torch's own
    Muon gets its prediction through the registry's rule for it."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(0.1 * torch.randn(32, 16, generator=generator))
    if name == "proxmuon":
        optimizer = REGISTRY[name].build([weight], lr=0.05, weight_decay=0.01)  # eta_t wd = 0.01
    else:
        optimizer = torch.optim.Muon([weight], lr=0.05, weight_decay=0.2)  # lr wd = 0.01
    angles = []
    for _ in range(600):
        x, xi = torch.randn(16, 16, generator=generator), torch.randn(16, 32, generator=generator)
        loss = (torch.nn.functional.layer_norm((weight @ x).T, (32,)) * xi).sum()
        optimizer.zero_grad()
        loss.backward()
        before = weight.detach().clone()
        optimizer.step()
        cosine = (before * weight.detach()).sum() / (before.norm() * weight.detach().norm())
        angles.append(math.acos(min(1.0, cosine.item())))
    prediction = rotational_equilibrium(optimizer, optimizer.param_groups[0], weight.numel(), tuple(weight.shape))
    assert sum(angles[-200:]) / 200 == pytest.approx(prediction.angular_update, rel=0.1)
    assert weight.norm().item() == pytest.approx(prediction.weight_norm, rel=0.1)


# --- which parameters Muon steps ---------------------------------------------------------------------------------


class Transformerish(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(11, 8)
        self.hidden = torch.nn.Linear(8, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.mix = torch.nn.Linear(16, 16, bias=False)
        self.head = torch.nn.Linear(16, 11)


def test_muon_steps_the_hidden_matrices_and_others_the_rest() -> None:
    from lightning_decay.integration import build_optimizer

    model = Transformerish()
    optimizer = build_optimizer(model, "muonc", 0.02, 0.1, others={"optimizer": "adamw", "lr": 1e-3})
    assert isinstance(optimizer, CombinedOptimizer)
    by_name = {name: p for name, p in model.named_parameters()}
    muon = {id(p) for group in optimizer.parts[0].param_groups for p in group["params"]}
    assert muon == {id(by_name["hidden.weight"]), id(by_name["mix.weight"])}
    assert [optimizer.rule_for(group).name for group in optimizer.param_groups] == ["muonc", "adamw", "adamw"]
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {"muon/decay": 0.02, "others/decay": 1e-3, "others/no_decay": 1e-3}
    # name patterns move a matrix either way; a vector cannot go to Muon
    moved = build_optimizer(model, "muon", 0.02, others={"optimizer": "adamw", "muon_exclude": ["mix"],
                                                         "muon_include": ["head.weight"]})
    assert {id(p) for p in moved.parts[0].param_groups[0]["params"]} == {id(by_name["hidden.weight"]),
                                                                          id(by_name["head.weight"])}
    with pytest.raises(ValueError, match=r"others.muon_include matches 'norm.weight', a 1-D"):
        build_optimizer(model, "muon", 0.02, others={"optimizer": "adamw", "muon_include": ["norm.*"]})
    with pytest.raises(ValueError, match=r"others: 'proxmuon' steps only hidden weight matrices; 6 parameters "
                                         r"\(embedding.weight, hidden.bias, norm.weight, norm.bias, ...\)"):
        build_optimizer(model, "proxmuon", 0.02)
    with pytest.raises(ValueError, match=r"betas: 'proxmuon' runs torch's Muon, which has no betas; set others.betas"):
        build_optimizer(model, "proxmuon", 0.02, betas=(0.9, 0.99), others={"optimizer": "adamw"})


def test_the_orthogonalization_in_bfloat16_is_torchs_and_float32_follows_the_reference() -> None:
    """``orthogonalize`` in bfloat16 is torch's iteration bit for bit; a float32 run follows the float64 reference
    whose orthogonalization is the same iteration in float32."""
    from lightning_decay.optim.muon import orthogonalize as package_orthogonalize

    coefficients = (3.4445, -4.7750, 2.0315)
    for shape in [(9, 5), (5, 9), (6, 6)]:
        matrix = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        assert torch.equal(package_orthogonalize(matrix, coefficients, 5, 1e-7, torch.bfloat16), orthogonalize(matrix))

    def in_float32(direction: torch.Tensor) -> torch.Tensor:
        return package_orthogonalize(direction, coefficients, 5, 1e-7, torch.float32)

    def step(w, g, state, lr, alpha, index):
        return reference_muon_step("proxmuon", w, g, state, lr, alpha, GROUPS[index]["weight_decay"],
                                   orthogonalize=in_float32)

    expected = trajectory.run_reference(lambda w: MuonReferenceState(), step, GROUPS, True, STEPS)

    def make(params):
        groups = [{"params": p, "lr": g["lr"], "weight_decay": g["weight_decay"]} for p, g in zip(params, GROUPS)]
        return REGISTRY["proxmuon"].build(groups, orthogonalize_dtype="float32")

    actual, _ = trajectory.run_optimizer(make, GROUPS, True, STEPS)
    assert max_relative_error(actual, expected) < 1e-9
    assert max_relative_error(actual, run_reference("proxmuon")) > 1e-4  # bfloat16 and float32 do differ
    with pytest.raises(ValueError, match="orthogonalize_dtype must be one of"):
        REGISTRY["muon"].build([torch.nn.Parameter(torch.ones(2, 2))], orthogonalize_dtype="float16")


@pytest.mark.parametrize("name", NAMES)
def test_muon_variants_keep_torchs_optimizer_contract(name: str) -> None:
    """A state dict round trip continues the same steps; GradScaler's skipped step (an inf gradient) leaves weights
    and momentum as they were; a sparse gradient is refused before any group is updated."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(6, 4, generator=generator)) for _ in range(2)]
    groups = [{"params": [params[0]], "lr": 0.03}, {"params": [params[1]], "lr": 0.01, "weight_decay": 0.2}]
    optimizer = REGISTRY[name].build(groups, weight_decay=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)

    x = torch.randn(8, 4, generator=generator)

    def step(inf: bool = False) -> None:
        optimizer.zero_grad()
        loss = sum((x @ p.T).pow(2).mean() for p in params) * (math.inf if inf else 1.0)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    step()
    before = [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict())
    step(inf=True)
    assert scaler.get_scale() < 2.0**8  # the overflow was seen
    assert all(torch.equal(p, b) for p, b in zip(params, before[0]))
    assert str(optimizer.state_dict()) == str(before[1])
    saved = copy.deepcopy(optimizer.state_dict())
    twin_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin = REGISTRY[name].build([{"params": [twin_params[0]], "lr": 0.5}, {"params": [twin_params[1]], "lr": 0.5}])
    twin.load_state_dict(saved)
    for _ in range(2):
        grads = [torch.randn(p.shape, generator=generator) for p in params]
        for p, q, g in zip(params, twin_params, grads):
            p.grad, q.grad = g.clone(), g.clone()
        optimizer.step()
        twin.step()
    assert all(torch.equal(p, q) for p, q in zip(params, twin_params))
    params[0].grad = torch.randn(6, 4, generator=generator)
    params[1].grad = torch.randn(6, 4, generator=generator).to_sparse()
    weights = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()
    assert all(torch.equal(p, w) for p, w in zip(params, weights))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"optimizer": "adamw", "others": {"optimizer": "adamw"}}, r"others: the optimizer of the parameters Muon"),
        ({"optimizer": "muon", "others": {"optimizer": "proxmuon"}}, r"others.optimizer: 'proxmuon' is a Muon"),
        ({"optimizer": "muon", "others": {"optimzer": "adamw"}}, r"others.optimzer: unknown key"),
        ({"optimizer": "muon", "others": {"optimizer": "adamw", "lr": -1.0}}, r"others: lr must be"),
        ({"optimizer": "proxmuon", "betas": (0.9, 0.99)}, r"betas: 'proxmuon' runs torch's Muon, which has no betas"),
        ({"optimizer": "proxmuon", "kernel": "torchao.optim.AdamW8bit"}, r"kernel: 'proxmuon' runs torch's Muon"),
        ({"optimizer": "muon", "optimizer_kwargs": {"orthogonalize_dtype": "half"}},
         r"optimizer_kwargs.orthogonalize_dtype must be one of"),
    ],
)
def test_muon_settings_are_checked_when_built_naming_the_key(settings: dict, message: str) -> None:
    from lightning_decay.integration import DecaySettings

    with pytest.raises((TypeError, ValueError), match=message):
        DecaySettings(**settings)
