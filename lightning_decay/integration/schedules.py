"""The learning-rate schedule: linear warmup, then cosine / linear / constant, stepped every optimizer step.

``lr_t = alpha * eta(step)`` with :class:`WarmupSchedule` as ``eta``; ``total_steps`` defaults to the trainer's
``estimated_stepping_batches`` (which counts ``max_steps``, ``limit_train_batches``, ``overfit_batches`` and
``fast_dev_run``). A run shorter than its warmup -- Lightning's smoke tests, a short ``max_steps`` -- gets the warmup
shortened to fit, with one warning; ``warmup_steps >= total_steps`` given together is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lightning_decay.validation import check_int, check_real

__all__ = [
    "SCHEDULES",
    "WarmupSchedule",
    "check_schedule_settings",
    "build_lr_scheduler",
    "trainer_total_steps",
    "trainer_steps_per_epoch",
    "resolve_warmup",
    "check_scheduler_interval",
]

#: Learning-rate shapes after the warmup.
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class WarmupSchedule:
    """The lr multiplier ``eta(step)`` for ``LambdaLR`` (a picklable callable, saved in the scheduler's state).

    Warmup ``eta = (step + 1) / warmup_steps`` for ``step < warmup_steps`` (no step at lr 0; the last warmup step
    is at the peak), then with ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1]
    and ``m = min_lr_ratio``: cosine ``m + (1 - m) (1 + cos(pi p)) / 2``, linear ``m + (1 - m)(1 - p)``,
    constant ``1``. After ``total_steps`` the multiplier stays at ``m``.
    """

    total_steps: int
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        check_schedule_settings(self.schedule, self.warmup_steps, 0.0, self.total_steps, self.min_lr_ratio)
        if self.schedule != "constant" and self.warmup_steps >= self.total_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be < total_steps ({self.total_steps}) for a "
                f"{self.schedule} schedule"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape


def check_schedule_settings(
    schedule: str, warmup_steps: int, warmup_ratio: float, total_steps: int | None, min_lr_ratio: float
) -> None:
    """Validate schedule settings; errors name the offending setting."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    check_int("warmup_steps", warmup_steps, low=0)
    check_real("warmup_ratio", warmup_ratio, low=0.0, high=1.0, high_open=True)
    if warmup_steps and warmup_ratio:
        raise ValueError(f"give warmup_steps or warmup_ratio, not both (got {warmup_steps} and {warmup_ratio})")
    if total_steps is not None:
        check_int("total_steps", total_steps, low=1)
        if schedule != "constant" and warmup_steps >= total_steps:
            raise ValueError(
                f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps}) for a {schedule} schedule"
            )
    check_real("min_lr_ratio", min_lr_ratio, low=0.0, high=1.0)


def trainer_total_steps(trainer: pl.Trainer) -> int:
    """Optimizer steps of the whole fit: ``trainer.estimated_stepping_batches`` (ValueError when unbounded)."""
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total) or total < 1:
        raise ValueError(
            f"total_steps: the trainer's number of steps is not known ({total}); set max_steps or max_epochs "
            "with a sized train dataloader, or give total_steps"
        )
    return int(total)


def trainer_steps_per_epoch(trainer: pl.Trainer) -> int:
    """Optimizer steps per epoch: ``ceil(num_training_batches / accumulate_grad_batches)`` (as Lightning counts)."""
    if trainer.max_epochs != -1:
        trainer.estimated_stepping_batches  # noqa: B018 - loads the train dataloader when it is not there yet
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches < 1:
        raise ValueError(
            f"the trainer's number of training batches per epoch is not known ({batches}): a timescale in epochs "
            "needs a sized train dataloader (or give steps_per_epoch)"
        )
    return math.ceil(batches / trainer.accumulate_grad_batches)


def build_lr_scheduler(
    optimizer: Optimizer,
    schedule: str = "cosine",
    *,
    warmup_steps: int = 0,
    warmup_ratio: float = 0.0,
    total_steps: int | None = None,
    min_lr_ratio: float = 0.0,
    trainer: pl.Trainer | None = None,
) -> LambdaLR:
    """A ``LambdaLR`` with :class:`WarmupSchedule` (to step once per optimizer step).

    ``warmup_ratio`` is a fraction of ``total_steps``; ``total_steps`` defaults to the trainer's estimate and is
    only needed for cosine/linear or a warmup ratio.

    **Runs shorter than the warmup.** When ``total_steps`` comes from the trainer and the run has no more steps than
    ``warmup_steps`` (``fast_dev_run``, ``limit_train_batches``, ``overfit_batches``, a short ``max_steps``), a
    cosine/linear warmup is shortened to ``total - 1`` steps (the lr peaks at the run's last step), with one warning
    naming ``warmup_steps``, the run's total and the warmup used. ``warmup_steps >= total_steps`` given together is
    a ValueError. A warmup from ``warmup_ratio`` is at most ``total - 1`` steps (rounding). A constant schedule needs
    no total: its warmup may outlast the run (the lr then never reaches the peak).
    """
    check_schedule_settings(schedule, warmup_steps, warmup_ratio, total_steps, min_lr_ratio)
    fit_steps = None
    if total_steps is None and (schedule != "constant" or warmup_ratio):
        if trainer is None:
            raise ValueError(f"total_steps: a {schedule} schedule needs total_steps, or a trainer to estimate it")
        fit_steps = trainer_total_steps(trainer)
    warmup_steps, total_steps = resolve_warmup(schedule, warmup_steps, warmup_ratio, total_steps, fit_steps)
    multiplier = WarmupSchedule(
        total_steps=total_steps if total_steps is not None else max(1, warmup_steps),
        warmup_steps=warmup_steps,
        schedule=schedule,
        min_lr_ratio=min_lr_ratio,
    )
    return LambdaLR(optimizer, multiplier)


def resolve_warmup(
    schedule: str, warmup_steps: int, warmup_ratio: float, total_steps: int | None, fit_steps: int | None
) -> tuple[int, int | None]:
    """``(warmup steps, total steps)`` of the schedule that runs: ``total_steps`` as given, else the fit's
    ``fit_steps`` (the trainer's estimate; None outside a fit, which a cosine / linear schedule or a warmup ratio
    cannot do without: ValueError naming total_steps). A warmup ratio becomes steps; a warmup longer than the fit's
    steps is shortened to fit, with one warning."""
    from_trainer = total_steps is None
    if total_steps is None:
        if fit_steps is None and (schedule != "constant" or warmup_ratio):
            raise ValueError(f"total_steps: a {schedule} schedule needs total_steps, or a trainer to estimate it")
        total_steps = fit_steps
    if total_steps is not None:
        longest = total_steps if schedule == "constant" else total_steps - 1  # the longest warmup that fits
        if warmup_ratio:
            warmup_steps = min(max(1, round(warmup_ratio * total_steps)), longest)
        elif from_trainer and warmup_steps > longest:
            rank_zero_warn(
                f"warmup_steps={warmup_steps} is longer than this run: {total_steps} optimizer step(s) in total (the "
                "trainer's estimated_stepping_batches, which counts max_steps, limit_train_batches, overfit_batches "
                f"and fast_dev_run); the warmup is shortened to {longest} step(s). Give total_steps to keep the "
                "configured schedule.",
                category=UserWarning,
            )
            warmup_steps = longest
    return warmup_steps, total_steps


def check_scheduler_interval(interval: str | None, monitor: str | None, injected: bool) -> None:
    """``lr_scheduler_interval`` / ``lr_scheduler_monitor`` set how an injected scheduler is stepped: without one
    (the built-in schedule, always stepped every optimizer step) they would be dropped, so they are a ValueError."""
    given = [f"decay.{name}={value!r}" for name, value in (("lr_scheduler_interval", interval),
                                                            ("lr_scheduler_monitor", monitor)) if value is not None]
    if given and not injected:
        raise ValueError(
            f"{', '.join(given)} would be ignored: it sets how an injected lr_scheduler_callable is stepped, and "
            "there is none (the built-in schedule is stepped every optimizer step). Drop it, or give "
            "model.lr_scheduler_callable"
        )
