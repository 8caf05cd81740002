"""lightning_decay: every weight-decay variant of Adam, exact and fast, with Lightning tooling around them.

Subpackages, each depending only on those before it: :mod:`~lightning_decay.optim` (rules, registry, optimizers;
no Lightning), :mod:`~lightning_decay.integration` (settings, mixin, factory, schedules, parameter groups, guards),
:mod:`~lightning_decay.diagnostics` (scale-freeness check, sharded norms, W&B offline files),
:mod:`~lightning_decay.callbacks` (the monitors), :mod:`~lightning_decay.experiments` (CIFAR-10, ResNet20, the
blog's classifier), :mod:`~lightning_decay.sweep` (grids, heatmaps, decoupling) and the command line
(:mod:`~lightning_decay.cli`, :mod:`~lightning_decay.command`).
"""

from lightning_decay.integration import (
    DecayMixin,
    DecayPlan,
    DecaySettings,
    GroupOverride,
    ParamGroupSettings,
    WarmupSchedule,
    assign_param_groups,
    build_lr_scheduler,
    build_optimizer,
    build_optimizer_config,
    build_param_groups,
)
from lightning_decay.optim import (
    REGISTRY,
    SGDL2,
    SGDW,
    VARIANTS,
    AdamC,
    AdamL2,
    AdamP,
    AdamW,
    CautiousAdamW,
    CombinedOptimizer,
    KernelAdam,
    KernelSGD,
    ProxAdam,
    ProxSGD,
    VariantInfo,
    get_variant,
    on_kernel,
    resolve_variant,
)
from lightning_decay.optim.conventions import (
    convert_weight_decay,
    paper_to_torch,
    timescale_epochs,
    timescale_steps,
    torch_to_paper,
    weight_decay_for_timescale,
    weight_decay_for_timescale_epochs,
)

__all__ = [
    "DecayPlan",
    "AdamL2",
    "AdamW",
    "ProxAdam",
    "AdamP",
    "AdamC",
    "CautiousAdamW",
    "SGDL2",
    "SGDW",
    "ProxSGD",
    "KernelAdam",
    "KernelSGD",
    "REGISTRY",
    "VariantInfo",
    "VARIANTS",
    "get_variant",
    "resolve_variant",
    "on_kernel",
    "CombinedOptimizer",
    "DecayMixin",
    "DecaySettings",
    "GroupOverride",
    "ParamGroupSettings",
    "assign_param_groups",
    "build_param_groups",
    "build_optimizer",
    "build_lr_scheduler",
    "build_optimizer_config",
    "WarmupSchedule",
    "torch_to_paper",
    "paper_to_torch",
    "timescale_steps",
    "timescale_epochs",
    "weight_decay_for_timescale",
    "weight_decay_for_timescale_epochs",
    "convert_weight_decay",
]
__version__ = "0.1.0"
