"""Several cells of a sweep in one process, one after another (``lightning-decay sweep --batch-cells N``).

A cell process spends most of a small cell's time on things every cell repeats: importing torch and Lightning
(~6 s on a shared 2-core machine), decoding the data set and compiling kernels (AdamP's fused step). Cells that
share their model and data (they differ in the variant's settings, lr, weight decay or seed) can instead run one
after another in one process (``python -m lightning_decay.sweep run-cell SPEC.json [SPEC.json ...]``): one
import, the decoded arrays shared through :func:`lightning_decay.experiments.cifar10.load_source`'s in-process
cache, compiled kernels reused. Each cell is still a full LightningCLI run of its own, with its own seed,
loggers, callbacks, ``result.json``, ``output.log`` and W&B run; the process-wide state a cell can change (the
environment, torch's global flags, the RNG states, an open W&B run) is put back before the next cell, so a cell
gives bitwise the numbers it gives in a process of its own.

:func:`share_key` says which cells may share a process, :func:`plan_batches` groups a sweep's cells,
:func:`run_cells` runs them in the job's process.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from lightning_decay.sweep.cell import run_cell
from lightning_decay.sweep.grid import DEFAULT_AXIS_KEYS, Cell, GridSpec
from lightning_decay.sweep.results import LOG_FILE, SPEC_FILE

__all__ = [
    "SHARED_AXES", "cell_config", "describe_batches", "plan_batches", "reset_torch_flags", "run_cells", "share_key",
]

#: Axes whose values do not change what cells share (the model and the data): they may differ within a batch.
SHARED_AXES = tuple(DEFAULT_AXIS_KEYS)  # lr, weight_decay, seed
#: The DecayMixin settings (the variant's settings): they may differ within a batch.
_DECAY_KEY = "model.init_args.decay"


def _merge(base: Any, update: Any) -> Any:
    """``update`` merged into ``base`` as config files compose (mappings merged, anything else replaced)."""
    if isinstance(base, dict) and isinstance(update, dict):
        merged = dict(base)
        for key, value in update.items():
            merged[key] = _merge(base.get(key), value)
        return merged
    return copy.deepcopy(update)


def _set(config: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _drop(config: dict[str, Any], key: str) -> None:
    parts = key.split(".")
    node: Any = config
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def cell_config(grid: GridSpec, cell: Cell) -> dict[str, Any]:
    """A cell's LightningCLI settings as its config files and overrides set them (files merged in order, then the
    dotted overrides), without the parser's defaults. Raises ``OSError`` / ``ValueError`` for an unreadable file."""
    config: dict[str, Any] = {}
    for path in grid.cell_configs(cell):
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: {error}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} is not a mapping")
        config = _merge(config, loaded)
    for key, value in grid.cell_overrides(cell):
        _set(config, key, value)
    return config


def share_key(grid: GridSpec, cell: Cell) -> str:
    """What a cell must have in common with others to share their process, as a short hash: its model (class and
    init arguments, less the ``decay`` settings, the variant's name and the lr / weight-decay / seed axes) and its
    data (class and init arguments), as its config files and overrides set them. A config file that cannot be
    read gives the cell a key of its own (it runs alone)."""
    try:
        config = cell_config(grid, cell)
    except (OSError, ValueError):
        return f"alone:{cell.id}"
    dropped = [_DECAY_KEY, *(axis.key for axis in grid.axes if axis.name in SHARED_AXES)]
    if grid.variant_key is not None:
        dropped.append(grid.variant_key)
    for key in dropped:
        _drop(config, key)
    shared = {"model": config.get("model"), "data": config.get("data")}
    return hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:12]


def plan_batches(grid: GridSpec, cells: Sequence[Cell], size: int, jobs: int = 1) -> list[list[Cell]]:
    """The cells grouped into the lists that run in one process each, in grid order.

    Cells with the same :func:`share_key` are split into ``ceil(n / size)`` batches of (nearly) equal size, and
    into at least ``min(jobs, n)`` so that every job slot gets work; ``size`` 1 gives one cell per process.
    """
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(share_key(grid, cell), []).append(cell)
    batches: list[list[Cell]] = []
    for members in groups.values():
        count = len(members) if size == 1 else max(math.ceil(len(members) / size), min(jobs, len(members)))
        base, extra = divmod(len(members), count)
        start = 0
        for index in range(count):
            end = start + base + (1 if index < extra else 0)
            batches.append(members[start:end])
            start = end
    order = {cell.id: index for index, cell in enumerate(cells)}
    return sorted(batches, key=lambda batch: order[batch[0].id])


def describe_batches(grid: GridSpec, batches: Sequence[Sequence[Cell]]) -> list[str]:
    """Dry-run lines: the groups of cells sharing model and data, how many processes run how many cells."""
    groups = len({share_key(grid, batch[0]) for batch in batches})
    sizes = sorted(len(batch) for batch in batches)
    spread = f"{sizes[0]}" if sizes[0] == sizes[-1] else f"{sizes[0]}-{sizes[-1]}"
    lines = [
        f"batches: {sum(sizes)} cell(s) in {groups} group(s) sharing model and data, run by {len(batches)} "
        f"process(es) of {spread} cell(s) one after another"
    ]
    for index, batch in enumerate(batches, 1):
        last = f" ... {batch[-1].id}" if len(batch) > 1 else ""
        lines.append(f"  process {index} ({len(batch)} cell(s)): {batch[0].id}{last}")
    return lines


@dataclass
class _ProcessState:
    """What one cell may change for the cells after it in the same process, saved before the first cell."""

    environ: dict[str, str]
    torch_rng: torch.Tensor
    python_rng: Any
    numpy_rng: Any
    flags: dict[str, Any]

    @classmethod
    def save(cls) -> _ProcessState:
        return cls(dict(os.environ), torch.get_rng_state(), random.getstate(), np.random.get_state(), _torch_flags())

    def restore(self) -> None:
        """Environment (``PL_GLOBAL_SEED``, ``CUBLAS_WORKSPACE_CONFIG``, ...), RNG states and torch's global flags
        as they were before the first cell."""
        os.environ.clear()
        os.environ.update(self.environ)
        torch.set_rng_state(self.torch_rng)
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)
        _apply_torch_flags(self.flags)


#: torch's global flags in a new interpreter (what :func:`reset_torch_flags` sets; ``threads`` aside).
_NEW_INTERPRETER_FLAGS = {
    "deterministic": False, "warn_only": False, "cudnn_benchmark": False, "cudnn_deterministic": False,
    "matmul_precision": "highest", "default_dtype": torch.float32, "grad": True, "anomaly": False,
}


def reset_torch_flags(threads: int) -> None:
    """torch's global flags (deterministic algorithms, cuDNN, matmul precision, default dtype, grad mode, anomaly
    detection) as a new interpreter has them, with ``threads`` threads (a new interpreter's ``OMP_NUM_THREADS``)."""
    _apply_torch_flags({**_NEW_INTERPRETER_FLAGS, "threads": threads})


def _apply_torch_flags(flags: dict[str, Any]) -> None:
    torch.use_deterministic_algorithms(flags["deterministic"], warn_only=flags["warn_only"])
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = flags["cudnn_deterministic"]
    torch.set_float32_matmul_precision(flags["matmul_precision"])
    torch.set_default_dtype(flags["default_dtype"])
    torch.set_num_threads(flags["threads"])
    torch.set_grad_enabled(flags["grad"])
    torch.autograd.set_detect_anomaly(flags["anomaly"])


def _torch_flags() -> dict[str, Any]:
    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "default_dtype": torch.get_default_dtype(),
        "threads": torch.get_num_threads(),
        "grad": torch.is_grad_enabled(),
        "anomaly": torch.is_anomaly_enabled(),
    }


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so also logging handlers and child
    processes) to ``path`` (appended) while inside."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _finish_wandb() -> None:
    """End a W&B run a cell left open (an error after the logger started): the next cell gets its own run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        with contextlib.suppress(Exception):
            wandb.finish(exit_code=1)


def run_cells(folders: Sequence[str | Path]) -> list[int]:
    """Run cells one after another in this process; ``folders`` are cell folders holding a ``spec.json`` (claimed
    by the caller). Each cell writes its ``result.json`` and ``output.log`` as in a process of its own, from the
    same process state; a failing cell does not stop the others, an interrupted one (Ctrl-C, SIGTERM) stops the
    rest (left unfinished for the next sweep). Returns the cells' exit codes (0 ok, 1 error, 130 interrupted)."""
    state = _ProcessState.save()
    codes: list[int] = []
    for item in folders:
        folder = Path(item)
        try:
            spec = json.loads((folder / SPEC_FILE).read_text())
        except (OSError, ValueError) as error:
            print(f"{folder.name}: cannot read its {SPEC_FILE}: {error}", file=sys.stderr)
            codes.append(1)
            continue
        state.restore()
        with _output_to(folder / LOG_FILE):
            try:
                code = run_cell(spec, folder)
            finally:
                _finish_wandb()
        codes.append(code)
        if code == 130:
            break
        if code != 0:
            print(f"{spec.get('cell', folder.name)}: failed (see {folder / LOG_FILE})", file=sys.stderr)
    return codes
