"""Per-tensor L2 norms, dot products and per-row norm statistics of parameters that may be sharded.

The monitoring callbacks compute every per-layer number through this module, so replicated and sharded training
give the same numbers:

* **replicated** tensors (single process, DDP): computed locally, no collective at all (every rank holds the
  same values, so every rank computes the same numbers).
* **DTensor** parameters (torch FSDP2 ``fully_shard``, Lightning's ``ModelParallelStrategy``): each rank reduces
  its local shard (``to_local()``) to a partial sum of squares (or of products), the partial sums are
  ``all_reduce``-summed over the mesh dimensions that shard the tensor, and only then is the square root taken:
  ``|w| = sqrt(sum_r |w_r|^2)``. One collective per distinct (mesh, dims) and call, not per tensor.
* **flat shards** (FSDP1 with ``use_orig_params=True``, as Lightning's ``FSDPStrategy``): every parameter seen
  by the module is this rank's 1-D slice of the original; pass the sharding process group as ``flat_shard_group``
  and the same sum-then-sqrt is done over it. Row statistics are unavailable there (the shapes are flattened).

Every rank must call these functions in the same order with the same tensors (the collectives are matched by
order), which the callbacks guarantee by running on the same steps on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

try:  # torch >= 2.4
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - old torch
    DTensor = None  # type: ignore[assignment,misc]

__all__ = ["ShardedTensors", "is_sharded"]

_TINY = 1e-30


def _is_dtensor(tensor: Tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def _shard_groups(tensor: Tensor) -> tuple[Any, ...]:
    """The process groups over which a DTensor's local partial sums must be added (its sharded mesh dims)."""
    if not _is_dtensor(tensor):
        return ()
    mesh = tensor.device_mesh
    return tuple(mesh.get_group(dim) for dim, placement in enumerate(tensor.placements) if placement.is_shard())


def _shard_dims(tensor: Tensor) -> set[int]:
    """The tensor dimensions a DTensor is split along (empty for replicated tensors)."""
    if not _is_dtensor(tensor):
        return set()
    return {placement.dim for placement in tensor.placements if placement.is_shard()}


def is_sharded(tensors: Sequence[Tensor], flat_shard_group: Any = None) -> bool:
    """True if any per-tensor sum over ``tensors`` needs a collective."""
    return flat_shard_group is not None or any(_shard_groups(t) for t in tensors)


def _local(tensor: Tensor) -> Tensor:
    """This rank's shard as a plain tensor: a DTensor's local part; a quantized optimizer state (torchao's 8-bit,
    4-bit and float8 Adam states, tensor subclasses with their own ``dequantize``) dequantized."""
    local = tensor.to_local() if _is_dtensor(tensor) else tensor
    if type(local).dequantize is not Tensor.dequantize:
        local = local.dequantize()
    return local


class ShardedTensors:
    """A fixed list of (possibly sharded) tensors with multi-tensor reductions that are exact across shards.

    ``tensors`` are the full tensors as the module holds them (plain tensors or DTensors); ``flat_shard_group`` is
    the process group of FSDP1 flat sharding (None otherwise). All results are float32 tensors on the tensors'
    device, computed with multi-tensor (``torch._foreach_*``) kernels where torch has them.
    """

    def __init__(self, tensors: Sequence[Tensor], flat_shard_group: Any = None) -> None:
        self.tensors = list(tensors)
        self.flat_shard_group = flat_shard_group
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index in range(len(self.tensors)):
            key = self._groups_of(index)
            if key:
                groups.setdefault(key, []).append(index)
        self._reductions = [(key, torch.tensor(rows, dtype=torch.long)) for key, rows in groups.items()]
        self.sharded = bool(self._reductions)

    def __len__(self) -> int:
        return len(self.tensors)

    def local(self, tensors: Sequence[Tensor] | None = None) -> list[Tensor]:
        """This rank's shards of ``tensors`` (laid out like ``self.tensors``: their grads, optimizer state, ...);
        default: of ``self.tensors`` themselves. Plain tensors are returned as they are."""
        return [_local(t) for t in (self.tensors if tensors is None else tensors)]

    def sum_over_shards(self, partial: Tensor) -> Tensor:
        """Rows ``partial[i]`` are rank-local partial sums for tensor i; sum them over the ranks sharding tensor i."""
        if not self._reductions or not (dist.is_available() and dist.is_initialized()):
            return partial
        partial = partial.clone()
        for groups, index in self._reductions:
            index = index.to(partial.device)
            rows = partial.index_select(0, index).contiguous()
            for group in groups:
                dist.all_reduce(rows, op=dist.ReduceOp.SUM, group=group)
            partial.index_copy_(0, index, rows)
        return partial

    def squared_norms(self, local: Sequence[Tensor] | None = None) -> Tensor:
        """``|t_i|^2`` (float32), local shards' squares summed across ranks. ``local``: shards laid out like
        ``self.tensors`` (see :meth:`local`); default ``self.local()``."""
        local = self.local() if local is None else list(local)
        if not local:
            return torch.zeros(0)
        norms = torch._foreach_norm(local, 2, dtype=torch.float32)
        return self.sum_over_shards(torch.stack(norms).square())

    def norms(self, local: Sequence[Tensor] | None = None) -> Tensor:
        """``|t_i| = sqrt(sum over ranks of |shard|^2)`` for every tensor (see :meth:`squared_norms`)."""
        return self.squared_norms(local).sqrt()

    def dots(self, first: Sequence[Tensor], second: Sequence[Tensor]) -> Tensor:
        """``<a_i, b_i>`` (float32) of two lists of local shards laid out like ``self.tensors``, summed across ranks."""
        if not first:
            return torch.zeros(0)
        # (a * b).sum() rather than torch.dot: the BLAS dot is ~100x slower here for mid-sized tensors on CPU.
        partial = torch.stack([torch.sum(a * b, dtype=torch.float32) for a, b in zip(first, second)])
        return self.sum_over_shards(partial)

    def _groups_of(self, index: int) -> tuple[Any, ...]:
        if self.flat_shard_group is not None:
            return (self.flat_shard_group,)
        return _shard_groups(self.tensors[index])

    def row_norm_stats(self, indices: Sequence[int], transposed: Sequence[int] = ()) -> Tensor | None:
        """``[min, mean, max]`` of the per-row (output neuron / conv filter: dim 0) norms of ``tensors[i]``; for
        the indices in ``transposed`` (weights stored ``in x out``, transformers' ``Conv1D``) of the columns (dim 1).

        Returns a ``len(indices) x 3`` tensor, or None under flat (FSDP1) sharding, where shapes are unknown.
        DTensors split along dim 0 (FSDP2's default) hold whole rows: local row norms, then min/sum/count/max
        reduced across ranks; tensors split along other dims are gathered (``full_tensor()``, a collective) first.
        """
        if self.flat_shard_group is not None:
            return None
        locals_, groups_per_row = [], []
        flipped = set(transposed)
        for i in indices:
            tensor = self.tensors[i]
            if i in flipped:  # output units along dim 1: whole columns are needed
                full = tensor.full_tensor() if _shard_dims(tensor) else _local(tensor)
                locals_.append(full.transpose(0, 1))
                groups_per_row.append(())
            elif _shard_dims(tensor) - {0}:
                locals_.append(tensor.full_tensor())
                groups_per_row.append(())
            else:
                locals_.append(_local(tensor))
                groups_per_row.append(_shard_groups(tensor))
        if not locals_:
            return torch.zeros(0, 3)
        # All rows of all tensors in one multi-tensor norm (a few ops in all, not several per tensor), then
        # per-tensor min / sum / max by scatter.
        counts = [local.shape[0] for local in locals_]
        rows = [row for local in locals_ for row in local.flatten(1).unbind(0)]
        device = locals_[0].device
        stats = torch.empty(len(locals_), 4, device=device)
        stats[:, 0], stats[:, 1], stats[:, 3] = math.inf, 0.0, -math.inf
        stats[:, 2] = torch.tensor(counts, dtype=torch.float32, device=device)
        if rows:
            norms = torch.stack(torch._foreach_norm(rows, 2, dtype=torch.float32))
            segment = torch.tensor([i for i, count in enumerate(counts) for _ in range(count)], device=device)
            stats[:, 0].scatter_reduce_(0, segment, norms, "amin")
            stats[:, 1].index_add_(0, segment, norms)
            stats[:, 3].scatter_reduce_(0, segment, norms, "amax")
        return _mean_of(_merge_across_ranks(stats, groups_per_row))

    def elementwise_stats(self, values: Sequence[Tensor], indices: Sequence[int]) -> Tensor:
        """``[min, mean, max]`` over the elements of ``values[k]``, the local shard of a tensor laid out like
        ``tensors[indices[k]]`` (e.g. an elementwise decay factor), reduced across the ranks sharding it."""
        if not values:
            return torch.zeros(0, 3)
        stats = torch.stack([_min_sum_count_max(value.float()) for value in values])
        return _mean_of(_merge_across_ranks(stats, [self._groups_of(i) for i in indices]))


def _min_sum_count_max(value: Tensor) -> Tensor:
    """``[min, sum, count, max]`` of a tensor's elements (``[inf, 0, 0, -inf]`` for an empty shard)."""
    if value.numel() == 0:
        return value.new_tensor([float("inf"), 0.0, 0.0, float("-inf")])
    return torch.stack([value.min(), value.sum(), value.new_tensor(float(value.numel())), value.max()])


def _merge_across_ranks(stacked: Tensor, groups_per_row: list[tuple[Any, ...]]) -> Tensor:
    """Rows ``[min, sum, count, max]``; rows of sharded tensors are combined over their groups (MIN, SUM, MAX: two
    collectives per distinct group set)."""
    if not (any(groups_per_row) and dist.is_available() and dist.is_initialized()):
        return stacked
    by_groups: dict[tuple[Any, ...], list[int]] = {}
    for row, groups in enumerate(groups_per_row):
        if groups:
            by_groups.setdefault(groups, []).append(row)
    for groups, rows in by_groups.items():
        index = torch.tensor(rows, dtype=torch.long, device=stacked.device)
        part = stacked.index_select(0, index)
        extremes = torch.stack([-part[:, 0], part[:, 3]], dim=1).contiguous()
        sums = part[:, 1:3].contiguous()
        for group in groups:
            dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=group)
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        merged = torch.stack([-extremes[:, 0], sums[:, 0], sums[:, 1], extremes[:, 1]], dim=1)
        stacked = stacked.index_copy(0, index, merged)
    return stacked


def _mean_of(stacked: Tensor) -> Tensor:
    """``[min, sum, count, max]`` rows -> ``[min, mean, max]`` rows."""
    return torch.stack([stacked[:, 0], stacked[:, 1] / stacked[:, 2].clamp_min(1.0), stacked[:, 3]], dim=1)
