"""Launched by ``tests/test_ddp.py``: fits under the script-launched ``ddp`` strategy on 2 CPU processes (gloo).
Lightning re-executes this script with the same arguments for rank 1; later fits in the same processes reuse the
process group.

    python tests/ddp_script.py ROOT DATA_DIR

In order, each with :func:`tests.test_ddp.fit_case` (every rank writes ``<folder>/weights-rank<r>.pt``):

1. ``ROOT/full``: the fit with the non-finite policy ``skip`` (a checkpoint at step ``CHECKPOINT_STEP``);
2. ``ROOT/resumed``: the same fit resumed from that checkpoint;
3. ``ROOT/raise``: the policy ``raise``; each rank prints ``RAISED rank <r>: <message>``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning_decay.integration.guards import NonFiniteGradientError
from tests.process_exit import exit_now
from tests.test_ddp import CHECKPOINT_STEP, fit_case


def main(root: Path, data_dir: Path) -> int:
    ddp = {"accelerator": "cpu", "strategy": "ddp"}
    trainer = fit_case(root / "full", data_dir, world=2, **ddp)
    if trainer.is_global_zero:
        print(f"STRATEGY {type(trainer.strategy).__name__} WORLD {trainer.world_size}", flush=True)
    (checkpoint,) = (root / "full" / "ckpt").glob(f"*step={CHECKPOINT_STEP}.ckpt")
    fit_case(root / "resumed", data_dir, world=2, ckpt_path=str(checkpoint), **ddp)
    try:
        fit_case(root / "raise", data_dir, world=2, policy="raise", **ddp)
    except NonFiniteGradientError as error:
        # one write per line: both ranks share the pipe, and print() writes the text and the newline separately
        sys.stdout.write(f"RAISED rank {os.environ.get('LOCAL_RANK', '0')}: {error}\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    exit_now(main(Path(sys.argv[1]), Path(sys.argv[2])))
