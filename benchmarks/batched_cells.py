"""Sweep cells per hour: one process per cell vs cells batched in one process (``--batch-cells``), same run.

    python benchmarks/batched_cells.py                                   # 12 cells of the fine AdamW grid, 2 jobs
    python benchmarks/batched_cells.py --cells 4 --jobs 1 --max-steps 5  # a quick look
    python benchmarks/batched_cells.py --grid configs/blog/adamw-vs-adamp.yaml --seeds 0 1 2 --cells 72 \\
        --baseline-cells 12 --jobs 1 --batch-cells 24                   # the blog's 24-cell grid x 3 seeds (GPU)

Runs the first ``--cells`` cells (grid order) of a grid file with ``lightning-decay sweep``'s runner
(:func:`lightning_decay.sweep.run_sweep`), into fresh folders: (a) one new interpreter per cell (the runner before
batching: ``executor: {name: local, options: {start: spawn}}``) and (b) ``--batch-cells N`` cells sharing a process
(default: the cells split evenly over the jobs), its jobs started as ``--start`` says (default ``auto``: forks of
the sweep process where safe); with ``--with-forked`` also (c) one cell per process started as ``--start``, to show
how much of the gain is the fork and how much the shared process. Same jobs, same threads per job, same machine, one
after the other; ``--rounds`` repeats them, alternating the order. The decoded-data cache is filled before timing
(in a process of its own), so no way decodes JPEGs. A way's time runs from the start of the sweep to its last
finished cell (the pictures drawn after it are not counted). Prints cells per hour of each way, the ratio of (b) to
(a) (goal: >= 2.5 on the 2-core CPU of issue 27), the machine's load average before and after, how each way's jobs
started, and whether every way gave the figures of (a) (accuracy, loss, weight norm, norm curve, every logged
metric) for every cell. ``--baseline-cells`` runs (a) on only the first cells (long GPU grids; cells per hour stay
comparable).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lightning_decay.experiments.cifar10 import DISK_CACHE_ENV  # noqa: E402
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


def sliced_grid(
    args: argparse.Namespace, output: Path, cells: int, batch_cells: int | None, start: str = "auto"
) -> GridSlice:
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
    executor = {"name": "local", "options": {"start": start}}
    grid = dataclasses.replace(
        grid, overrides=tuple(overrides.items()), batch_cells=batch_cells, wandb=None, executor=executor
    )
    chosen = tuple(cell.id for cell in grid.cells()[:cells])
    fields = {field.name: getattr(grid, field.name) for field in dataclasses.fields(GridSpec)}
    return GridSlice(**fields, only=chosen)


def warm_data_cache(grid: GridSpec) -> str:
    """Decode the grid's data set once into the decoded-data cache the cells read (as the sweep sets it), in a
    process of its own: this one holds no decoded data that a forked job could inherit and a real sweep's would not."""
    os.environ.setdefault(DISK_CACHE_ENV, str(default_data_cache()))
    data = (cell_config(grid, grid.cells()[0]).get("data") or {}).get("init_args") or {}
    started = time.perf_counter()
    code = (
        "import sys; from lightning_decay.experiments.cifar10 import load_source, resolve_source; "
        "source = resolve_source(sys.argv[1] if sys.argv[1] != 'None' else None, sys.argv[2] == 'True'); "
        "load_source(source); print(source.path)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(data.get("data_dir")), str(bool(data.get("download", False)))],
        capture_output=True, text=True, check=True,
    )
    seconds = time.perf_counter() - started
    return f"data {done.stdout.strip()} ready in {seconds:.1f} s (cache: {os.environ[DISK_CACHE_ENV]})"


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
    parser.add_argument("--output", help="folder for the sweeps' outputs (default: a temporary folder)")
    parser.add_argument("--start", default="auto", choices=["auto", "fork", "spawn"],
                        help="how the batched way's jobs start (executor local's start option; default auto)")
    parser.add_argument("--with-forked", action="store_true",
                        help="also run one cell per process started as --start (where the gain comes from)")
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
    # way: (cells per process, how a job starts, what it is)
    ways = {
        "one": (None, "spawn", "one new interpreter per cell (the runner before batching)"),
        "batched": (batch, args.start, f"batched, {batch} cells per process (start: {args.start})"),
        "forked": (None, args.start, f"one process per cell (start: {args.start})"),
    }
    if not args.with_forked:
        del ways["forked"]
    times: dict[str, list[float]] = {way: [] for way in ways}
    outputs: dict[str, Path] = {}
    for round_index in range(args.rounds):
        order = list(ways) if round_index % 2 == 0 else list(reversed(ways))
        for way in order:
            size, start, _ = ways[way]
            output = root / f"round{round_index}-{way}"
            cells = baseline_cells if way == "one" else args.cells
            grid = sliced_grid(args, output, cells, size, start)
            seconds, lines = run_way(grid, args.jobs)
            times[way].append(seconds / cells)
            outputs[way] = output
            started = lines[0].split(" on ", 1)[-1].split(" -> ")[0] if lines else "?"
            print(f"round {round_index + 1}, {way:7s}: {cells} cells in {seconds:.1f} s ({seconds / cells:.2f} s/cell)"
                  f" on {started}")
    load_after = os.getloadavg()
    per_cell = {way: sorted(values)[len(values) // 2] for way, values in times.items()}  # median over rounds
    rates = {way: 3600 / seconds for way, seconds in per_cell.items()}
    for way, (_, _, label) in ways.items():
        print(f"{label + ':':68s} {rates[way]:6.0f} cells/h ({args.jobs} jobs, {rates[way] / rates['one']:.2f}x)")
    print(f"ratio batched / one: {rates['batched'] / rates['one']:.2f}x (goal >= 2.5x on CPU); load average after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    one = figures(outputs["one"])
    for way in [way for way in ways if way != "one"]:
        other = figures(outputs[way])
        same = [cell for cell in one if cell in other and one[cell] == other[cell]]
        print(f"same figures, one and {way}: {len(same)}/{len(one)} cells")
    print(f"outputs in {root}")

if __name__ == "__main__":
    main()
