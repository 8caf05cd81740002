"""A small lr x weight-decay sweep with its heatmaps, through the ``lightning-decay sweep`` command line.

The grid (``examples/sweep/grid.yaml``) trains an MLP on a small noisy classification task
(``examples/sweep/sweep_task.py``) with AdamW and with Adam + L2 at every (lr, weight decay) pair, each cell a
Lightning fit in its own process, and draws the blog's pictures: accuracy and weight-norm heatmaps per variant,
norm-vs-epoch curves, and a decoupling report (does the best lr move with the weight decay?). The script runs

    python -m lightning_decay sweep --config examples/sweep/grid.yaml --output <output> --jobs <jobs>

with ``examples/sweep`` on ``PYTHONPATH`` (the grid names its model by class path, ``sweep_task.MLPClassifier``),
then prints where the pictures are. Re-running resumes: finished cells are skipped.

Run (24 cells, 4 to 5 minutes on 2 CPU cores):

    python examples/small_sweep.py [--output outputs/examples/small_sweep] [--jobs 2]
    python examples/small_sweep.py --tiny      # examples/sweep/grid_tiny.yaml: 2 x 2 cells of 8 steps, ~30 s

``LIGHTNING_DECAY_EXAMPLE_TINY=1`` has the effect of ``--tiny``; ``LIGHTNING_DECAY_EXAMPLE_OUTPUT=<folder>``
changes the default output folder to ``<folder>/small_sweep`` (``small_sweep_tiny`` with ``--tiny``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

SWEEP_FOLDER = Path(__file__).resolve().parent / "sweep"
PICTURES = ("heatmap_accuracy.png", "heatmap_norm.png", "norm_curves.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("LIGHTNING_DECAY_EXAMPLE_TINY") == "1")
    parser.add_argument("--output", type=Path, help="results and pictures go here (never inside examples/)")
    parser.add_argument("--jobs", type=int, default=2, help="cells trained at once")
    arguments = parser.parse_args()
    root = Path(os.environ.get("LIGHTNING_DECAY_EXAMPLE_OUTPUT", "outputs/examples"))
    output = arguments.output or root / ("small_sweep_tiny" if arguments.tiny else "small_sweep")
    grid = SWEEP_FOLDER / ("grid_tiny.yaml" if arguments.tiny else "grid.yaml")

    command = [sys.executable, "-m", "lightning_decay", "sweep", "--config", str(grid), "--output", str(output)]
    command += ["--jobs", str(arguments.jobs)]
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SWEEP_FOLDER), environment.get("PYTHONPATH")]))
    print(f"PYTHONPATH={SWEEP_FOLDER} {shlex.join(command)}", flush=True)
    finished = subprocess.run(command, env=environment)
    if finished.returncode != 0:
        sys.exit(f"the sweep failed (exit code {finished.returncode}); each cell's log: {output}/cells/*/output.log")

    print("\npictures:")
    for name in PICTURES:
        print(f"  {output / name}")
    print(f"results table: {output / 'results.csv'}")
    print(f"decoupling report: {output / 'decoupling.md'}")


if __name__ == "__main__":
    main()
