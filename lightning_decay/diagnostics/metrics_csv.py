"""Read the rows a ``CSVLogger`` wrote (``metrics.csv``) back as one series per key."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

__all__ = ["Series", "read_metrics_csv"]

#: ``{key: [(step, value), ...]}`` in file order.
Series = dict[str, list[tuple[int, float]]]


def read_metrics_csv(path: str | Path) -> Series:
    """``{key: [(step, value), ...]}`` from a CSVLogger ``metrics.csv`` (empty cells skipped)."""
    series: defaultdict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                series[key].append((step, float(value)))
    return dict(series)
