"""lightning_decay: every weight-decay variant of Adam, exact and fast, with Lightning tooling around them."""

from lightning_decay.optimizers import VARIANTS, AdamL2, AdamP, AdamW, ProxAdam, resolve_variant

__all__ = ["AdamL2", "AdamW", "ProxAdam", "AdamP", "VARIANTS", "resolve_variant"]
__version__ = "0.1.0"
