"""The ``lightning-decay`` console script (and ``python -m lightning_decay``): ``sweep`` goes to the sweep runner,
``dashboard`` to the W&B dashboard builder, everything else (``fit``, ``validate``, ``test``, ``predict``,
``--help``) to the LightningCLI. Both find the user's
own modules (``class_path: mymodel.MyModel``) in the current folder.

    lightning-decay fit --config configs/quickstart.yaml
    lightning-decay sweep --config configs/blog/adamw-vs-adamp.yaml --jobs 2
    lightning-decay dashboard --entity E --project lightning-decay [--dry-run view.json]
"""

from __future__ import annotations

import os
import sys

from lightning_decay.cli import run_cli

__all__ = ["main"]


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``lightning-decay`` console script and ``python -m lightning_decay``; the exit code.

    From the command line (``args`` None), ``class_path`` values naming the user's own modules in the current folder
    resolve as under ``python -m lightning_decay``: the current folder goes first on ``sys.path`` (a console script
    gets the script's folder there instead)."""
    if args is None:
        _put_cwd_on_path()
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "sweep":
        from lightning_decay.sweep import main as sweep_main  # the sweep pulls in plotting: only when asked for

        return int(sweep_main(argv[1:]) or 0)
    if argv and argv[0] == "dashboard":
        from lightning_decay.dashboard import main as dashboard_main  # wandb-workspaces: only when asked for

        return int(dashboard_main(argv[1:]) or 0)
    run_cli(None if args is None else argv)
    return 0


def _put_cwd_on_path() -> None:
    """The current folder first on ``sys.path``, as ``python -m`` puts it, unless it is there already."""
    cwd = os.getcwd()
    if any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path):
        return
    sys.path.insert(0, cwd)
