"""An image data set held in two tensors, fetched a whole batch at a time."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["InMemoryImageDataset", "collate_stacked"]


class InMemoryImageDataset(Dataset[tuple[Tensor, Tensor]]):
    """Images and labels held in tensors; ``__getitems__`` returns a whole stacked batch at once (one indexing per
    batch instead of one per image: use :func:`collate_stacked` as the loader's ``collate_fn``)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.images[idx], self.labels[idx]


def collate_stacked(batch: tuple[Tensor, Tensor] | list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Collate for :class:`InMemoryImageDataset`: the batch comes stacked already (a list of samples, from a
    fetcher that bypassed ``__getitems__``, is stacked here)."""
    if isinstance(batch, list):
        return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
    return batch
