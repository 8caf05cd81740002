"""Variant lists the generic optimizer tests share.

The Muon variants step matrices only (and need a second optimizer for everything else), so the tests that build an
optimizer over arbitrary tensors run the Adam and SGD variants; ``tests/test_muon.py`` and
``tests/test_muon_lightning.py`` hold the same contract for Muon (state dict round trips, GradScaler's skipped steps,
sparse gradients, tensor lr, exact resume, precision, DDP).
"""

from __future__ import annotations

from lightning_decay.optim import REGISTRY

#: Every variant that steps any tensor: the Adam and SGD families.
ANY_TENSOR = [name for name, info in REGISTRY.items() if info.family != "muon"]
