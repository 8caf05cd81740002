"""The ``lightning-decay`` console script (and ``python -m lightning_decay``): ``sweep`` goes to the sweep runner,
everything else (``fit``, ``validate``, ``test``, ``predict``, ``--help``) to the LightningCLI.

    lightning-decay fit --config configs/quickstart.yaml
    lightning-decay sweep --config configs/blog/adamw-vs-adamp.yaml --jobs 2
"""

from __future__ import annotations

import sys

from lightning_decay.cli import run_cli

__all__ = ["main"]


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``lightning-decay`` console script and ``python -m lightning_decay``; the exit code."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "sweep":
        from lightning_decay.sweep import main as sweep_main  # the sweep pulls in plotting: only when asked for

        return int(sweep_main(argv[1:]) or 0)
    run_cli(None if args is None else argv)
    return 0
