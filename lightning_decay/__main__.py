"""``python -m lightning_decay`` runs the ``lightning-decay`` command."""

import sys

from lightning_decay.command import main

if __name__ == "__main__":
    sys.exit(main())
