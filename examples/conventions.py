"""What a reported weight decay means: torch vs paper convention, and the EMA timescale in steps and epochs.

PyTorch's AdamW shrinks the weights by ``1 - lr_t * wd`` per step, Loshchilov & Hutter's by ``1 - eta_t * wd``
(``eta_t`` the schedule's multiplier). The same number is a decay ``1 / lr`` times stronger in the paper convention.
The weights are an exponential moving average over ``1 / (shrink per step)`` steps (Wang & Aitchison 2024): the
timescale, in steps or epochs. The script converts a few published settings both ways and prints two tables:

1. a torch-convention setting -> its paper-convention equal, its timescale, and the timescale you would get by
   reading the same number in the paper convention;
2. a timescale in epochs -> the weight decay of each variant that has it (and back, as a check).

Run (formulas only, no training: the import of torch and Lightning is most of its ~7 s; no tiny mode needed):

    python examples/conventions.py
"""

from __future__ import annotations

from lightning_decay import (
    convert_weight_decay,
    paper_to_torch,
    timescale_epochs,
    timescale_steps,
    torch_to_paper,
    weight_decay_for_timescale_epochs,
)

#: (what, lr, torch-convention weight decay, optimizer steps per epoch)
REPORTED = [
    ("CIFAR-10, batch 128", 1e-3, 0.05, 391),
    ("torch's defaults, ImageNet, batch 256", 1e-3, 1e-2, 5005),
    ("GPT-style, 1B tokens per epoch, 0.5M per step", 6e-4, 0.1, 2000),
]


def torch_convention_table() -> None:
    print("1. A reported 'AdamW lr, weight decay' in the torch convention, and what it means:")
    for what, lr, weight_decay, steps_per_epoch in REPORTED:
        paper = torch_to_paper(weight_decay, lr=lr)
        assert abs(paper_to_torch(paper, lr=lr) - weight_decay) < 1e-12 * weight_decay  # and back
        steps = timescale_steps(weight_decay, lr=lr, variant="adamw")
        epochs = timescale_epochs(weight_decay, lr=lr, steps_per_epoch=steps_per_epoch, variant="adamw")
        misread = timescale_steps(weight_decay, lr=lr, variant="adamw-paper")  # the same number, paper convention
        print(
            f"   AdamW lr {lr:g} wd {weight_decay:g} at {steps_per_epoch} steps/epoch = {epochs:.3g} epochs"
            f" ({steps:,.0f} steps; {what})\n"
            f"     paper convention: wd {paper:.3g} for the same decay; wd {weight_decay:g} read as paper"
            f" convention = {misread:.3g} steps ({misread / steps_per_epoch:.2g} epochs)"
        )


def timescale_table(tau_epochs: float = 10.0, lr: float = 1e-3, steps_per_epoch: int = 391) -> None:
    print(f"\n2. The weight decay of each variant for a timescale of {tau_epochs:g} epochs at lr {lr:g}, "
          f"{steps_per_epoch} steps/epoch:")
    print(f"   {'variant':<13} {'weight decay':>13} {'timescale back (epochs)':>24} {'from adamw (convert)':>21}")
    adamw = weight_decay_for_timescale_epochs(tau_epochs, lr=lr, steps_per_epoch=steps_per_epoch, variant="adamw")
    for variant in ("adamw", "adamw-paper", "proxadam", "sgdw"):
        weight_decay = weight_decay_for_timescale_epochs(
            tau_epochs, lr=lr, steps_per_epoch=steps_per_epoch, variant=variant
        )
        back = timescale_epochs(weight_decay, lr=lr, steps_per_epoch=steps_per_epoch, variant=variant)
        converted = convert_weight_decay(adamw, lr=lr, source="adamw", target=variant)
        print(f"   {variant:<13} {weight_decay:>13.6g} {back:>24.6g} {converted:>21.6g}")
    print("   (AdamL2 and AdamP have no such timescale: their decay is preconditioned by Adam, per coordinate.)")


def main() -> None:
    torch_convention_table()
    timescale_table()


if __name__ == "__main__":
    main()
