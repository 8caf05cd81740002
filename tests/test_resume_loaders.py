"""Mid-epoch resume with the user's own training loader: exact with torchdata's ``StatefulDataLoader`` and with the
project's ``ResumableSampler`` in a plain ``DataLoader``; any other loader (``DataLoader(shuffle=True)``, an
unshuffled one) warns once at the resume that the rest of the epoch sees other batches, naming both fixes.

Real parts: a ``DecayMixin`` model (``tests/test_short_runs.py``'s ``Regressor``, warmup + cosine: its schedule asks
for ``trainer.estimated_stepping_batches``, which builds the loader before Lightning reads the checkpoint), a
``Trainer.fit`` writing ``ModelCheckpoint(every_n_train_steps=SAVE_EVERY)``, a fresh model and trainer resuming with
``ckpt_path``; the batches (sample indices), losses and final weights after the resume are compared with the
uninterrupted fit's.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_decay.integration import DecaySettings
from lightning_decay.integration.resumable_loader import ResumableSampler
from tests.test_resume import (  # single_thread: test_resume's autouse one-thread fixture, active here too
    assert_identical,
    checkpoint_at,
    final_state,
    fit_quietly,
    quiet_trainer,
    single_thread,  # noqa: F401
)
from tests.test_short_runs import Regressor

BATCH = 4  # Regressor's 16 samples: 4 batches per epoch
EPOCHS = 2  # 8 optimizer steps
SAVE_EVERY = 2  # checkpoints at steps 2, 4 (an epoch's end), 6, 8
STOP = 6  # the checkpoint resumed by default: after batch 2 of epoch 1 (mid-epoch, after an epoch boundary)
#: The warning of a loader that cannot continue an epoch: it names both fixes.
NOT_EXACT = r"(?s)(?=.*StatefulDataLoader)(?=.*ResumableSampler).*rest of (that|the) epoch"


class Indexed(Dataset):
    """``(x, y, index)`` of a ``TensorDataset``: the batches say which samples they hold."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        x, y = self.data[index]
        return x, y, index


LOADERS: dict[str, Callable[[Dataset], Any]] = {
    "stateful": lambda data: StatefulDataLoader(data, batch_size=BATCH, shuffle=True),
    "resumable-sampler": lambda data: DataLoader(data, batch_size=BATCH, sampler=ResumableSampler(data, seed=4)),
    "shuffled": lambda data: DataLoader(data, batch_size=BATCH, shuffle=True),
    "sequential": lambda data: DataLoader(data, batch_size=BATCH),
}


class Recorder(Regressor):
    """``Regressor`` trained from one of :data:`LOADERS`, keeping ``global_step -> (sample indices, loss)``."""

    def __init__(self, loader: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loader = loader
        self.seen: dict[int, tuple[tuple[int, ...], float]] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, index = batch
        loss = super().training_step((x, y), batch_idx)
        self.seen[self.global_step] = (tuple(index.tolist()), loss.item())
        return loss

    def train_dataloader(self) -> Any:
        return LOADERS[self.loader](Indexed(self.data))


def fit(
    root: Path, loader: str, *, ckpt_path: Path | None = None, schedule: str = "cosine"
) -> tuple[Recorder, Any, list[str]]:
    """One fit of ``EPOCHS`` epochs with a checkpoint every ``SAVE_EVERY`` steps (resumed from ``ckpt_path``): the
    model, its trainer and the texts of the warnings it raised."""
    model = Recorder(loader, decay=DecaySettings(lr=0.01, warmup_steps=2, min_lr_ratio=0.1, schedule=schedule))
    trainer = quiet_trainer(
        max_epochs=EPOCHS, enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=SAVE_EVERY, save_top_k=-1)],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_quietly(trainer, model, ckpt_path=ckpt_path)
    return model, trainer, [str(w.message) for w in caught]


def straight_and_resumed(
    tmp_path: Path, loader: str, schedule: str = "cosine", stop: int = STOP
) -> tuple[tuple, tuple]:
    """The uninterrupted fit and a fresh model resumed from its checkpoint at step ``stop``."""
    straight = fit(tmp_path / "straight", loader, schedule=schedule)
    resumed = fit(tmp_path / "resumed", loader, ckpt_path=checkpoint_at(tmp_path / "straight", stop), schedule=schedule)
    return straight, resumed


def ours(messages: list[str]) -> list[str]:
    """The messages that are the not-exact warning."""
    return [m for m in messages if re.search(NOT_EXACT, m)]


@pytest.mark.parametrize("stop", [2, STOP], ids=["in-epoch-0", "in-epoch-1"])
@pytest.mark.parametrize(
    ("loader", "schedule"),
    [("stateful", "cosine"), ("stateful", "constant"), ("resumable-sampler", "cosine")],
    ids=["StatefulDataLoader", "StatefulDataLoader-constant-lr", "ResumableSampler"],
)
def test_resume_mid_epoch_is_exact_with_a_stateful_loader_or_the_resumable_sampler(
    loader: str, schedule: str, stop: int, tmp_path: Path
) -> None:
    """The resumed fit trains on the same batches, with the same losses, to the same weights as the uninterrupted
    one, and does not warn. (``DecayMixin`` configures its optimizer asking for the fit's length, which builds the
    loader before Lightning reads the checkpoint: Lightning then leaves a ``StatefulDataLoader``'s saved state
    unapplied, Lightning-AI/pytorch-lightning#20550; so for the constant lr too.)"""
    (model, trainer, messages), (again, retrainer, resumed_messages) = straight_and_resumed(
        tmp_path, loader, schedule, stop
    )
    assert sorted(model.seen) == list(range(EPOCHS * 4)) and sorted(again.seen) == list(range(stop, EPOCHS * 4))
    orders = [model.seen[s][0] for s in range(EPOCHS * 4)]
    assert orders[:4] != [tuple(range(i, i + 4)) for i in range(0, 16, 4)] and orders[:4] != orders[4:]  # shuffled
    assert {s: again.seen[s] for s in again.seen} == {s: model.seen[s] for s in again.seen}  # batches and losses
    assert_identical(final_state(trainer), final_state(retrainer), loader)
    assert not ours(messages) and not ours(resumed_messages)
    if loader == "stateful":  # Lightning's own warning names every loader without state_dict, ResumableSampler's too
        assert not [m for m in resumed_messages if "not resumable" in m]


@pytest.mark.parametrize("loader", ["shuffled", "sequential"])
def test_resume_mid_epoch_with_a_plain_dataloader_warns_once_naming_both_fixes(loader: str, tmp_path: Path) -> None:
    """A plain ``DataLoader`` restarts its sampler when the fit resumes: a shuffled one draws a new order, an
    unshuffled one starts again at the first samples (Lightning does not skip ahead; it only stops the epoch after
    its remaining number of batches). The rest of the epoch indeed differs from the uninterrupted fit's, and the
    resume warns once, naming ``StatefulDataLoader`` and ``ResumableSampler``; the uninterrupted fit does not."""
    (model, _, messages), (again, _, resumed_messages) = straight_and_resumed(tmp_path, loader)
    assert sorted(again.seen) == list(range(STOP, EPOCHS * 4))
    assert [again.seen[s][0] for s in range(STOP, 8)] != [model.seen[s][0] for s in range(STOP, 8)]
    assert not ours(messages)
    (warning,) = ours(resumed_messages)
    assert "epoch 1" in warning and "2 of its 4 batches" in warning, warning


def test_resume_at_an_epoch_boundary_with_a_plain_dataloader_does_not_warn(tmp_path: Path) -> None:
    """The checkpoint on epoch 0's last batch (step 4) resumes at epoch 1's start: nothing to continue, no warning."""
    fit(tmp_path / "straight", "shuffled")
    again, _, messages = fit(tmp_path / "resumed", "shuffled", ckpt_path=checkpoint_at(tmp_path / "straight", 4))
    assert sorted(again.seen) == list(range(4, EPOCHS * 4))
    assert not ours(messages)


def test_mid_epoch_resume_warning_names_the_loaders_that_cannot_continue() -> None:
    """The Lightning-free check: None when every loader continues exactly (a stateful loader, or a ResumableSampler
    as the sampler or inside the batch sampler); else one text naming each other loader and both fixes."""
    from torch.utils.data import BatchSampler

    from lightning_decay.integration.resumable_loader import mid_epoch_resume_warning

    data = Indexed(TensorDataset(torch.zeros(8, 1), torch.zeros(8, 1)))
    stateful, sampler = LOADERS["stateful"](data), LOADERS["resumable-sampler"](data)
    batched = DataLoader(data, batch_sampler=BatchSampler(ResumableSampler(data), batch_size=2, drop_last=False))
    assert mid_epoch_resume_warning([stateful, sampler, batched]) is None
    assert mid_epoch_resume_warning([]) is None
    shuffled, sequential = LOADERS["shuffled"](data), LOADERS["sequential"](data)
    text = mid_epoch_resume_warning([stateful, shuffled, sequential], epoch=3, batches=1, total=2)
    assert text is not None and re.search(NOT_EXACT, text)
    assert "epoch 3 (1 of its 2 batches consumed)" in text
    assert "DataLoader with a RandomSampler draws a new order" in text
    assert "DataLoader with a SequentialSampler starts again at the first samples" in text
    assert "StatefulDataLoader with" not in text  # the stateful loader is not named
    assert re.search(NOT_EXACT, mid_epoch_resume_warning([[1, 2, 3]]) or "")  # any other iterable
