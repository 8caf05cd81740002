"""Optimizers: the decay rules, the variant registry, and the Adam and SGD optimizers that run them.

Modules: :mod:`~lightning_decay.optim.rules` (every decay formula, once), :mod:`~lightning_decay.optim.registry`
(one record per variant), :mod:`~lightning_decay.optim.base` (what every optimizer shares),
:mod:`~lightning_decay.optim.checked_groups` (what a group held at its last check: a step checks only what changed),
:mod:`~lightning_decay.optim.adam` (rules on torch's Adam kernel), :mod:`~lightning_decay.optim.elementwise` (AdamP,
cautious decay), :mod:`~lightning_decay.optim.compiled` (the compiled multi-tensor step),
:mod:`~lightning_decay.optim.sgd` (SGD counterparts), :mod:`~lightning_decay.optim.kernels` (any rule on another
optimizer's kernel: torchao's 8-bit AdamW, Muon), :mod:`~lightning_decay.optim.muon` (the Muon variants' kernel and
cautious Muon; torch >= 2.9), :mod:`~lightning_decay.optim.combined` (several optimizers as one: Muon + Adam),
:mod:`~lightning_decay.optim.conventions` (conversions and timescales). Nothing here imports Lightning.
"""

from lightning_decay.optim.adam import AdamC, AdamL2, AdamW, KernelAdam, ProxAdam
from lightning_decay.optim.base import DecayOptimizer
from lightning_decay.optim.combined import CombinedOptimizer
from lightning_decay.optim.elementwise import AdamP, CautiousAdamW
from lightning_decay.optim.kernels import on_kernel
from lightning_decay.optim.registry import REGISTRY, VARIANTS, VariantInfo, get_variant, resolve_variant, rule_of
from lightning_decay.optim.sgd import SGDL2, SGDW, KernelSGD, ProxSGD

__all__ = [
    "AdamL2",
    "AdamW",
    "ProxAdam",
    "AdamP",
    "AdamC",
    "CautiousAdamW",
    "SGDL2",
    "SGDW",
    "ProxSGD",
    "KernelAdam",
    "KernelSGD",
    "DecayOptimizer",
    "CombinedOptimizer",
    "REGISTRY",
    "VARIANTS",
    "VariantInfo",
    "get_variant",
    "resolve_variant",
    "rule_of",
    "on_kernel",
]
