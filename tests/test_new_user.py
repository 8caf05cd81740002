"""What a new user trips over: settings that silently trained something else (issue 25, items 1-3, 5 and 10).

Each test states what the user meant and checks the run does it: transposed layers (transformers' ``Conv1D``) under
Muon, an injected scheduler's stepping interval, a scheduler interval without a scheduler, a weight decay given in
the other convention, and timm's no-decay rule.
"""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_decay.integration import DecayMixin, DecaySettings
from lightning_decay.integration.factory import build_optimizer
from lightning_decay.integration.param_groups import ParamGroupSettings, assign_param_groups

transformers = pytest.importorskip("transformers")  # in the test extra: CI runs these
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402


def quiet_trainer(**kwargs) -> Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    return Trainer(**{**defaults, **kwargs})


# --------------------------------------------------------------------------------------------- 1. transposed layers


def tiny_gpt2() -> GPT2LMHeadModel:
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0,
        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


def with_linears(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``Conv1D`` layers (weight ``in x out``, ``y = x @ W + b``) are the equivalent
    ``nn.Linear`` layers (weight ``out x in`` = ``W.T``)."""
    copied = copy.deepcopy(model)
    for name, module in list(copied.named_modules()):
        if isinstance(module, Conv1D):
            inputs, outputs = module.weight.shape
            linear = nn.Linear(inputs, outputs)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(copied.get_submodule(parent), child, linear)
    return copied


def muon_step(model: nn.Module, tokens: torch.Tensor, **settings) -> dict[str, torch.Tensor]:
    """Every parameter's update after one step of Muon (+ AdamW on the others) on the language-model loss."""
    optimizer = build_optimizer(
        model, "muon", lr=0.02, weight_decay=0.1, optimizer_kwargs={"orthogonalize_dtype": "float64"},
        others={"optimizer": "adamw", "lr": 1e-3}, **settings,
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(tokens, labels=tokens).loss.backward()
    optimizer.step()
    return {name: p.detach() - before[name] for name, p in model.named_parameters()}


def test_muon_steps_a_gpt2_conv1d_as_the_linear_layer_it_is() -> None:
    """transformers' Conv1D stores ``in x out``; Muon's shape scaling (``sqrt(max(1, out/in))``) must see ``out x
    in``: each Conv1D's update is, transposed, the update of the same model built with nn.Linear layers."""
    model = tiny_gpt2()
    linear_model = with_linears(model)
    tokens = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(1))
    updates = muon_step(model, tokens)
    linear_updates = muon_step(linear_model, tokens)
    conv1d = [name for name, module in model.named_modules() if isinstance(module, Conv1D)]
    assert len(conv1d) == 8
    for name in conv1d:
        update, expected = updates[f"{name}.weight"], linear_updates[f"{name}.weight"].T
        assert torch.allclose(update, expected, rtol=1e-4, atol=1e-7), (
            f"{name}: update norm {update.norm():.4g}, as a Linear {expected.norm():.4g}"
        )


class InputByOutput(nn.Module):
    """A user's own transposed layer: weight stored ``in x out``, applied as ``x @ W``."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(inputs, outputs) / inputs**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class UserNet(nn.Module):
    def __init__(self, transposed: bool) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.hidden = InputByOutput(16, 64) if transposed else nn.Linear(16, 64, bias=False)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(torch.tanh(self.stem(x)))))


def test_a_user_declares_transposed_layers_by_pattern() -> None:
    """``groups.transposed`` (name patterns): the declared weight steps as the Linear it stands for."""
    torch.manual_seed(0)
    transposed, linear = UserNet(True), UserNet(False)
    linear.load_state_dict({**transposed.state_dict(), "hidden.weight": transposed.hidden.weight.detach().T})
    inputs, labels = torch.randn(32, 8), torch.randint(0, 3, (32,))

    def step(model: nn.Module, **settings) -> torch.Tensor:
        optimizer = build_optimizer(model, "muon", lr=0.02, weight_decay=0.0, others={"optimizer": "adamw"},
                                    optimizer_kwargs={"orthogonalize_dtype": "float64"}, **settings)
        before = model.hidden.weight.detach().clone()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
        return model.hidden.weight.detach() - before

    expected = step(linear).T
    declared = step(copy.deepcopy(transposed), groups={"transposed": ["hidden.weight"]})
    undeclared = step(copy.deepcopy(transposed))
    assert torch.allclose(declared, expected, rtol=1e-4, atol=1e-7)
    assert undeclared.norm() == pytest.approx(expected.norm() / 2, rel=1e-3)  # 16 -> 64 scaled by 1, not 2


class GPT2Module(DecayMixin, LightningModule):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = tiny_gpt2()

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        return self.model(tokens, labels=tokens).loss

    def train_dataloader(self) -> DataLoader:
        tokens = torch.randint(0, 50, (8, 12), generator=torch.Generator().manual_seed(2))
        return DataLoader(TensorDataset(tokens), batch_size=4)


def test_the_startup_summary_names_the_layers_treated_as_transposed() -> None:
    model = GPT2Module(decay=DecaySettings(optimizer="muon", lr=0.02, total_steps=4, others={"optimizer": "adamw"},
                                           optimizer_kwargs={"orthogonalize_dtype": "float32"}))
    model.configure_optimizers()
    assert "transposed" in model.decay_summary
    assert "model.transformer.h.0.mlp.c_fc.weight" in model.decay_summary
    assert set(model.decay_plan.transposed) == {
        f"model.transformer.h.{block}.{layer}.weight"
        for block in (0, 1) for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }


# ------------------------------------------------------------------------------------- 2, 3. scheduler intervals


class Regression(DecayMixin, LightningModule):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return nn.functional.mse_loss(self.layer(inputs), targets)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(20, 4, generator=generator), torch.randn(20, 1,
                                                                                            generator=generator)),
                          batch_size=4)  # 5 steps per epoch


def test_an_injected_scheduler_steps_per_epoch_as_in_lightning() -> None:
    """StepLR(step_size=3) means epochs in Lightning: after 2 epochs (10 steps) the lr is untouched."""
    model = Regression(
        decay=DecaySettings(weight_decay=0.0),
        lr_scheduler_callable=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3, gamma=0.001),
    )
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(model)
    assert trainer.lr_scheduler_configs[0].interval == "epoch"
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3)
    assert "stepped every epoch" in model.decay_summary


def test_an_injected_scheduler_steps_per_step_when_asked() -> None:
    model = Regression(
        decay=DecaySettings(weight_decay=0.0, lr_scheduler_interval="step"),
        lr_scheduler_callable=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3, gamma=0.5),
    )
    trainer = quiet_trainer(max_steps=6)
    trainer.fit(model)
    assert trainer.lr_scheduler_configs[0].interval == "step"
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)


@pytest.mark.parametrize("setting", [{"lr_scheduler_interval": "step"}, {"lr_scheduler_interval": "epoch"},
                                     {"lr_scheduler_monitor": "val/loss"}])
def test_scheduler_settings_without_an_injected_scheduler_are_refused(setting) -> None:
    """The built-in schedule is stepped every optimizer step; these settings would be dropped."""
    (name,) = setting
    with pytest.raises(ValueError, match=rf"decay\.{name}.*lr_scheduler_callable"):
        Regression(decay=DecaySettings(**setting))


# ---------------------------------------------------------------- 5. a weight decay from the other convention


def test_a_paper_convention_decay_with_a_timescale_of_a_few_steps_warns() -> None:
    """adamw-paper with weight_decay 0.05 at lr 1e-3: 5% of the weights per step (a 20-step timescale); the user
    likely meant torch's convention, where that is 5e-5 in the paper's."""
    model = Regression(decay=DecaySettings(optimizer="adamw-paper", lr=1e-3, weight_decay=0.05, total_steps=10))
    with pytest.warns(UserWarning, match=r"20 steps.*5e-05"):
        model.configure_optimizers()


def test_a_torch_convention_decay_with_a_timescale_of_a_few_steps_warns() -> None:
    model = Regression(decay=DecaySettings(optimizer="adamw", lr=0.1, weight_decay=0.5, total_steps=10))
    with pytest.warns(UserWarning, match=r"20 steps.*5"):
        model.configure_optimizers()


def test_an_ordinary_decay_does_not_warn() -> None:
    model = Regression(decay=DecaySettings(optimizer="adamw-paper", lr=1e-3, weight_decay=1e-4, total_steps=10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.configure_optimizers()


# ---------------------------------------------------------------------------------------------- 10. timm's rule


class HeadScales(nn.Module):
    """Per-head scalars stored ``heads x 1 x 1`` (as attention logit scales / per-head biases are), a custom norm
    with a 2-D gain, and a root ``no_weight_decay()``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.head_bias = nn.Parameter(torch.zeros(2, 1, 1))
        self.norm = nn.GroupNorm(2, 8)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def timm_no_decay(model: nn.Module) -> set[str]:
    """timm's ``param_groups_weight_decay``: ``ndim <= 1``, a name ending in ``.bias``, or a name that the root's
    ``no_weight_decay()`` lists."""
    listed = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {name for name, p in model.named_parameters()
            if p.ndim <= 1 or name.endswith(".bias") or name in listed}


def test_timm_rule_gives_timm_groups_exactly() -> None:
    model = HeadScales()
    ours = {a.name for a in assign_param_groups(model, ParamGroupSettings()) if a.group == "no_decay"}
    assert "head_bias" in ours  # the departure: our default keeps a *_bias tensor undecayed
    timm = {a.name for a in assign_param_groups(model, ParamGroupSettings(rule="timm")) if a.group == "no_decay"}
    assert timm == timm_no_decay(model)


def test_the_summary_names_where_the_default_departs_from_timm() -> None:
    class Model(DecayMixin, LightningModule):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self.net = HeadScales()

    model = Model(decay=DecaySettings(total_steps=4))
    model.configure_optimizers()
    assert "timm" in model.decay_summary and "net.head_bias" in model.decay_summary
    model = Model(decay=DecaySettings(total_steps=4, groups={"rule": "timm"}))
    model.configure_optimizers()
    assert "net.head_bias" not in model.decay_summary


def test_neuron_norms_and_muon_equilibrium_read_a_conv1d_as_out_x_in() -> None:
    """Per-neuron norms of a Conv1D are its column norms (one per output unit); Muon's equilibrium prediction of a
    transposed group is that of the out x in matrix."""
    from lightning_decay.callbacks import WeightNormMonitor
    from lightning_decay.diagnostics.equilibrium import rotational_equilibrium

    model = GPT2Module(decay=DecaySettings(optimizer="muon", lr=0.02, others={"optimizer": "adamw"},
                                           schedule="constant", optimizer_kwargs={"orthogonalize_dtype": "float32"}))
    monitor = WeightNormMonitor(log_every_n_steps=1, layers=[r"c_fc\.weight"])
    quiet_trainer(max_steps=2, callbacks=[monitor], logger=True, default_root_dir=None).fit(model)
    weight = model.model.transformer.h[0].mlp.c_fc.weight.detach()  # 32 x 128: 128 output units
    norms = weight.norm(dim=0)
    key = "model.transformer.h.0.mlp.c_fc.weight"
    assert monitor.last_metrics[f"neuron_norm_max/{key}"] == pytest.approx(float(norms.max()), rel=1e-5)
    assert monitor.last_metrics[f"neuron_norm_min/{key}"] == pytest.approx(float(norms.min()), rel=1e-5)
    optimizer = model.trainer.optimizers[0]
    group = next(g for g in optimizer.param_groups if g["name"] == "muon/decay_transposed")
    assert any(p is model.model.transformer.h[0].mlp.c_fc.weight for p in group["params"])
    flipped = rotational_equilibrium(optimizer, group, weight.numel(), tuple(weight.shape))
    group["transposed"] = False  # the same group read as a Linear's 128 x 32 weight
    as_linear = rotational_equilibrium(optimizer, group, weight.numel(), (128, 32))
    group["transposed"] = True
    assert (flipped.lr, flipped.weight_norm) == pytest.approx((as_linear.lr, as_linear.weight_norm))
    assert flipped.lr == pytest.approx(2 * 0.02)  # sqrt(max(1, 128 / 32)) * lr
