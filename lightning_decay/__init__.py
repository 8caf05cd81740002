"""lightning_decay: every weight-decay variant of Adam, exact and fast, with Lightning tooling around them."""

from lightning_decay.conventions import (
    convert_weight_decay,
    paper_to_torch,
    timescale_epochs,
    timescale_steps,
    torch_to_paper,
    weight_decay_for_timescale,
    weight_decay_for_timescale_epochs,
)
from lightning_decay.factory import WarmupSchedule, build_lr_scheduler, build_optimizer, build_optimizer_config
from lightning_decay.mixin import DecayMixin, DecaySettings
from lightning_decay.optimizers import VARIANTS, AdamC, AdamL2, AdamP, AdamW, CautiousAdamW, ProxAdam, resolve_variant
from lightning_decay.param_groups import GroupOverride, ParamGroupSettings, assign_param_groups, build_param_groups
from lightning_decay.sgd import SGDL2, SGDW, ProxSGD

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
    "VARIANTS",
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
