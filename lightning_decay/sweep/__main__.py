"""``python -m lightning_decay.sweep ...``: the ``lightning-decay sweep`` command (and the cell processes)."""

import sys

from lightning_decay.sweep.command import main

if __name__ == "__main__":
    sys.exit(main())
