"""The one thing a trainer's step monitors share: :class:`MonitorsOfFit`, their row of values for each logging step.

Every :class:`~lightning_decay.callbacks.base.StepMonitor` of a fit joins the trainer's :class:`MonitorsOfFit`
at ``on_train_start`` (:meth:`MonitorsOfFit.join`). Each adds its values for a logging step to the shared
:class:`StepRow`, and the row is written (one ``log_metrics`` call per logger: one row of a CSVLogger's
``metrics.csv``, one W&B history row) when every member has finished the batch, at the same batch end as
Lightning's own ``self.log`` values of that step; the fit's last member to end writes what is left and the family
charts. Which monitor comes first in the trainer's callback list changes nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_decay.callbacks.media import CHART_POINTS, define_family_metrics, family_charts, wandb_loggers
from lightning_decay.diagnostics.families import family_of

__all__ = ["StepRow", "MonitorsOfFit"]


class StepRow:
    """The values all monitors of one fit log for one step, written with one ``log_metrics`` call per logger (one
    row of a CSVLogger's ``metrics.csv``, one W&B history row) once every monitor has added its values for the step
    (:meth:`MonitorsOfFit.batch_done`)."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.values: dict[str, float] = {}
        #: W&B-only objects (histograms), written with the values to ``WandbLogger`` instances only.
        self.media: dict[str, Any] = {}
        #: With a ``WandbLogger``: every value written in this fit, ``key -> [(step, value), ...]`` (the family
        #: charts), and whether values came since the charts were last logged.
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.charted = True
        self._charted_key: dict[str, bool] = {}

    def _remember(self, step: int, values: Mapping[str, float]) -> None:
        """Keep the values of charted families (a series past ``2 * CHART_POINTS`` points drops every other one,
        so memory stays bounded on long fits and the chart keeps evenly spaced points)."""
        for key, value in values.items():
            charted = self._charted_key.get(key)
            if charted is None:
                family = family_of(key)
                charted = self._charted_key[key] = family is not None and family.chart
            if not charted:
                continue
            series = self.history.setdefault(key, [])
            series.append((step, value))
            if len(series) > 2 * CHART_POINTS:
                series[:] = series[::-1][::2][::-1]
            self.charted = False

    def add(self, trainer: pl.Trainer, step: int, values: Mapping[str, float], media: Mapping[str, Any]) -> None:
        if self.step is not None and self.step != step:  # left over from an earlier step: write it first
            self.flush(trainer)
        self.step = step
        self.values.update(values)
        self.media.update(media)

    def flush(self, trainer: pl.Trainer) -> None:
        """Write the collected values (nothing when none); then start empty."""
        step, values, media = self.step, self.values, self.media
        self.step, self.values, self.media = None, {}, {}
        if step is None or not (values or media):
            return
        wandb = set(map(id, wandb_loggers(trainer)))
        if wandb:
            self._remember(step, values)
        for logger in trainer.loggers:
            if id(logger) in wandb:
                define_family_metrics(logger, values)
            if id(logger) in wandb and media:
                logger.log_metrics({**values, **media}, step=step)
            elif values:
                logger.log_metrics(values, step=step)

    def log_charts(self, trainer: pl.Trainer, step: int) -> None:
        """The multi-line chart of every charted key family (``charts/<family>``) to each ``WandbLogger``, when
        values came since the last call."""
        if self.charted or not self.history:
            return
        self.charted = True
        loggers = wandb_loggers(trainer)
        charts = family_charts(self.history) if loggers else {}
        if charts:
            for logger in loggers:
                logger.log_metrics(charts, step=step)


class MonitorsOfFit:
    """The step monitors of one fit of one trainer (``members``, in the order they joined) and their shared
    :class:`StepRow` (``row``).

    :meth:`batch_done` writes the row once every member has finished the batch; :meth:`end` tells the last member
    to end the fit (it writes what is left and the charts, and may speak for all members). ``complete`` becomes
    True when every step monitor in the trainer's callback list has joined (then a member may speak for all).
    """

    def __init__(self, expected: int) -> None:
        self.row = StepRow()
        self.members: list[Callback] = []
        self.expected = expected
        self.closed = False
        self._finished: set[int] = set()
        self._ended: set[int] = set()

    @classmethod
    def join(cls, trainer: pl.Trainer, monitor: Callback, expected: int) -> MonitorsOfFit:
        """The trainer's current fit's monitors with ``monitor`` added (a new fit starts a new one);
        ``expected``: how many step monitors the trainer has."""
        fit = _FITS.get(trainer)
        if fit is None or fit.closed or any(member is monitor for member in fit.members):
            fit = _FITS[trainer] = cls(max(1, expected))
        fit.members.append(monitor)
        return fit

    @property
    def complete(self) -> bool:
        return len(self.members) >= self.expected

    def batch_done(self, trainer: pl.Trainer, monitor: Callback) -> None:
        """``monitor`` finished this batch; the last member to finish writes the row."""
        self._finished.add(id(monitor))
        if len(self._finished) >= len(self.members):
            self._finished.clear()
            self.row.flush(trainer)

    def epoch_done(self, trainer: pl.Trainer, step: int) -> None:
        """The epoch's family charts (to W&B; once: the row knows whether values came since it last drew them)."""
        if trainer.is_global_zero:
            self.row.log_charts(trainer, step)

    def end(self, trainer: pl.Trainer, monitor: Callback, step: int) -> bool:
        """``monitor`` ended the fit; True for the last member to end, after it wrote what was left and the
        charts."""
        self._ended.add(id(monitor))
        if len(self._ended) < len(self.members):
            return False
        self.closed = True
        self.row.flush(trainer)
        self.epoch_done(trainer, step)
        return True


#: The current fit's monitors of each trainer (an entry leaves with its trainer).
_FITS: weakref.WeakKeyDictionary[pl.Trainer, MonitorsOfFit] = weakref.WeakKeyDictionary()
