"""Lightning callbacks that show, per layer, what weight decay does to a model while it trains.

* :class:`WeightNormMonitor` (:mod:`~lightning_decay.callbacks.weight_norm`): ``|w|`` per parameter (and per
  module), the total norm, and min/mean/max of the per-neuron (row / conv filter) norms.
* :class:`EffectiveDecayMonitor` (:mod:`~lightning_decay.callbacks.effective_decay`): per param group the lr,
  ``eta_t = lr_t / alpha`` and what the group's decay rule can report (its registry record's ``decay_metrics``):
  the per-step decay factor and its timescale, AdamP's elementwise factor, Adam-L2's preconditioned decay, the L2
  ratio ``wd |w| / |g|``, cautious decay's decayed fraction.
* :class:`ScaleInvarianceMonitor` (:mod:`~lightning_decay.callbacks.scale_invariance`): ``cos(w, g)``,
  ``|dw| / |w|``, the angular update next to the rotational-equilibrium prediction, the effective lr, and a
  periodic numerical check that labels each layer scale-invariant.
* :class:`TrainingReport` (:mod:`~lightning_decay.callbacks.training_report`): a picture of the logged norms,
  decay factors and lr at the end of ``fit``.

The monitors share :class:`~lightning_decay.callbacks.base.StepMonitor` (cadence, hooks, output) and
:mod:`~lightning_decay.callbacks.media` (W&B tables and plots); the math they log is in
:mod:`lightning_decay.diagnostics`, free of Lightning. Key names and derivations: ``docs/monitoring.md``.
"""

from lightning_decay.callbacks.base import LayerFilter, MonitorWarning
from lightning_decay.callbacks.effective_decay import EffectiveDecayMonitor
from lightning_decay.callbacks.scale_invariance import ScaleInvarianceMonitor
from lightning_decay.callbacks.training_report import TrainingReport
from lightning_decay.callbacks.weight_norm import WeightNormMonitor

__all__ = [
    "WeightNormMonitor",
    "EffectiveDecayMonitor",
    "ScaleInvarianceMonitor",
    "TrainingReport",
    "LayerFilter",
    "MonitorWarning",
]
