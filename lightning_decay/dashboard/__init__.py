"""W&B dashboards for what the monitors log: a saved workspace view (one panel per key family, a few sections) and
a report of a finished sweep, both built with the optional ``wandb-workspaces`` package (the ``[dashboard]``
extra, imported only when a view is built) and written as JSON without network access (``--dry-run``).

:mod:`~lightning_decay.dashboard.workspace` (the view), :mod:`~lightning_decay.dashboard.report` (the sweep report),
:mod:`~lightning_decay.dashboard.spec` (the lazy import, the stable specification, the keys each panel reads),
:mod:`~lightning_decay.dashboard.command` (``lightning-decay dashboard``). The key families are
:data:`lightning_decay.diagnostics.families.FAMILIES`.
"""

from lightning_decay.dashboard.command import main
from lightning_decay.dashboard.report import build_report
from lightning_decay.dashboard.spec import DashboardDependencyError, panel_references, stable_spec, write_spec
from lightning_decay.dashboard.workspace import build_workspace

__all__ = [
    "DashboardDependencyError",
    "build_report",
    "build_workspace",
    "main",
    "panel_references",
    "stable_spec",
    "write_spec",
]
