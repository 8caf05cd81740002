"""lightning_decay: every weight-decay variant of Adam, exact and fast, with Lightning tooling around them."""

from lightning_decay.integration.factory import (
    WarmupSchedule,
    build_lr_scheduler,
    build_optimizer,
    build_optimizer_config,
)
from lightning_decay.integration.mixin import DecayMixin, DecaySettings
from lightning_decay.integration.param_groups import (
    GroupOverride,
    ParamGroupSettings,
    assign_param_groups,
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
    KernelAdam,
    KernelSGD,
    ProxAdam,
    ProxSGD,
    VariantInfo,
    get_variant,
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
