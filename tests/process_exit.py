"""Ending a multi-process (gloo) test process without the interpreter-shutdown abort.

A gloo worker thread may still hold the last collective's work object, whose tensors reference Python objects,
when the main thread reaches interpreter finalization; freeing them then needs the GIL, which a non-main thread
cannot take during finalization, and the process dies with ``terminate called without an active exception``
(SIGABRT) after all of its work succeeded (torch's c10d, seen on 2.14 about one run in ten). Test processes that
ran collectives therefore leave with :func:`exit_now` once their results are written: the scripts and raw spawn
workers call it, and ``ddp_spawn`` fits use :class:`SpawnDDP`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher


def exit_now(code: int = 0) -> None:
    """Flush, destroy the process group and leave with ``os._exit(code)`` (no interpreter finalization)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    os._exit(code)


class _ExitingLauncher(_MultiProcessingLauncher):
    """Lightning's spawn launcher whose workers leave with :func:`exit_now` once their work is done (rank 0's
    results are already in the return queue: a ``SimpleQueue``, whose ``put`` writes to the pipe before returning).
    A worker that raises leaves the usual way, so its error still reaches the parent."""

    def _wrapping_function(self, *args: Any, **kwargs: Any) -> None:
        super()._wrapping_function(*args, **kwargs)
        exit_now()


class SpawnDDP(DDPStrategy):
    """``strategy="ddp_spawn"`` (Lightning's ``DDPStrategy(start_method="spawn")``, gloo on CPU) whose workers end
    with :func:`exit_now`: the real spawn launcher, only without the interpreter-shutdown abort."""

    def __init__(self) -> None:
        super().__init__(start_method="spawn")

    def _configure_launcher(self) -> None:
        self._launcher = _ExitingLauncher(self, start_method=self._start_method)
