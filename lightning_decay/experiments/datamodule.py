"""CIFAR-10 as a ``LightningDataModule`` that holds the whole data set in memory as uint8 tensors.

The sources (``data_dir``, ``download``) and the decoding are those of :mod:`lightning_decay.experiments.cifar10`;
``data_dir=None`` (the default) reads the class-balanced sample shipped with the package.

DataLoaders fetch whole batches by tensor indexing (:class:`~lightning_decay.experiments.dataset.InMemoryImageDataset`)
and yield uint8 ``(images, labels)``; augmentation (random crop 32 with 4-pixel zero padding + horizontal flip,
training batches only) and normalization with the CIFAR-10 mean/std run batched, on the model's device, in
``on_after_batch_transfer``. The test split serves as both the validation and the test set (the reference results
report test accuracy); there is no held-out validation split.

**Determinism and exact resume.** Everything random is a function of ``seed``, the epoch and the batch's position,
never of a global RNG or of how long the process has run:

* the training order is a :class:`~lightning_decay.integration.resumable_loader.ResumableSampler` (a
  ``DistributedSampler``: Lightning keeps it under DDP), shuffled from ``seed + epoch`` like torch's
  ``DistributedSampler``; rank ``r`` of ``W`` takes positions ``r, r + W, ...`` of the (padded) epoch order, so
  ``W`` ranks with batch ``B`` see the same global batches as one process with batch ``W * B``;
* each training batch's crop/flip draws come from a CPU generator seeded with ``(seed, global rank, epoch, batch
  index in the epoch)``.

The data module's ``state_dict`` (the epoch and the batches consumed in it) is saved in every Lightning checkpoint
and restored before the training loader is built, so a fit resumed mid-epoch continues with the next unseen batch
and the same augmentation as an uninterrupted run (bitwise, given deterministic kernels). Exact with the same number
of processes and batch size; with others it continues from the same global sample position (and warns). The
training ``DataLoader`` (:class:`~lightning_decay.integration.resumable_loader.ResumableDataLoader`) carries the
same state for Lightning's stateful-loader mechanism -- which alone is not enough in Lightning 2.6: it restores a
loader only when the loader is built after the checkpoint is read, and ``configure_optimizers`` asking for
``trainer.estimated_stepping_batches`` (any schedule over the whole fit) builds it before.

A fit continued from the checkpoint a fit wrote as it stopped part-way through an epoch (``max_steps``, then a
larger ``max_steps``) continues that epoch too: Lightning's loops would start the next one, and ``load_state_dict``
makes them continue (:func:`~lightning_decay.integration.resumable_loader.continue_stopped_epoch`).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_decay.experiments.augment import batch_seed, normalize, random_crop_flip
from lightning_decay.experiments.cifar10 import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    class_balanced_indices,
    download_cifar10,
    load_source,
    resolve_source,
)
from lightning_decay.experiments.dataset import InMemoryImageDataset, collate_stacked
from lightning_decay.integration.resumable_loader import (
    ResumableDataLoader,
    ResumableSampler,
    TrainProgress,
    continue_stopped_epoch,
)
from lightning_decay.validation import check_bool, check_int

__all__ = ["CIFAR10DataModule"]


class CIFAR10DataModule(LightningDataModule):
    """CIFAR-10 held in memory; see the module docstring for the batch pipeline and exact resume, and
    :mod:`lightning_decay.experiments.cifar10` for the sources.

    Args:
        data_dir: source folder or ``.tar.gz`` file; None (default) uses the embedded sample.
        batch_size: training batch size (per device).
        eval_batch_size: validation/test batch size; defaults to ``batch_size``.
        train_subset: if set, use a class-balanced deterministic subset of this many training images.
        test_subset: likewise for the test split (which is also used for validation).
        augment: random crop (4-pixel zero padding) + horizontal flip on training batches.
        download: download torchvision's CIFAR-10 into ``data_dir`` (needs network).
        num_workers: DataLoader worker processes (0 is fine: batches are sliced from memory).
        seed: seeds the subsets, the training order (``seed + epoch``) and the augmentation (with the global rank,
            epoch and batch index); see the module docstring on determinism and exact resume.
    """

    num_classes: int = len(CIFAR10_CLASSES)
    classes: tuple[str, ...] = CIFAR10_CLASSES
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        train_subset: int | None = None,
        test_subset: int | None = None,
        augment: bool = True,
        download: bool = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("train_subset", train_subset, 1),
            ("test_subset", test_subset, 1),
            ("num_workers", num_workers, 0),
            ("seed", seed, None),
        ):
            if value is not None:
                check_int(name, value, low=low)
        check_bool("augment", augment)
        check_bool("download", download)
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
        self.train_subset = train_subset
        self.test_subset = test_subset
        self.augment = augment
        self.download = download
        self.num_workers = num_workers
        self.seed = seed
        self.source = resolve_source(data_dir, download)
        self.train_dataset: InMemoryImageDataset | None = None
        self.test_dataset: InMemoryImageDataset | None = None
        self._generator: torch.Generator | None = None
        self.train_progress = TrainProgress()
        self._train_loader: ResumableDataLoader | None = None
        self._pending_resume: dict[str, Any] | None = None

    # ---- data ----------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download torchvision's CIFAR-10 when ``download=True`` (called on one process only)."""
        if self.source.download:
            download_cifar10(self.source.path)

    def setup(self, stage: str | None = None) -> None:
        """Decode the source (cached per process) and build the (subset) train and test datasets."""
        if self.train_dataset is not None and self.test_dataset is not None:
            return
        if self.source.download and not self.source.is_present:
            self.prepare_data()  # used without a Trainer, which calls prepare_data before setup
        arrays = load_source(self.source)
        train_x, train_y = arrays.train_images, arrays.train_labels
        test_x, test_y = arrays.test_images, arrays.test_labels
        if self.train_subset is not None:
            idx = class_balanced_indices(train_y, self.train_subset, self.seed, self.num_classes, "train_subset")
            train_x, train_y = train_x[idx], train_y[idx]
        if self.test_subset is not None:
            idx = class_balanced_indices(test_y, self.test_subset, self.seed + 1, self.num_classes, "test_subset")
            test_x, test_y = test_x[idx], test_y[idx]
        self.train_dataset = InMemoryImageDataset(train_x, train_y)
        self.test_dataset = InMemoryImageDataset(test_x, test_y)

    @property
    def num_train_samples(self) -> int:
        """Training images after subsetting (needs ``setup``)."""
        return len(self._require(self.train_dataset))

    @property
    def num_test_samples(self) -> int:
        """Test (= validation) images after subsetting (needs ``setup``)."""
        return len(self._require(self.test_dataset))

    @staticmethod
    def _require(dataset: InMemoryImageDataset | None) -> InMemoryImageDataset:
        if dataset is None:
            raise RuntimeError("call setup() first (the Trainer does this)")
        return dataset

    def _loader(self, dataset: InMemoryImageDataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._require(dataset),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_stacked,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled uint8 training batches ``(N x 3 x 32 x 32, N)``: a :class:`ResumableDataLoader` over a
        :class:`ResumableSampler` for this process's rank (the trainer's world size and global rank)."""
        dataset = self._require(self.train_dataset)
        trainer = self.trainer
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        loader = ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=ResumableSampler(dataset, num_replicas=world, rank=self._rank(), shuffle=True, seed=self.seed),
            num_workers=self.num_workers,
            collate_fn=collate_stacked,
            persistent_workers=self.num_workers > 0,
            progress=self.train_progress,
        )
        pending, self._pending_resume = self._pending_resume, None
        if pending is not None and trainer is not None and getattr(trainer, "ckpt_path", None):
            loader.load_state_dict(pending)  # this fit resumes from the checkpoint that held ``pending``
        else:  # a fresh fit (a state loaded by validate/test(ckpt_path=...) is not a fit's position)
            self.train_progress.epoch, self.train_progress.batches = 0, 0
        self._train_loader = loader
        return loader

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The training position (:meth:`ResumableDataLoader.state_dict`), saved in Lightning checkpoints."""
        if self._train_loader is not None:
            return {"train_loader": self._train_loader.state_dict()}
        trainer = self.trainer
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        progress = self.train_progress
        return {
            "train_loader": {
                "epoch": progress.epoch, "batches": progress.batches, "batch_size": self.batch_size,
                "world_size": world, "seed": self.seed,
            }
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training position (Lightning calls this before ``configure_optimizers``): applied to the
        training loader when the resumed fit builds it, and to a loader built already (strategies that restore
        after their setup). A checkpoint written when a fit stopped part-way through an epoch (``max_steps``)
        continues that epoch (:func:`~lightning_decay.integration.resumable_loader.continue_stopped_epoch`)."""
        state = state_dict.get("train_loader")
        if state is None:
            return
        self._continue_stopped_epoch(state)
        self._pending_resume = dict(state)
        if self._train_loader is not None:
            self._train_loader.load_state_dict(state)

    def _continue_stopped_epoch(self, position: dict[str, Any]) -> None:
        """When a fit resumes from the checkpoint a fit wrote as it stopped mid-epoch, make Lightning's loops continue
        that epoch (the checkpoint as the trainer read it, before it restores its loops). Lightning gives a data
        module only its own part of the checkpoint: the whole is the trainer's checkpoint connector's (private in
        Lightning 2.6; without it the sampler warns that the epoch's rest is skipped)."""
        trainer = self.trainer
        if trainer is None or getattr(getattr(trainer, "state", None), "fn", None) != TrainerFn.FITTING:
            return
        checkpoint = getattr(getattr(trainer, "_checkpoint_connector", None), "_loaded_checkpoint", None)
        if isinstance(checkpoint, dict) and continue_stopped_epoch(checkpoint, position):
            rank_zero_info(
                f"the checkpoint was written when its fit stopped in epoch {position.get('epoch')} after "
                f"{position.get('batches')} batches: the resumed fit continues that epoch"
            )

    def val_dataloader(self) -> DataLoader:
        """The test split (CIFAR-10 has no separate validation split here)."""
        return self._loader(self.test_dataset, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The test split."""
        return self._loader(self.test_dataset, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split."""
        return self._loader(self.test_dataset, self.eval_batch_size, shuffle=False)

    # ---- batch transforms ----------------------------------------------------------------------------------

    @property
    def generator(self) -> torch.Generator:
        """CPU generator for augmentation, seeded with ``seed + global_rank`` on first use; during training
        re-seeded for each batch from ``(seed, global rank, epoch, batch index)``."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed + self._rank())
        return self._generator

    def _rank(self) -> int:
        trainer = self.trainer
        return int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0

    def preprocess(self, images: Tensor, train: bool = False) -> Tensor:
        """uint8 batch -> normalized float32 batch, with crop/flip augmentation if ``train`` and ``augment``."""
        if train and self.augment:
            images = random_crop_flip(images, padding=4, generator=self.generator)
        return normalize(images, self.mean, self.std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment (training batches only) and normalize on the model's device."""
        images, labels = batch
        trainer = self.trainer
        training = trainer is not None and trainer.training
        if training:
            epoch = int(getattr(trainer, "current_epoch", 0) or 0)
            index = self.train_progress.next_batch(epoch)  # also the resume position of the training loader
            if self.augment:
                self.generator.manual_seed(batch_seed(self.seed, self._rank(), epoch, index))
        return self.preprocess(images, train=training), labels
