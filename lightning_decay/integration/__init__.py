"""Lightning integration: settings, the ``DecayMixin``, the ``configure_optimizers`` factory, LR schedules,
parameter groups, the non-finite gradient guard and the W&B logger that never prompts.

Depends on :mod:`lightning_decay.optim` only; the callbacks, the sweep and the CLI build on it.
"""

from lightning_decay.integration.factory import build_optimizer, build_optimizer_config
from lightning_decay.integration.guards import GradientGuard, NonFiniteGradientError, NonFiniteGradientGuard
from lightning_decay.integration.mixin import DecayMixin
from lightning_decay.integration.param_groups import (
    GroupOverride,
    ParamGroupSettings,
    assign_param_groups,
    build_param_groups,
)
from lightning_decay.integration.plan import DecayPlan, build, resolve
from lightning_decay.integration.schedules import WarmupSchedule, build_lr_scheduler
from lightning_decay.integration.settings import DecaySettings
from lightning_decay.integration.wandb_logger import AutoWandbLogger, wandb_logged_in

__all__ = [
    "DecayMixin",
    "DecaySettings",
    "DecayPlan",
    "resolve",
    "build",
    "build_optimizer",
    "build_optimizer_config",
    "build_lr_scheduler",
    "WarmupSchedule",
    "GroupOverride",
    "ParamGroupSettings",
    "assign_param_groups",
    "build_param_groups",
    "GradientGuard",
    "NonFiniteGradientError",
    "NonFiniteGradientGuard",
    "AutoWandbLogger",
    "wandb_logged_in",
]
