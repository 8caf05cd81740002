"""Sweep cells per hour: one process per cell vs cells batched in one process (``--batch-cells``), same run.

    python benchmarks/batched_cells.py                                   # 12 cells of the fine AdamW grid, 2 jobs
    python benchmarks/batched_cells.py --cells 4 --jobs 1 --max-steps 5  # a quick look
    python benchmarks/batched_cells.py --grid configs/blog/adamw-vs-adamp.yaml --seeds 0 1 2 --cells 72 \\
        --baseline-cells 12 --jobs 1 --batch-cells 24                   # the blog's 24-cell grid x 3 seeds (GPU)

Runs the first ``--cells`` cells (grid order) of a grid file twice with ``lightning-decay sweep``'s runner
(:func:`lightning_decay.sweep.run_sweep`), into two fresh folders: (a) one process per cell, the default, and (b)
``--batch-cells N`` cells sharing a process (default: the cells split evenly over the jobs). Same jobs, same
threads per job, same machine, one after the other; ``--rounds`` repeats both in alternating order. The decoded-data
cache is filled before timing, so neither way decodes JPEGs. A way's time runs from the start of the sweep to its
last finished cell (the pictures drawn after it are not counted). Prints cells per hour of each way, their ratio
(goal: >= 2.5 on the 2-core CPU of issue 27), the machine's load average before and after, and whether the two
ways gave the same figures (accuracy, loss, weight norm, norm curve, every logged metric) for every cell.
``--baseline-cells`` runs (a) on only the first cells (long GPU grids; cells per hour stay comparable).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lightning_decay.experiments.cifar10 import DISK_CACHE_ENV, load_source, resolve_source  # noqa: E402
from lightning_decay.sweep import GridSpec, run_sweep  # noqa: E402
from lightning_decay.sweep.batched import cell_config  # noqa: E402
from lightning_decay.sweep.grid import Axis, Cell  # noqa: E402
from lightning_decay.sweep.pool import default_data_cache  # noqa: E402

#: The result.json numbers both ways must give alike.
FIGURES = ("status", "accuracy", "train_loss", "weight_norm", "norm_history", "metrics", "epochs", "steps")


@dataclasses.dataclass(frozen=True)
class GridSlice(GridSpec):
    """A grid restricted to some of its cells (the sweep runs, tabulates and draws only those)."""

    only: tuple[str, ...] = ()

    def cells(self) -> list[Cell]:
        return [cell for cell in super().cells() if cell.id in self.only]


def sliced_grid(args: argparse.Namespace, output: Path, cells: int, batch_cells: int | None) -> GridSlice:
    grid = GridSpec.load(args.grid, output)
    if args.seeds is not None:
        axes = tuple(
            dataclasses.replace(axis, values=tuple(args.seeds)) if axis.name == "seed" else axis for axis in grid.axes
        )
        if not any(axis.name == "seed" for axis in grid.axes):
            axes += (Axis("seed", "seed_everything", tuple(args.seeds)),)
        grid = dataclasses.replace(grid, axes=axes)
    overrides = dict(grid.overrides)
    if args.max_steps is not None:
        overrides["trainer.max_steps"] = args.max_steps
    if args.data_dir is not None:
        overrides["data.init_args.data_dir"] = None if args.data_dir == "sample" else args.data_dir
    grid = dataclasses.replace(grid, overrides=tuple(overrides.items()), batch_cells=batch_cells, wandb=None)
    chosen = tuple(cell.id for cell in grid.cells()[:cells])
    fields = {field.name: getattr(grid, field.name) for field in dataclasses.fields(GridSpec)}
    return GridSlice(**fields, only=chosen)


def warm_data_cache(grid: GridSpec) -> str:
    """Decode the grid's data set once into the decoded-data cache the cells read (as the sweep sets it)."""
    os.environ.setdefault(DISK_CACHE_ENV, str(default_data_cache()))
    data = (cell_config(grid, grid.cells()[0]).get("data") or {}).get("init_args") or {}
    started = time.perf_counter()
    source = resolve_source(data.get("data_dir"), bool(data.get("download", False)))
    load_source(source)
    return f"data {source.path} ready in {time.perf_counter() - started:.1f} s (cache: {os.environ[DISK_CACHE_ENV]})"


def run_way(grid: GridSlice, jobs: int) -> tuple[float, list[str]]:
    """Seconds from the sweep's start to its last finished cell, and its progress lines."""
    lines: list[str] = []
    finished = [0.0]
    started = time.perf_counter()

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("["):
            finished[0] = time.perf_counter()

    summary = run_sweep(grid, jobs=jobs, validate=False, log=log)
    if summary.failed or len(summary.ran) != len(grid.only):
        raise SystemExit(f"{grid.output}: {len(summary.ran)} cells ran, failed: {summary.failed}\n" + "\n".join(lines))
    return finished[0] - started, lines


def figures(output: Path) -> dict[str, dict[str, Any]]:
    results = {path.parent.name: json.loads(path.read_text()) for path in output.glob("cells/*/result.json")}
    return {cell: {key: result.get(key) for key in FIGURES} for cell, result in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default=str(REPO / "configs/blog/decoupling-fine-torch.yaml"))
    parser.add_argument("--cells", type=int, default=12, help="the first N cells of the grid (grid order)")
    parser.add_argument("--baseline-cells", type=int, help="cells run one per process (default: --cells)")
    parser.add_argument("--seeds", type=int, nargs="+", help="replace the grid's seed axis (add one if missing)")
    parser.add_argument("--jobs", type=int, default=2, help="processes at once, both ways")
    parser.add_argument("--batch-cells", type=int, help="cells per process when batched (default: cells / jobs)")
    parser.add_argument("--max-steps", type=int, help="override trainer.max_steps (a shorter cell)")
    parser.add_argument("--data-dir", help="override data.init_args.data_dir ('sample': the package's sample)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat both ways, alternating which goes first")
    parser.add_argument("--output", help="folder for the two sweeps' outputs (default: a temporary folder)")
    args = parser.parse_args()
    batch = args.batch_cells or -(-args.cells // args.jobs)
    baseline_cells = args.baseline_cells or args.cells
    root = Path(args.output or tempfile.mkdtemp(prefix="batched_cells_"))

    probe = sliced_grid(args, root / "probe", args.cells, None)
    load_before = os.getloadavg()
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; torch {torch.__version__}; "
        f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} (1/5/15 min)"
    )
    print(f"grid {probe.name}: the first {args.cells} cells ({probe.only[0]} ... {probe.only[-1]}), jobs {args.jobs}")
    print(warm_data_cache(probe))
    times: dict[str, list[float]] = {"one": [], "batched": []}
    outputs: dict[str, Path] = {}
    for round_index in range(args.rounds):
        ways = ["one", "batched"] if round_index % 2 == 0 else ["batched", "one"]
        for way in ways:
            output = root / f"round{round_index}-{way}"
            cells = baseline_cells if way == "one" else args.cells
            grid = sliced_grid(args, output, cells, None if way == "one" else batch)
            seconds, _ = run_way(grid, args.jobs)
            times[way].append(seconds / cells)
            outputs[way] = output
            print(f"round {round_index + 1}, {way:7s}: {cells} cells in {seconds:.1f} s ({seconds / cells:.2f} s/cell)")
    load_after = os.getloadavg()
    per_cell = {way: sorted(values)[len(values) // 2] for way, values in times.items()}  # median over rounds
    one_h, batched_h = 3600 / per_cell["one"], 3600 / per_cell["batched"]
    print(f"one process per cell:            {one_h:7.0f} cells/h ({args.jobs} jobs)")
    print(f"batched, {batch:2d} cells per process: {batched_h:7.0f} cells/h ({args.jobs} jobs)")
    print(f"ratio: {batched_h / one_h:.2f}x (goal >= 2.5x on CPU); load average after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    one, batched = figures(outputs["one"]), figures(outputs["batched"])
    same = [cell for cell in one if cell in batched and one[cell] == batched[cell]]
    print(f"same figures both ways: {len(same)}/{len(one)} cells; outputs in {root}")


if __name__ == "__main__":
    main()
