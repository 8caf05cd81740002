"""A training ``DataLoader`` that resumes mid-epoch exactly: :class:`ResumableSampler`, :class:`TrainProgress` and
:class:`ResumableDataLoader`. Not tied to any data set.

**The training order.** :class:`ResumableSampler` is torch's ``DistributedSampler`` (Lightning keeps it under DDP),
shuffled from ``seed + epoch``; rank ``r`` of ``W`` takes positions ``r, r + W, ...`` of the (padded) epoch order, so
``W`` ranks with batch ``B`` see the same global batches as one process with batch ``W * B``. It can start an epoch
part-way, at a global sample position.

**The position.** :class:`TrainProgress` counts the training batches consumed in the current epoch, where they are
used (a data module's ``on_after_batch_transfer``), not where the loader yields them (prefetching runs ahead).
:class:`ResumableDataLoader` reports it in :meth:`~ResumableDataLoader.state_dict` (with the batch size, world size
and seed it was counted with) and :meth:`~ResumableDataLoader.load_state_dict` restarts the sampler after the
consumed batches: exact with the same number of processes and batch size; with others the epoch continues from the
same global sample position (with a warning).

Lightning 2.6 saves and restores a stateful training loader by itself only when the loader is built after the
checkpoint is read; ``configure_optimizers`` asking for ``trainer.estimated_stepping_batches`` (any schedule over the
whole fit) builds it before. A data module should therefore also save the loader's state in its own ``state_dict``
and apply it when the resumed fit builds the loader (as ``CIFAR10DataModule`` of the experiments does).

**A fit that stopped part-way through an epoch** (``max_steps``, ``max_time``, ``trainer.should_stop``) and is then
continued from its last checkpoint with a larger limit: Lightning counts the cut-short epoch as processed, and the
checkpoint written at its end (``on_train_epoch_end``: ``ModelCheckpoint``'s default and ``last.ckpt``) resumes at the
*next* epoch's first batch -- the rest of the epoch is never seen. :func:`continue_stopped_epoch` rewrites such a
checkpoint's loop state, as the resume reads it, into the state of a checkpoint saved after that epoch's last trained
batch (the preemption path), so the continued fit finishes the epoch first. Where that is not done, the sampler
warns when Lightning skips the rest of a resumed epoch (:meth:`ResumableSampler.set_epoch`).

**Any training loader** (:func:`continue_train_loaders`, which ``DecayMixin.on_train_start`` calls): at a mid-epoch
resume, a stateful loader (torchdata's ``StatefulDataLoader``, :class:`ResumableDataLoader`) gets its saved state
also where Lightning left it unapplied (the loader built before the checkpoint was read), a plain ``DataLoader`` over a
:class:`ResumableSampler` continues after the batches the epoch consumed, and any other loader warns once
(:func:`mid_epoch_resume_warning`): the rest of that epoch sees other batches than the uninterrupted fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

__all__ = [
    "ResumableDataLoader",
    "ResumableSampler",
    "TrainProgress",
    "continue_stopped_epoch",
    "continue_train_loaders",
    "mid_epoch_resume_warning",
]


class ResumableSampler(DistributedSampler):
    """torch's ``DistributedSampler`` (same order for the same ``seed``, epoch and world size) that can start an
    epoch part-way: :meth:`resume` skips the first ``offset`` positions of that epoch's global order.

    Works for one process (``num_replicas=1``, the default) as for many; being a ``DistributedSampler``, Lightning
    does not replace it under DDP. ``len()`` is the full epoch's share of this rank, also in a resumed epoch (as
    Lightning counts the batches of the epoch it resumes), while the iteration yields only the rest.
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.resume_epoch: int | None = None
        self.resume_offset = 0

    def global_order(self) -> list[int]:
        """This epoch's order of all ranks (padded to a multiple of ``num_replicas`` as torch pads)."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(n, generator=generator).tolist()
        else:
            indices = list(range(n))
        padding = self.total_size - len(indices)
        if padding > 0:
            indices += (indices * math.ceil(padding / max(1, len(indices))))[:padding]
        return indices

    def resume(self, epoch: int, offset: int) -> None:
        """Start ``epoch`` at global position ``offset`` (samples all ranks consumed before the checkpoint)."""
        self.resume_epoch, self.resume_offset = int(epoch), max(0, int(offset))
        self.set_epoch(int(epoch))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order (Lightning calls this as each epoch starts). Warns when a pending resume of an
        earlier, unfinished epoch is passed over: the fit resumed at a later epoch than the checkpoint's position."""
        pending = self.resume_epoch
        if pending is not None and epoch > pending and 0 < self.resume_offset < self.total_size:
            rank_zero_warn(
                f"the resumed fit starts epoch {epoch}, but the checkpoint's training position is part-way through "
                f"epoch {pending} ({self.resume_offset} of its {self.total_size} samples consumed): the rest of epoch "
                f"{pending} is skipped and the run is not an exact continuation. This happens when a fit stopped "
                "mid-epoch (max_steps, max_time, should_stop) is continued from the checkpoint written as it "
                "stopped; see continue_stopped_epoch and docs/reliability.md"
            )
            self.resume_epoch = None
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        start = 0
        if self.resume_epoch is not None and self.epoch == self.resume_epoch:
            start = min(self.resume_offset, self.total_size)
            self.resume_epoch = None  # once: a later pass over this epoch starts at its beginning
        return iter(order[start + self.rank : self.total_size : self.num_replicas])


@dataclass
class TrainProgress:
    """Training batches consumed in the current epoch (counted where they are used, after the transfer)."""

    epoch: int = 0
    batches: int = 0

    def next_batch(self, epoch: int) -> int:
        """The index in ``epoch`` of the batch being consumed now (counting restarts with each epoch)."""
        if epoch != self.epoch:
            self.epoch, self.batches = epoch, 0
        index = self.batches
        self.batches += 1
        return index


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` whose :meth:`state_dict` is the epoch and the batches consumed in it (the counts of
    ``progress``, which its user advances), so that Lightning checkpoints it and a fit resumed mid-epoch continues
    with the next unseen batch. Give it a :class:`ResumableSampler`; with another sampler a resume starts the
    epoch from its beginning."""

    def __init__(self, dataset: Dataset, *args: Any, progress: TrainProgress | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self.progress = progress if progress is not None else TrainProgress()

    def _world(self) -> int:
        return self.sampler.num_replicas if isinstance(self.sampler, ResumableSampler) else 1

    def state_dict(self) -> dict[str, Any]:
        """Where the epoch stands: ``epoch``, ``batches`` consumed, and the ``batch_size``/``world_size``/``seed``
        they were counted with."""
        seed = self.sampler.seed if isinstance(self.sampler, ResumableSampler) else None
        return {
            "epoch": self.progress.epoch,
            "batches": self.progress.batches,
            "batch_size": self.batch_size,
            "world_size": self._world(),
            "seed": seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the saved epoch after its consumed batches (Lightning calls this on a mid-epoch resume)."""
        epoch, batches = int(state_dict.get("epoch", 0)), int(state_dict.get("batches", 0))
        batch_size = int(state_dict.get("batch_size") or self.batch_size or 1)
        world = int(state_dict.get("world_size") or 1)
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):
            rank_zero_warn("the training sampler was replaced; the resumed epoch starts from its beginning")
            return
        changed = [
            f"{name} {saved} -> {now}"
            for name, saved, now in (
                ("batch_size", batch_size, self.batch_size),
                ("world_size", world, sampler.num_replicas),
                ("seed", state_dict.get("seed", sampler.seed), sampler.seed),
            )
            if saved != now
        ]
        if changed:
            rank_zero_warn(
                f"resuming mid-epoch with changed data settings ({', '.join(changed)}): the epoch continues from "
                "the same global sample position, but the run is not an exact continuation"
            )
        offset = batches * batch_size * world
        if offset >= sampler.total_size:  # the checkpoint closed its epoch: the next one starts fresh
            epoch, batches, offset = epoch + 1, 0, 0
        self.progress.epoch, self.progress.batches = epoch, batches
        sampler.resume(epoch, offset)


def continue_stopped_epoch(checkpoint: dict[str, Any], position: Mapping[str, Any]) -> bool:
    """Make a checkpoint written when a fit stopped part-way through an epoch continue that epoch; True if changed.

    Lightning ends a fit at ``max_steps`` (also ``max_time``, ``trainer.should_stop``) by closing the running epoch:
    its loop state counts the epoch as processed before ``on_train_epoch_end``, where ``ModelCheckpoint`` writes its
    default and ``last`` checkpoints. A fit resumed from that checkpoint with a larger ``max_steps`` starts the next
    epoch; an uninterrupted fit would have finished this one first. When ``checkpoint`` is such a checkpoint --
    the epoch processed but not completed, its last batch not reached (``is_last_batch`` false) -- and ``position``
    (the training loader's :meth:`ResumableDataLoader.state_dict`) is part-way through that same epoch after the same
    number of batches, the fit loop's state (``checkpoint["loops"]["fit_loop"]``, changed in place) is set to what a
    checkpoint saved after that epoch's last trained batch holds (``ModelCheckpoint(every_n_train_steps=...)``, the
    path of a preempted fit): the epoch not yet processed, the last batch not yet completed. Lightning then resumes
    inside the epoch, and the loader continues after the consumed batches.

    Call it where the resumed fit reads the checkpoint before restoring its loops: a ``LightningModule``'s or a
    callback's ``on_load_checkpoint``, or (as ``CIFAR10DataModule``) a data module's ``load_state_dict`` through the
    trainer. Anything else is left as it is (False).
    """
    fit = (checkpoint.get("loops") or {}).get("fit_loop")
    if not isinstance(fit, dict):
        return False
    epochs, batches = fit.get("epoch_progress"), fit.get("epoch_loop.batch_progress")
    if not isinstance(epochs, dict) or not isinstance(batches, dict) or batches.get("is_last_batch", True):
        return False
    try:
        for key in ("total", "current"):
            epoch, batch = epochs[key], batches[key]
            closed = epoch["ready"] == epoch["started"] == epoch["processed"] == epoch["completed"] + 1
            if not closed or not batch["ready"] == batch["started"] == batch["processed"] == batch["completed"]:
                return False
        consumed = int(batches["current"]["completed"])
        same_place = (
            int(position.get("epoch", -1)) == int(epochs["current"]["completed"])
            and int(position.get("batches", -1)) == consumed
        )
    except (KeyError, TypeError, ValueError):
        return False
    if not same_place or consumed < 1:
        return False
    for key in ("total", "current"):
        epochs[key]["processed"] -= 1
        batches[key]["completed"] -= 1
    loop_state = fit.get("epoch_loop.state_dict")
    if isinstance(loop_state, dict) and isinstance(loop_state.get("_batches_that_stepped"), int):
        loop_state["_batches_that_stepped"] -= 1  # Lightning adds the step back when it resumes after a batch
    return True


# ---- any training loader at a mid-epoch resume -------------------------------------------------------------------


def is_stateful_loader(loader: Any) -> bool:
    """True for a loader with ``state_dict`` and ``load_state_dict`` (torchdata's ``StatefulDataLoader``,
    :class:`ResumableDataLoader`): Lightning saves its state in checkpoints and a resume restores it."""
    return callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None))


def resumable_sampler_of(loader: Any) -> ResumableSampler | None:
    """The :class:`ResumableSampler` that orders ``loader`` (as its ``sampler`` or its batch sampler's) in batches
    of a known size, else None."""
    if not _batch_size(loader):
        return None
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if isinstance(sampler, ResumableSampler):
            return sampler
    return None


def _batch_size(loader: Any) -> int:
    size = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return int(size) if isinstance(size, int) else 0


def _why_not_exact(loader: Any) -> str:
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(batch_sampler, "sampler", sampler) if batch_sampler is not None else sampler
    what = type(loader).__name__ + (f" with a {type(sampler).__name__}" if sampler is not None else "")
    if isinstance(sampler, RandomSampler):
        return f"{what} draws a new order"
    if isinstance(sampler, SequentialSampler):
        return f"{what} starts again at the first samples"
    return f"{what} starts its iteration again"


def mid_epoch_resume_warning(
    loaders: Iterable[Any], epoch: int | None = None, batches: int | None = None, total: int | float | None = None
) -> str | None:
    """None when a fit resumed part-way through an epoch continues every training loader in ``loaders`` exactly
    (a stateful loader, or a loader over a :class:`ResumableSampler`); else the warning, naming both fixes.
    ``epoch``, ``batches`` (consumed before the checkpoint) and ``total`` (the epoch's batches) go into the text."""
    problems = [
        _why_not_exact(loader)
        for loader in loaders
        if not is_stateful_loader(loader) and resumable_sampler_of(loader) is None
    ]
    if not problems:
        return None
    where = "part-way through its epoch"
    if epoch is not None and batches is not None:
        where = f"part-way through epoch {epoch} ({batches}" + (f" of its {int(total)}" if total else "") + " batches"
        where += " consumed)"
    return (
        f"this fit resumes {where}, but the training loader cannot continue an epoch part-way: "
        f"{'; '.join(problems)}. The rest of that epoch will see other batches than the uninterrupted fit, which is "
        "not an exact continuation. For an exact resume use torchdata's StatefulDataLoader (pip install torchdata; "
        "from torchdata.stateful_dataloader import StatefulDataLoader, a drop-in for DataLoader) or give the "
        "DataLoader lightning_decay.integration.resumable_loader.ResumableSampler as its sampler "
        "(DataLoader(data, batch_size=..., sampler=ResumableSampler(data, seed=...))); see docs/reliability.md"
    )


def continue_train_loaders(trainer: Trainer) -> None:
    """At the start of a fit resumed part-way through an epoch (``on_train_start``), continue the training loaders
    where the checkpoint left them, and warn once (rank zero) when one cannot (:func:`mid_epoch_resume_warning`).

    Stateful loaders get the state the checkpoint saved for them where Lightning left it unapplied: Lightning 2.6
    applies it only to a loader built after it read the checkpoint, not to one that ``configure_optimizers`` built
    earlier by asking for ``trainer.estimated_stepping_batches`` (as every schedule over the whole fit does;
    Lightning-AI/pytorch-lightning#20550). A :class:`ResumableSampler` in a loader that is not stateful starts the
    epoch after the batches consumed before the checkpoint (Lightning's count). The training iterator is then made
    again from the loaders. Does nothing in a fit that starts fresh or at an epoch's start."""
    loop = trainer.fit_loop
    combined = getattr(loop, "_combined_loader", None)
    if combined is None or not loop.restarted_mid_epoch:
        return
    batches, total = int(loop.epoch_loop.batch_progress.current.processed), trainer.num_training_batches
    if batches < 1 or batches >= total:  # nothing consumed yet, or the epoch's last batch: Lightning goes on itself
        return
    epoch = int(loop.epoch_progress.current.processed)  # the epoch Lightning sets on the samplers
    loaders = list(combined.flattened)
    restarted = False
    pending = getattr(loop, "_combined_loader_states_to_load", None)
    if pending:  # Lightning built the loader before it read the checkpoint and left the saved states unapplied
        combined._load_state_dicts(pending)
        loop._combined_loader_states_to_load = []
        restarted = True
    for loader in loaders:
        sampler = resumable_sampler_of(loader)
        if sampler is not None and not is_stateful_loader(loader):
            sampler.resume(epoch, batches * _batch_size(loader) * sampler.num_replicas)
            restarted = True
    fetcher = getattr(loop, "_data_fetcher", None)
    if restarted and fetcher is not None:
        iter(fetcher)  # the iterator Lightning made before the resume still starts at the epoch's first batch
    message = mid_epoch_resume_warning(loaders, epoch=epoch, batches=batches, total=total)
    if message is not None:
        rank_zero_warn(message)
