"""``DecayMixin`` added to an existing LightningModule: a small transformer language model, trained and watched.

``CharTransformer`` stands for a model you already have: a plain LightningModule (tied input/output embeddings,
pre-norm transformer blocks with LayerNorm, its own ``configure_optimizers``). The only change is one class line,
``class DecayCharTransformer(DecayMixin, CharTransformer)``: the mixin's ``configure_optimizers`` takes over, with
AdamW on named parameter groups (the tied embedding once; LayerNorm parameters and biases without decay) and a
warmup + cosine schedule. A real Lightning ``Trainer`` fits it on synthetic token sequences (a random Markov chain:
every token has two possible successors, so the best loss is log 2 = 0.69) with the three monitors of
``lightning_decay.callbacks``. The script prints the parameter groups the mixin chose and a few logged metrics; all
metrics land in ``<output>/csv/version_*/metrics.csv``.

Run (200 steps: 15 s to a minute on 2 CPU cores, depending on what else runs there):

    python examples/mixin_transformer.py [--output outputs/examples/mixin_transformer]
    python examples/mixin_transformer.py --tiny      # 8 steps: ~10 s

``LIGHTNING_DECAY_EXAMPLE_TINY=1`` has the effect of ``--tiny``; ``LIGHTNING_DECAY_EXAMPLE_OUTPUT=<folder>``
changes the default output folder to ``<folder>/mixin_transformer``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_decay import DecayMixin, DecaySettings
from lightning_decay.callbacks import EffectiveDecayMonitor, ScaleInvarianceMonitor, WeightNormMonitor


class CharTransformer(LightningModule):
    """A next-token model as you may already have it: nothing here knows about ``lightning_decay``."""

    def __init__(
        self, vocab_size: int = 16, width: int = 64, heads: int = 4, layers: int = 2, context: int = 32
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embedding = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(context, width)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.head.weight = self.embedding.weight  # tied input/output embeddings: one tensor, two names
        nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits (causal self-attention)."""
        length = tokens.shape[1]
        hidden = self.embedding(tokens) + self.position(torch.arange(length, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        return self.head(self.final_norm(self.blocks(hidden, mask=mask, is_causal=True)))

    def training_step(self, batch: tuple[Tensor], batch_index: int) -> Tensor:
        """Cross-entropy of every next token; logs ``train/loss``."""
        (tokens,) = batch
        logits = self(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The model's own optimizer: one group, everything decays. ``DecayMixin`` replaces it."""
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class DecayCharTransformer(DecayMixin, CharTransformer):
    """The whole change: ``DecayMixin`` first in the bases. It takes ``decay=`` and passes the rest on."""


def markov_sequences(count: int, length: int, vocab_size: int) -> Tensor:
    """Token sequences of a random Markov chain in which every token has two equally likely successors."""
    generator = torch.Generator().manual_seed(0)
    successors = torch.stack([torch.randperm(vocab_size, generator=generator) for _ in range(2)], dim=1)
    tokens = torch.empty(count, length, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, vocab_size, (count,), generator=generator)
    for position in range(1, length):
        choice = torch.randint(0, 2, (count,), generator=generator)
        tokens[:, position] = successors[tokens[:, position - 1], choice]
    return tokens


def print_parameter_groups(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every group of the optimizer with its weight decay and its tensors: each name (a tied tensor has several)
    with the type of the layer that owns it."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        layer = type(model.get_submodule(name.rpartition(".")[0])).__name__
        names.setdefault(id(parameter), []).append(f"{name} [{layer}]")
    print("parameter groups chosen by DecayMixin:")
    for group in optimizer.param_groups:
        print(f"  {group['name']} (weight_decay={group['weight_decay']:g}): {len(group['params'])} tensors")
        for parameter in group["params"]:
            aliases = names[id(parameter)]
            tied = "  (tied: one tensor, listed once)" if len(aliases) > 1 else ""
            print(f"    {' = '.join(aliases)}{tied}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("LIGHTNING_DECAY_EXAMPLE_TINY") == "1")
    root = Path(os.environ.get("LIGHTNING_DECAY_EXAMPLE_OUTPUT", "outputs/examples"))
    parser.add_argument("--output", type=Path, default=root / "mixin_transformer", help="logs go here")
    arguments = parser.parse_args()
    steps, sequences = (8, 64) if arguments.tiny else (200, 4096)
    torch.manual_seed(0)
    model = DecayCharTransformer(
        vocab_size=16,
        decay=DecaySettings(optimizer="adamw", lr=3e-3, weight_decay=0.1, warmup_ratio=0.1, min_lr_ratio=0.1),
    )
    data = DataLoader(TensorDataset(markov_sequences(sequences, 33, 16)), batch_size=32, shuffle=True)
    scale_invariance = ScaleInvarianceMonitor(check_every_n_steps=100)  # after the first step, then every 100
    monitors = (WeightNormMonitor(), EffectiveDecayMonitor(), scale_invariance)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        log_every_n_steps=2 if arguments.tiny else 50,
        callbacks=list(monitors),  # a copy: the Trainer adds its own callbacks to the list
        logger=CSVLogger(arguments.output, name="csv"),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not arguments.tiny,
    )
    trainer.fit(model, data)

    print_parameter_groups(model, trainer.optimizers[0])
    metrics: dict[str, Any] = {"train/loss": trainer.callback_metrics["train/loss"].item()}
    for monitor in monitors:
        metrics.update(monitor.last_metrics)
    layer = "blocks.layers.0.linear1.weight"
    shown = [
        "train/loss",  # the model's own
        "weight_norm/total",  # WeightNormMonitor
        "weight_norm/embedding.weight",
        f"neuron_norm_mean/{layer}",
        "lr/decay",  # EffectiveDecayMonitor, per group
        "eta/decay",
        "decay_factor/decay",
        "decay_timescale_steps/decay",
        f"scale_invariance/cos/{layer}",  # ScaleInvarianceMonitor
        f"scale_invariance/angular_update/{layer}",
    ]
    print(f"a few of the {len(metrics)} metrics logged at step {trainer.global_step}:")
    for key in shown:
        print(f"  {key:<62} {metrics[key]:.8g}")
    labels = scale_invariance.labels  # the numerical check: is the loss unchanged when a layer's weights are scaled?
    invariant = [name for name, is_invariant in labels.items() if is_invariant]
    print(f"scale-invariant layers (numerical check): {len(invariant)} of {len(labels)} {invariant}")
    print(f"all metrics: {Path(trainer.logger.log_dir) / 'metrics.csv'}")


if __name__ == "__main__":
    main()
