"""``AutoWandbLogger``: W&B when the user is logged in, W&B offline files otherwise — never a login prompt."""

from __future__ import annotations

import netrc
import os
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

__all__ = ["AutoWandbLogger", "wandb_logged_in"]


def wandb_logged_in() -> bool:
    """True when W&B credentials are present locally (``WANDB_API_KEY`` or a netrc entry); asks no server."""
    if os.environ.get("WANDB_MODE", "").lower() in {"offline", "disabled", "dryrun"}:
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class AutoWandbLogger(WandbLogger):
    """A ``WandbLogger`` that is offline unless :func:`wandb_logged_in` (``offline`` given explicitly wins).

    Offline runs are written under ``save_dir/wandb/`` and can be uploaded later with ``wandb sync``.
    """

    def __init__(self, *args: Any, offline: bool | None = None, **kwargs: Any) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        if offline is None:
            offline = not wandb_logged_in()
        if offline:
            os.environ["WANDB_MODE"] = "offline"
        super().__init__(*args, offline=offline, **kwargs)
