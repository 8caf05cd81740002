"""Ending a multi-process (gloo) test process without the interpreter-shutdown abort.

A gloo worker thread may still hold the last collective's work object, whose tensors reference Python objects,
when the main thread reaches interpreter finalization; freeing them then needs the GIL, which a non-main thread
cannot take during finalization, and the process dies with ``terminate called without an active exception``
(SIGABRT) after all of its work succeeded (torch's c10d, seen on 2.14 about one run in ten). Test processes that
ran collectives therefore leave with :func:`exit_now` once their results are written.
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist


def exit_now(code: int = 0) -> None:
    """Flush, destroy the process group and leave with ``os._exit(code)`` (no interpreter finalization)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    os._exit(code)
