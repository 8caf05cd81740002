"""``ScaleInvarianceMonitor``: per layer, is the loss scale-invariant in it, and is it in rotational equilibrium?"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_decay.callbacks.base import (
    LayerFilter,
    StepMetrics,
    StepMonitor,
    logging_step_index,
    warn_once,
    weight_layers,
)
from lightning_decay.callbacks.batches import NotPortableError, batch_to_device, first_samples, portable_batch
from lightning_decay.callbacks.media import update_layer_summary
from lightning_decay.diagnostics.equilibrium import (
    EquilibriumPrediction,
    angular_update,
    effective_lr,
    equilibrium_not_derived,
    rotational_equilibrium,
)
from lightning_decay.diagnostics.names import clean_parameter_name
from lightning_decay.diagnostics.scale_freeness import scale_check
from lightning_decay.diagnostics.sharded_norms import ShardedTensors
from lightning_decay.validation import check_int, check_nonnegative, check_positive

__all__ = ["ScaleInvarianceMonitor"]

_TINY = 1e-30
#: The prediction of a layer no optimizer steps.
_NO_PREDICTION = EquilibriumPrediction(math.nan, math.nan, math.nan, adam_like=False)
#: Normalization layers that can make the weights before them scale-invariant.
_NORMALIZATIONS = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, *(
        (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
    ),
)
#: The keys that need a layer labeled scale-invariant (and, the first two, a derived equilibrium).
_INVARIANT_KEYS = (
    "scale_invariance/angular_update_equilibrium, scale_invariance/weight_norm_equilibrium and"
    " scale_invariance/effective_lr"
)


def _feature_size(norm: nn.Module) -> int | None:
    """The number of features a normalization that keeps a per-feature bias normalizes over (None: BatchNorm,
    whose per-channel mean removes such a bias, and others)."""
    if isinstance(norm, nn.GroupNorm):
        return norm.num_channels
    shape = getattr(norm, "normalized_shape", None)  # LayerNorm, RMSNorm
    return int(shape[-1]) if isinstance(norm, _NORMALIZATIONS) and shape else None


def likely_cause(pl_module: nn.Module, param: Tensor) -> str:
    """Why the loss is probably not scale-invariant in ``param`` (a weight expected to sit before a normalization):
    no normalization layer in the model; a trainable nonzero bias of the same module when a LayerNorm / GroupNorm /
    RMSNorm of the layer's width exists (it keeps the bias, which does not scale with the weight); or (else) what
    invariance needs."""
    modules = list(pl_module.modules())
    norms = [m for m in modules if isinstance(m, _NORMALIZATIONS)]
    if not norms:
        return (
            "the model has no normalization layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm), and without one no"
            " weight is scale-invariant"
        )
    owner = next((m for m in modules if any(p is param for p in m.parameters(recurse=False))), None)
    bias = getattr(owner, "bias", None) if owner is not None else None
    width = param.shape[0] if param.ndim >= 1 else None
    bias_kept = any(_feature_size(norm) == width for norm in norms)
    if (
        bias_kept and isinstance(bias, Tensor) and bias is not param and bias.requires_grad
        and bool(bias.detach().ne(0).any())
    ):
        name = next((clean_parameter_name(n) for n, p in pl_module.named_parameters() if p is bias), "its bias")
        return (
            f"a bias before a normalization breaks invariance: {name} is added before the normalization and does not"
            " scale with the weight (a LayerNorm/GroupNorm keeps it; only BatchNorm's per-channel mean removes it);"
            " build the layer with bias=False"
        )
    return (
        "a weight is scale-invariant only when a normalization follows it with nothing in between whose scale"
        " matters (a bias kept by the normalization, a residual added before it); layers without one (a classifier"
        " head, a model whose normalization sits elsewhere) are not"
    )


def _training_step_loss(pl_module: pl.LightningModule, batch: Any) -> Tensor:
    """The loss ``training_step(batch, 0)`` returns, with its ``self.log`` calls switched off."""

    def no_log(*_args: Any, **_kwargs: Any) -> None:
        return None

    pl_module.log = no_log  # type: ignore[method-assign]
    pl_module.log_dict = no_log  # type: ignore[method-assign]
    try:
        output = pl_module.training_step(batch, 0)
    finally:
        del pl_module.log
        del pl_module.log_dict
    if isinstance(output, Mapping):
        output = output["loss"]
    if not isinstance(output, Tensor):
        raise TypeError(
            "ScaleInvarianceMonitor: training_step did not return a loss tensor; pass loss_fn=(module, batch) -> loss"
        )
    return output


class ScaleInvarianceMonitor(StepMonitor):
    """Per layer: is its loss scale-invariant, and is it in rotational equilibrium?

    Keys (``<layer>``: a parameter name; default layers: weights with ``ndim >= 2``):

    * ``scale_invariance/cos/<layer>``: ``<w, g> / (|w| |g|)`` before the step (0 for a scale-invariant loss:
      ``L(c w) = L(w)`` implies ``<grad L(w), w> = 0``).
    * ``scale_invariance/relative_update/<layer>``: ``|w_{t+1} - w_t| / |w_t|``.
    * ``scale_invariance/angular_update/<layer>``: the angle between ``w_t`` and ``w_{t+1}`` in radians
      (:func:`~lightning_decay.diagnostics.equilibrium.angular_update`).
    * ``scale_invariance/angular_update_equilibrium/<layer>`` and ``scale_invariance/weight_norm_equilibrium/<layer>``:
      the rotational-equilibrium predictions (Kosson et al. 2024,
      :func:`~lightning_decay.diagnostics.equilibrium.rotational_equilibrium`) for Adam-family rules with a scalar
      decay factor (AdamW both conventions, ProxAdam, AdamC, ``torch.optim.AdamW``); omitted for AdamL2, AdamP,
      cautious decay and SGD (not derived, see docs/monitoring.md).
    * ``scale_invariance/effective_lr/<layer>``: ``lr' / |w|`` (Adam family: the angle per unit of normalized
      update) or ``lr / |w|^2`` (other optimizers, e.g. SGD); for layers labeled scale-invariant (all monitored
      layers while no check has run or when checks are off).
    * ``scale_invariance/invariant/<layer>`` (1/0) and ``scale_invariance/loss_change/<layer>``
      (``|L(c w) - L(w)| / |L(w)|``) on steps the numerical check runs: on a fixed batch (the first training batch,
      its first ``check_batch_size`` samples), each layer's weights are scaled by ``check_scale`` in turn, the loss
      recomputed (train mode, same RNG seed, buffers such as BatchNorm statistics restored), and the layer labeled
      invariant when the relative change is ``<= check_tolerance``
      (:func:`~lightning_decay.diagnostics.scale_freeness.scale_check`).

    With a ``WandbLogger``: ``tables/scale_invariance`` and ``plots/scale_invariance`` at each epoch end. When a
    check labels no layer invariant, or an invariant layer's optimizer has no equilibrium prediction, a warning
    (once per fit) says which keys are missing and why.

    ``check_every_n_steps``: the check runs after the first optimizer step of training (a one-time start-up cost:
    one forward pass per monitored layer on the fixed batch) and then every ``check_every_n_steps`` optimizer steps
    (default 1000; 0: never); its keys are logged with the next logging step. ``loss_fn(module, batch) -> loss``
    defaults to the module's ``training_step`` (its ``self.log`` calls muted, under ``torch.no_grad``: a module
    that updates metrics in ``training_step`` should skip that when grad is off, as ``ImageClassifier`` does);
    pass one for manual optimization. Update metrics assume one optimizer step per batch.

    Resume: the checkpoint holds the fixed batch (tensors on the CPU, moved to the module's device for the next
    check), the labels, when the check last ran and results not yet logged, so a run resumed mid-epoch logs the
    same values as the uninterrupted one. Under DDP the checkpoint is rank 0's: after a resume every rank checks on
    rank 0's batch (rank 0, which logs, continues exactly).
    """

    _default_layers = staticmethod(weight_layers)
    _summary_name = "scale_invariance"

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        layers: LayerFilter = None,
        check_every_n_steps: int = 1000,
        check_scale: float = 2.0,
        check_tolerance: float = 1e-3,
        check_batch_size: int | None = 16,
        loss_fn: Callable[[pl.LightningModule, Any], Tensor] | None = None,
        wandb_summary: bool = True,
    ) -> None:
        super().__init__(log_every_n_steps, layers, wandb_summary)
        self.check_every_n_steps = check_int("check_every_n_steps", check_every_n_steps, low=0)
        self.check_scale = check_positive("check_scale", check_scale)
        if self.check_scale == 1.0:
            raise ValueError("check_scale must be != 1 (scaling by 1 changes nothing), got 1.0")
        self.check_tolerance = check_nonnegative("check_tolerance", check_tolerance)
        self.check_batch_size = None if check_batch_size is None else check_int(
            "check_batch_size", check_batch_size, low=1
        )
        self.loss_fn = loss_fn
        self._fixed_batch: Any = None
        #: The fixed batch came from a checkpoint (tensors on the CPU) and is not yet on the module's device.
        self._fixed_batch_on_cpu = False
        self._snapshot: list[Tensor] | None = None
        self._before: dict[str, Tensor] = {}
        #: layer -> (invariant, relative loss change) of the latest check.
        self.labels: dict[str, bool] = {}
        self.loss_changes: dict[str, float] = {}
        self._last_check_step: int | None = None
        self._pending_check: list[tuple[str, list[str], Tensor]] = []
        self._check_off_reason: str | None = None
        self._warned_unportable = False
        #: This fit warned already that no layer passed the check / that a prediction is not derived.
        self._warned_no_invariant = False
        self._warned_no_prediction = False
        self._module: nn.Module | None = None

    @property
    def _checks_enabled(self) -> bool:
        return self.check_every_n_steps != 0

    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = [self._params[i] for i in self._selected]
        self._layer_names = [self._names[i] for i in self._selected]
        self._tensors = ShardedTensors(params, self._flat_group)
        self._numels = [p.numel() for p in params]
        self._shapes = [tuple(p.shape) for p in params]
        owner: dict[int, tuple[Optimizer, dict[str, Any]]] = {}
        for optimizer in trainer.optimizers:
            optimizer = getattr(optimizer, "_optimizer", optimizer)
            for group in optimizer.param_groups:
                for param in group["params"]:
                    owner[id(param)] = (optimizer, group)
        self._owner = [owner.get(id(p)) for p in params]
        self._check_off_reason = None
        self._warned_no_invariant = self._warned_no_prediction = False
        if self._flat_group is not None and self.loss_fn is None and self._checks_enabled:
            # FSDP1 unshards parameters in the wrapped module's forward, which training_step called from here bypasses.
            self._check_off_reason = "FSDP1 (FSDPStrategy) needs loss_fn=(module, batch) -> loss that runs the model"
            warn_once(f"ScaleInvarianceMonitor: numerical scale check off: {self._check_off_reason}")

    def _warn_no_layers(self, trainer: pl.Trainer) -> None:
        if self.layers is not None:
            super()._warn_no_layers(trainer)
        elif self._names:
            flat = " (FSDP1 flattens parameters to 1-D: pass layers=)" if self._flat_group is not None else ""
            warn_once(
                "ScaleInvarianceMonitor: no layer to monitor: the default selects weights with ndim >= 2 and none of"
                f" the {len(self._names)} trainable parameters has one{flat}, so nothing is logged; pass layers="
            )

    # -- the fixed batch -----------------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._fixed_batch is None and self._checks_enabled:
            self._fixed_batch = first_samples(batch, self.check_batch_size)

    # -- before / after the step -------------------------------------------------------------------------------
    def _before_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        if self._snapshot is not None or not len(self._tensors):  # already taken for this step (several optimizers)
            return
        tensors = self._tensors
        weights = tensors.local()
        grads = tensors.local([p.grad if p.grad is not None else torch.zeros_like(p) for p in tensors.tensors])
        has_grad = torch.tensor([p.grad is not None for p in tensors.tensors])
        weight_norms = tensors.norms(weights)
        grad_norms = tensors.norms(grads)
        cos = tensors.dots(weights, grads) / (weight_norms * grad_norms).clamp_min(_TINY)
        cos = torch.where(has_grad.to(cos.device), cos, torch.full_like(cos, math.nan))
        self._snapshot = [w.detach().clone() for w in weights]
        predictions = [
            rotational_equilibrium(owner[0], owner[1], numel, shape) if owner is not None else _NO_PREDICTION
            for owner, numel, shape in zip(self._owner, self._numels, self._shapes)
        ]
        self._before = {
            "cos": cos,
            "weight_norm": weight_norms,
            "angle_eq": torch.tensor([p.angular_update for p in predictions], dtype=torch.float64),
            "norm_eq": torch.tensor([p.weight_norm for p in predictions], dtype=torch.float64),
            "lr": torch.tensor([p.lr for p in predictions], dtype=torch.float64),
            "adam_like": torch.tensor([p.adam_like for p in predictions]),
        }

    def _after_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> StepMetrics:
        metrics = StepMetrics()
        snapshot, before = self._snapshot, self._before
        self._snapshot, self._before = None, {}
        if snapshot is None:
            return metrics
        tensors, names = self._tensors, self._layer_names
        new = tensors.local()
        difference = torch._foreach_sub(new, snapshot)
        old_norm = before["weight_norm"].double()
        difference_norm = tensors.norms(difference).double()
        new_norm = tensors.norms(new).double()
        along = tensors.dots(snapshot, difference).double()
        metrics.add("scale_invariance/cos/", names, before["cos"])
        metrics.add("scale_invariance/relative_update/", names, difference_norm / old_norm.clamp_min(_TINY))
        metrics.add("scale_invariance/angular_update/", names, angular_update(old_norm, difference_norm, along))
        for prefix, names_, values in self._pending_check:  # the latest check's results, if not yet logged
            metrics.add(prefix, names_, values)
        self._pending_check = []
        # Equilibrium predictions and the effective lr concern scale-invariant layers: those the latest check
        # labeled so, or every monitored layer while no check has run (or checks are off).
        invariant = [i for i, name in enumerate(names) if self.labels.get(name, not self.labels)]
        derived = [i for i in invariant if math.isfinite(float(before["angle_eq"][i]))]
        if derived:
            index = torch.tensor(derived, dtype=torch.long)
            chosen = [names[i] for i in derived]
            metrics.add("scale_invariance/angular_update_equilibrium/", chosen, before["angle_eq"][index])
            metrics.add("scale_invariance/weight_norm_equilibrium/", chosen, before["norm_eq"][index])
        if len(derived) < len(invariant) and not self._warned_no_prediction:
            self._warn_no_prediction([i for i in invariant if i not in derived])
        effective = [i for i in invariant if self._owner[i] is not None]
        if effective:
            index = torch.tensor(effective, dtype=torch.long)
            value = effective_lr(before["lr"][index], new_norm.cpu()[index], before["adam_like"][index])
            metrics.add("scale_invariance/effective_lr/", [names[i] for i in effective], value)
        return metrics

    def _warn_no_prediction(self, missing: list[int]) -> None:
        """Once per fit: layers labeled scale-invariant get no equilibrium prediction (and why)."""
        reasons: dict[str, list[str]] = {}
        for i in missing:
            owner = self._owner[i]
            reason = equilibrium_not_derived(*owner) if owner is not None else "no optimizer steps it"
            if reason is not None:
                reasons.setdefault(reason, []).append(self._layer_names[i])
        if not reasons:
            return
        self._warned_no_prediction = True
        parts = [f"{', '.join(names)}: {reason}" for reason, names in reasons.items()]
        warn_once(
            "ScaleInvarianceMonitor: no scale_invariance/angular_update_equilibrium or weight_norm_equilibrium for "
            + "; ".join(parts)
            + ". The rotational equilibrium is derived for Adam-family rules with one decay factor per step"
            " (AdamW both conventions, ProxAdam, AdamC, torch.optim.AdamW); see docs/monitoring.md"
        )

    # -- the numerical check -------------------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._stepped and self._check_due(trainer):
            with torch.no_grad():
                self._run_check(trainer, pl_module)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _check_due(self, trainer: pl.Trainer) -> bool:
        if not self._checks_enabled or self._fixed_batch is None or not len(self._tensors) or self._check_off_reason:
            return False
        step = logging_step_index(trainer)
        return self._last_check_step is None or step - self._last_check_step >= self.check_every_n_steps

    def _run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_check_step = logging_step_index(trainer)
        if self._fixed_batch_on_cpu:  # restored from a checkpoint: to the module's device (once)
            self._fixed_batch = batch_to_device(self._fixed_batch, pl_module.device)
            self._fixed_batch_on_cpu = False
        changes = scale_check(
            pl_module,
            self._tensors.tensors,
            self.loss_fn or _training_step_loss,
            self._fixed_batch,
            self.check_scale,
        )
        values = changes.tolist()
        self.loss_changes = dict(zip(self._layer_names, values))
        self.labels = {name: value <= self.check_tolerance for name, value in self.loss_changes.items()}
        invariant = torch.tensor([float(self.labels[n]) for n in self._layer_names])
        if values and not any(self.labels.values()) and not self._warned_no_invariant:
            self._warn_no_invariant(pl_module, values)
        self._pending_check = [
            ("scale_invariance/loss_change/", self._layer_names, changes),
            ("scale_invariance/invariant/", self._layer_names, invariant),
        ]

    def _warn_no_invariant(self, pl_module: pl.LightningModule, changes: list[float]) -> None:
        """Once per fit: the check labeled no layer scale-invariant, so the keys that need one are not logged."""
        self._warned_no_invariant = True
        finite = [(change, i) for i, change in enumerate(changes) if math.isfinite(change)]
        best, index = min(finite) if finite else (math.nan, 0)
        name = self._layer_names[index]
        cause = likely_cause(pl_module, self._tensors.tensors[index])
        close = (
            f"; if {best:.2g} is numerical noise, raise check_tolerance" if best <= 10 * self.check_tolerance else ""
        )
        warn_once(
            f"ScaleInvarianceMonitor: no layer passed the scale-invariance check (best relative loss change"
            f" {best:.2g} > check_tolerance {self.check_tolerance:g}, for {name}, weights scaled by"
            f" {self.check_scale:g}), so {_INVARIANT_KEYS} are not logged. Likely cause: {cause}. To log the"
            f" predictions for every monitored layer without the check, set check_every_n_steps=0{close}"
        )

    # -- resume / summary ----------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        """Distinct per configuration, so that several instances in one Trainer keep separate checkpoint state."""
        return self._generate_state_key(
            log_every_n_steps=self.log_every_n_steps, layers=repr(self.layers), check_every=self.check_every_n_steps
        )

    def state_dict(self) -> dict[str, Any]:
        """The latest labels, when the check last ran, its results not yet logged, and the fixed check batch (its
        tensors copied to the CPU), so that a resumed run checks on the same batch and logs the same values.

        Everything is plain (tensors, numbers, strings, lists, dicts): ``torch.load(weights_only=True)`` reads it,
        as Lightning's resume does by default. A fixed batch that holds anything else (a named tuple, a dataclass,
        a tensor subclass) is left out with a warning; a run resumed from that checkpoint re-captures its fixed
        batch from the first batch after the resume, as checkpoints without ``fixed_batch`` do."""
        state: dict[str, Any] = {
            "labels": dict(self.labels),
            "loss_changes": dict(self.loss_changes),
            "last_check_step": self._last_check_step,
            "pending_check": [
                [prefix, list(names), values.detach().cpu()] for prefix, names, values in self._pending_check
            ],
        }
        if self._fixed_batch is not None:
            try:
                state["fixed_batch"] = portable_batch(self._fixed_batch)
            except NotPortableError as error:
                if not self._warned_unportable:
                    self._warned_unportable = True
                    warn_once(
                        f"ScaleInvarianceMonitor: the fixed check batch holds a {error}, which a weights_only"
                        " checkpoint cannot hold; it is not saved, and a resumed run checks on another batch"
                    )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.labels = dict(state_dict.get("labels", {}))
        self.loss_changes = dict(state_dict.get("loss_changes", {}))
        self._last_check_step = state_dict.get("last_check_step")
        pending = state_dict.get("pending_check", [])
        self._pending_check = [(prefix, list(names), values) for prefix, names, values in pending]
        if "fixed_batch" in state_dict:  # older checkpoints have none: the batch is re-captured
            self._fixed_batch = state_dict["fixed_batch"]
            self._fixed_batch_on_cpu = True

    def _update_summary(self, values: Mapping[str, float]) -> None:
        families = {
            column: f"scale_invariance/{column}/"
            for column in ("cos", "relative_update", "angular_update", "angular_update_equilibrium", "invariant")
        }
        update_layer_summary(self._summary, values, families)

    def _summary_plot_columns(self) -> list[str]:
        return ["angular_update", "angular_update_equilibrium"]
