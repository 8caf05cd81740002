"""Exact resume: a fit stopped mid-epoch and resumed from its Lightning checkpoint ends bitwise where the
uninterrupted fit ends, for every variant -- weights, buffers, optimizer state (moments, step counts, the initial-lr
bookkeeping ``eta_t`` depends on), the LR schedule, the training order and augmentation of the resumed epoch, and
the monitoring callbacks' logged values.

Real parts: :class:`~lightning_decay.experiments.ImageClassifier` (SmallCNN with batch norm) on
:class:`~lightning_decay.experiments.CIFAR10DataModule` (the tiny JPEG set of ``conftest.py``, shuffled and augmented),
``ModelCheckpoint(every_n_train_steps=k)``, a fresh ``Trainer`` resuming with ``ckpt_path``.
"""

from __future__ import annotations

import csv
import inspect
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_decay.callbacks import EffectiveDecayMonitor, ScaleInvarianceMonitor, WeightNormMonitor
from lightning_decay.experiments import CIFAR10DataModule, ImageClassifier
from lightning_decay.integration import DecaySettings
from lightning_decay.integration.resumable_loader import (
    ResumableDataLoader,
    ResumableSampler,
    TrainProgress,
    continue_stopped_epoch,
)
from lightning_decay.optim import REGISTRY, VARIANTS

BATCH = 8  # 40 training images: 5 batches per epoch
EPOCHS = 2  # 10 optimizer steps
STOP = 7  # the checkpoint step: batch 2 of epoch 1 (mid-epoch, after an epoch boundary)


# --------------------------------------------------------------------------------------------------------------
# Shared helpers (also used by the precision, DDP, non-finite and fuzz tests)
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread for this module's tests (restored after): on a shared 2-core machine OpenMP threads
    competing with other processes slow these tiny kernels down 10-100x. Runs are compared only with runs of the
    same setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def optimizer_kwargs(variant: str) -> dict[str, Any]:
    """Constructor extras for tests: the eager step for compiled kernels (no ~15 s compile); momentum for SGD so
    the optimizer has state to resume."""
    cls, _ = VARIANTS[variant]
    parameters = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    if "fused" in parameters and not issubclass(cls, torch.optim.Adam):
        kwargs["fused"] = False  # AdamP / cautious / SGD: their compiled kernel would compile for seconds
    if "momentum" in parameters:
        kwargs["momentum"] = 0.9
    return kwargs


def decay_settings(variant: str, **changes: Any) -> DecaySettings:
    """Warmup + cosine settings that exercise ``eta_t`` (the schedule multiplier) for ``variant``."""
    lr = 0.05 if variant.startswith(("sgd", "proxsgd")) else 3e-3
    others = None
    if REGISTRY[variant].family == "muon":  # Muon: the flattened second convolution; AdamW: the rest
        lr, others = 0.02, {"optimizer": "adamw", "lr": 3e-3, "flatten_convolutions": True}
    settings = DecaySettings(
        optimizer=variant, lr=lr, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1,
        optimizer_kwargs=optimizer_kwargs(variant), others=others,
    )
    return settings.replace(**changes) if changes else settings


def classifier(variant: str, **changes: Any) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(architecture="small_cnn", decay=decay_settings(variant, **changes))


def quiet_trainer(**options: Any) -> Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    defaults.update(options)
    return Trainer(**defaults)


def fit_quietly(trainer: Trainer, model: LightningModule, **kwargs: Any) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|smaller than the logging).*")
        trainer.fit(model, **kwargs)


def read_rows(root: Path) -> dict[int, dict[str, str]]:
    """``step -> {key: value as written}`` of every ``metrics.csv`` under ``root`` (compared as text: exact)."""
    merged: dict[int, dict[str, str]] = defaultdict(dict)
    for path in sorted(root.rglob("metrics.csv")):
        with open(path) as handle:
            for row in csv.DictReader(handle):
                step = int(row.pop("step"))
                merged[step].update({k: v for k, v in row.items() if v != ""})
    return dict(merged)


def tensors_of(value: Any) -> Any:
    """A comparable snapshot: tensors cloned, containers recursed."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: tensors_of(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(tensors_of(v) for v in value)
    return value


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of nested tensors / containers / numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max difference {(a.double() - b.double()).abs().max().item():.3g}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(map(str, a)) == sorted(map(str, b)), f"{where}: {list(a)} vs {list(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def final_state(trainer: Trainer) -> dict[str, Any]:
    """Everything an exact resume must reproduce: module state, optimizer and scheduler state dicts."""
    module = trainer.lightning_module
    return {
        "module": tensors_of(module.state_dict()),
        "optimizer": tensors_of(trainer.optimizers[0].state_dict()),
        "scheduler": tensors_of(trainer.lr_scheduler_configs[0].scheduler.state_dict()),
        "global_step": trainer.global_step,
    }


class Interrupt(Callback):
    """Kills the fit (an exception out of ``trainer.fit``) as the batch after optimizer step ``at`` starts (after
    that step's checkpoint, which ``ModelCheckpoint`` writes last in ``on_train_batch_end``)."""

    class Killed(RuntimeError):
        pass

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.at:
            raise Interrupt.Killed(f"killed after step {self.at}")


# --------------------------------------------------------------------------------------------------------------
# The resume runs
# --------------------------------------------------------------------------------------------------------------


def monitors() -> list[Callback]:
    return [WeightNormMonitor(), EffectiveDecayMonitor(), ScaleInvarianceMonitor(check_every_n_steps=4)]


def datamodule(data_dir: Path) -> CIFAR10DataModule:
    return CIFAR10DataModule(data_dir=str(data_dir), batch_size=BATCH, eval_batch_size=20, seed=3)


def run(
    root: Path, data_dir: Path, variant: str, *, ckpt_path: Path | None = None, stop: int | None = None,
    save_every: int = STOP, extra: list[Callback] | None = None, max_steps: int = -1,
    checkpoint: ModelCheckpoint | None = None, **settings: Any,
) -> tuple[Trainer, list[Callback]]:
    """One fit of ``EPOCHS`` epochs (or ``max_steps``), saving a checkpoint every ``save_every`` steps (or as
    ``checkpoint`` saves); resumed from ``ckpt_path``. ``settings`` change the decay settings."""
    callbacks = monitors()
    saving = checkpoint or ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=save_every, save_top_k=-1)
    trainer = quiet_trainer(
        max_epochs=EPOCHS, max_steps=max_steps, deterministic=True, logger=CSVLogger(root, name="csv", version=0),
        log_every_n_steps=1, limit_val_batches=1, enable_checkpointing=True,
        callbacks=[saving, *callbacks, *([Interrupt(stop)] if stop is not None else []), *(extra or [])],
    )
    fit_quietly(trainer, classifier(variant, **settings), datamodule=datamodule(data_dir), ckpt_path=ckpt_path)
    return trainer, callbacks


def checkpoint_at(root: Path, step: int) -> Path:
    (path,) = (root / "ckpt").glob(f"*step={step}.ckpt")
    return path


def assert_same_run_after(
    full_root: Path, resumed_root: Path, after: int, skip: tuple[str, ...] = (), only: str = ""
) -> int:
    """Every metric the uninterrupted run logged after step ``after`` (keys starting with ``only``, not with
    ``skip``) is logged identically by the resumed run."""
    full, resumed = read_rows(full_root), read_rows(resumed_root)
    compared = 0
    for step, row in full.items():
        if step < after:
            continue
        for key, value in row.items():
            if key.startswith(skip) or not key.startswith(only):
                continue
            assert key in resumed.get(step, {}), (step, key)
            assert resumed[step][key] == value, (step, key, value, resumed[step][key])
            compared += 1
    return compared


class Outcome:
    """A fit's folder, its :func:`final_state`, its monitors' latest values and each group's ``eta_t``."""

    def __init__(self, root: Path, trainer: Trainer, monitors: list[Callback]) -> None:
        self.root = root
        self.state = final_state(trainer)
        self.monitors = [m.last_metrics for m in monitors]  # type: ignore[attr-defined]
        optimizer = trainer.optimizers[0]
        groups = optimizer.param_groups
        self.bookkeeping = [(g.get("lr_at_construction"), g.get("initial_lr")) for g in groups]
        multiplier = getattr(optimizer, "schedule_multiplier", None)
        self.eta = [multiplier(g) for g in groups] if multiplier is not None else None


#: ``variant -> (uninterrupted, resumed)`` outcomes, shared by the tests of this module (each pair costs seconds).
_OUTCOMES: dict[str, tuple[Outcome, Outcome]] = {}


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resume_runs")


def uninterrupted_and_resumed(variant: str, root: Path, data_dir: Path) -> tuple[Outcome, Outcome]:
    """The uninterrupted fit of ``variant`` (checkpoint at STOP) and the fit resumed from that checkpoint."""
    if variant not in _OUTCOMES:
        folder = root / variant
        full = Outcome(folder / "full", *run(folder / "full", data_dir, variant))
        checkpoint = checkpoint_at(folder / "full", STOP)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            resumed = Outcome(folder / "resumed", *run(folder / "resumed", data_dir, variant, ckpt_path=checkpoint))
        # neither Lightning's "dataloader is not resumable" nor the loader's "changed data settings"
        assert not [w for w in caught if "resumable" in str(w.message) or "data settings" in str(w.message)]
        _OUTCOMES[variant] = full, resumed
    return _OUTCOMES[variant]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_resume_mid_epoch_is_bitwise_exact(variant: str, runs_root: Path, cifar_jpeg_dir: Path) -> None:
    full, resumed = uninterrupted_and_resumed(variant, runs_root, cifar_jpeg_dir)
    assert full.state["global_step"] == resumed.state["global_step"] == EPOCHS * 5
    saved = torch.load(checkpoint_at(full.root, STOP), weights_only=False)
    assert saved["global_step"] == STOP and saved["epoch"] == 1
    # the training position is in the checkpoint: the data module's state and Lightning's stateful-loader state
    position = {"epoch": 1, "batches": STOP - 5, "batch_size": BATCH, "world_size": 1, "seed": 3}
    assert saved["CIFAR10DataModule"] == {"train_loader": position}
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [position]

    assert_identical(full.state, resumed.state, variant)  # weights, buffers, optimizer and scheduler state
    assert all(a is not None and i is not None for a, i in resumed.bookkeeping)  # alpha: lr_at_construction
    assert resumed.bookkeeping == full.bookkeeping and resumed.eta == full.eta  # eta_t = lr_t / alpha
    assert_identical(full.monitors, resumed.monitors, "monitors")
    assert assert_same_run_after(full.root, resumed.root, after=STOP) > 50


def test_resume_after_a_kill_matches_and_detects_a_wrong_data_position(
    tmp_path: Path, runs_root: Path, cifar_jpeg_dir: Path
) -> None:
    """A fit killed after step k resumes to the uninterrupted weights; the same resume without the saved training
    position (the epoch restarted from its first batch, as for a plain DataLoader) does not -- the comparison
    sees data-order mistakes."""
    variant = "adamw-paper"  # its decay depends on eta_t = lr_t / alpha: the alpha bookkeeping must resume
    expected = uninterrupted_and_resumed(variant, runs_root, cifar_jpeg_dir)[0].state
    with pytest.raises(Interrupt.Killed):
        run(tmp_path / "killed", cifar_jpeg_dir, variant, stop=STOP)
    checkpoint = checkpoint_at(tmp_path / "killed", STOP)
    resumed, _ = run(tmp_path / "resumed", cifar_jpeg_dir, variant, ckpt_path=checkpoint)
    assert_identical(expected, final_state(resumed), "killed and resumed")

    broken = torch.load(checkpoint, weights_only=False)
    del broken["loops"]["fit_loop"]["state_dict"]["combined_loader"], broken["CIFAR10DataModule"]
    broken_path = tmp_path / "no-loader-state.ckpt"
    torch.save(broken, broken_path)
    wrong, _ = run(tmp_path / "wrong", cifar_jpeg_dir, variant, ckpt_path=broken_path)
    weights = [k for k in expected["module"] if k.endswith("weight")]
    assert any(not torch.equal(expected["module"][k], final_state(wrong)["module"][k]) for k in weights)


@pytest.mark.parametrize(
    ("key", "steps"), [("scale_invariance/loss_change/", [8]), ("scale_invariance/invariant/", [8]), ("train/acc", [9])]
)
def test_resume_restores_the_scale_check_batch_and_the_epoch_accuracy(
    key: str, steps: list[int], runs_root: Path, cifar_jpeg_dir: Path
) -> None:
    """The values whose state once stayed out of checkpoints: the first scale check after the resume (step 8) runs
    on the fixed batch of the uninterrupted run (``ScaleInvarianceMonitor.state_dict``), and the resumed epoch's
    ``train/acc`` counts the batches before the checkpoint too (``ImageClassifier``'s counts). The checkpoint reads
    back with ``weights_only=True``, as Lightning's resume loads it by default."""
    full, resumed = uninterrupted_and_resumed("adamw", runs_root, cifar_jpeg_dir)
    assert assert_same_run_after(full.root, resumed.root, STOP, only=key) > 0
    rows = read_rows(resumed.root)
    assert sorted(step for step, row in rows.items() if step >= STOP and any(k.startswith(key) for k in row)) == steps
    saved = torch.load(checkpoint_at(full.root, STOP), weights_only=True)
    counts = saved["image_classifier_train_accuracy"]  # the two batches of epoch 1 before STOP
    assert counts["total"] == 2 * BATCH and 0 <= counts["correct"] <= counts["total"]
    (monitor,) = [v for k, v in saved["callbacks"].items() if k.startswith("ScaleInvarianceMonitor")]
    images, labels = monitor["fixed_batch"]  # the first training batch (augmented, on the CPU)
    assert images.shape == (BATCH, 3, 32, 32) and images.device.type == "cpu" and labels.shape == (BATCH,)


def test_train_accuracy_ignores_the_scale_check(tmp_path: Path, cifar_jpeg_dir: Path) -> None:
    """``ScaleInvarianceMonitor``'s check runs ``training_step`` (under no_grad) on its fixed batch with scaled
    weights; those calls do not count in ``train/acc``: the same fit with and without the check logs the same
    epoch accuracy, and it is the accuracy over the epoch's 40 training images (a multiple of 1/40)."""
    accuracies = []
    for name, callbacks in (("checked", [ScaleInvarianceMonitor(check_every_n_steps=1)]), ("plain", [])):
        trainer = quiet_trainer(
            max_epochs=1, deterministic=True, logger=CSVLogger(tmp_path, name=name, version=0), log_every_n_steps=1,
            limit_val_batches=0, callbacks=callbacks,
        )
        fit_quietly(trainer, classifier("adamw"), datamodule=datamodule(cifar_jpeg_dir))
        (accuracy,) = [row["train/acc"] for row in read_rows(tmp_path / name).values() if "train/acc" in row]
        accuracies.append(accuracy)
    assert accuracies[0] == accuracies[1]
    assert float(accuracies[0]) * 40 == pytest.approx(round(float(accuracies[0]) * 40), abs=1e-4)


def test_resume_from_an_epoch_end_checkpoint(tmp_path: Path, cifar_jpeg_dir: Path) -> None:
    """A checkpoint on an epoch's last batch resumes at the next epoch's first batch."""
    full, _ = run(tmp_path / "full", cifar_jpeg_dir, "proxadam", save_every=5)
    resumed, _ = run(tmp_path / "resumed", cifar_jpeg_dir, "proxadam", ckpt_path=checkpoint_at(tmp_path / "full", 5))
    assert_identical(final_state(full), final_state(resumed), "epoch end")


# --------------------------------------------------------------------------------------------------------------
# A finished fit continued with a larger max_steps
# --------------------------------------------------------------------------------------------------------------


def stopped_and_continued(
    root: Path, data_dir: Path, variant: str, stop: int
) -> tuple[Path, dict[str, Any], Trainer]:
    """A fit with ``max_steps=stop`` (its last checkpoint written as it stops, ``ModelCheckpoint``'s default), then a
    fit of ``EPOCHS`` epochs from that checkpoint. The schedule's length is fixed (``total_steps``), as in the
    uninterrupted fit. Returns the last checkpoint, its contents as written, and the continued trainer."""
    total = EPOCHS * 5
    run(root / "first", data_dir, variant, max_steps=stop, total_steps=total,
        checkpoint=ModelCheckpoint(dirpath=root / "first" / "ckpt", save_last=True))
    last = root / "first" / "ckpt" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    continued, _ = run(root / "continued", data_dir, variant, ckpt_path=last, total_steps=total)
    return last, saved, continued


@pytest.mark.parametrize("stop", [4, STOP], ids=["in-epoch-0", "in-epoch-1"])
def test_a_stopped_fit_continued_with_more_steps_is_the_uninterrupted_fit(
    stop: int, tmp_path: Path, runs_root: Path, cifar_jpeg_dir: Path
) -> None:
    """``fit(max_steps=k)`` and then ``fit(ckpt_path=<its last checkpoint>)`` with a larger limit is the
    uninterrupted fit: Lightning counts the epoch that ``max_steps`` cut short as processed, so its checkpoint would
    resume at the next epoch's first batch (the rest of the epoch never seen). The data module makes the resume
    continue the epoch: the loop state becomes that of a checkpoint saved after step k's batch
    (``ModelCheckpoint(every_n_train_steps=k)``), and the weights, optimizer and scheduler state end bitwise where
    the uninterrupted fit ends, every loss and monitor value after k logged identically."""
    variant = "adamw-paper"
    full = uninterrupted_and_resumed(variant, runs_root, cifar_jpeg_dir)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        last, saved, continued = stopped_and_continued(tmp_path, cifar_jpeg_dir, variant, stop)
    assert not [w for w in caught if "not an exact continuation" in str(w.message)]
    epochs = saved["loops"]["fit_loop"]["epoch_progress"]["total"]
    assert saved["global_step"] == stop and epochs["processed"] == epochs["completed"] + 1  # closed by Lightning
    assert saved["CIFAR10DataModule"]["train_loader"]["batches"] == stop % 5  # ... but not by the data
    assert_identical(full.state, final_state(continued), f"stopped at {stop} and continued")
    # the train/acc of the cut-short epoch: the first fit logged its first batches' accuracy as it stopped (and
    # ImageClassifier's epoch counts restarted), so the continued fit's value covers the epoch's rest only
    assert assert_same_run_after(full.root, tmp_path / "continued", after=stop, skip=("train/acc",)) > 40

    if stop == STOP:  # the rewritten loop state is the preemption checkpoint's at the same step
        rewritten = torch.load(last, weights_only=False)
        assert continue_stopped_epoch(rewritten, rewritten["CIFAR10DataModule"]["train_loader"])
        preempted = torch.load(checkpoint_at(full.root, STOP), weights_only=False)
        assert_identical(preempted["loops"], rewritten["loops"], "loops")
        assert not continue_stopped_epoch(preempted, preempted["CIFAR10DataModule"]["train_loader"])


def test_continuing_a_stopped_fit_without_the_loop_fix_warns(
    tmp_path: Path, runs_root: Path, cifar_jpeg_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the loop state is not rewritten (a data module that does not call continue_stopped_epoch), Lightning
    starts the next epoch and the sampler warns that the rest of the checkpoint's epoch is skipped -- and the fit
    is indeed not the uninterrupted one (the comparison sees it)."""
    monkeypatch.setattr(CIFAR10DataModule, "_continue_stopped_epoch", lambda self, position: None)
    full = uninterrupted_and_resumed("adamw-paper", runs_root, cifar_jpeg_dir)[0]
    with pytest.warns(UserWarning, match=r"the rest of epoch 0 is skipped and the run is not an exact continuation"):
        _, _, continued = stopped_and_continued(tmp_path, cifar_jpeg_dir, "adamw-paper", 4)
    weights = [k for k in full.state["module"] if k.endswith("weight")]
    assert any(not torch.equal(full.state["module"][k], final_state(continued)["module"][k]) for k in weights)


def test_continue_stopped_epoch_leaves_other_checkpoints_alone() -> None:
    """Only a checkpoint whose epoch Lightning closed before its last batch, with the data position at the same
    batch of the same epoch, is rewritten."""

    def checkpoint(processed: int, completed: int, batches: int, last: bool) -> dict[str, Any]:
        epoch = {"ready": 1, "started": 1, "processed": processed, "completed": completed}
        batch = {"ready": batches, "started": batches, "processed": batches, "completed": batches}
        return {"loops": {"fit_loop": {
            "epoch_progress": {"total": dict(epoch), "current": dict(epoch)},
            "epoch_loop.batch_progress": {"total": dict(batch), "current": dict(batch), "is_last_batch": last},
            "epoch_loop.state_dict": {"_batches_that_stepped": batches},
        }}}

    position = {"epoch": 0, "batches": 3}
    stopped = checkpoint(1, 0, 3, last=False)
    assert continue_stopped_epoch(stopped, position)
    fit = stopped["loops"]["fit_loop"]
    assert fit["epoch_progress"]["current"] == {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    assert fit["epoch_loop.batch_progress"]["total"]["completed"] == 2
    assert fit["epoch_loop.state_dict"] == {"_batches_that_stepped": 2}
    assert not continue_stopped_epoch(stopped, position)  # once
    assert not continue_stopped_epoch(checkpoint(1, 0, 3, last=True), position)  # the epoch's last batch
    assert not continue_stopped_epoch(checkpoint(1, 1, 3, last=False), position)  # a completed epoch
    assert not continue_stopped_epoch(checkpoint(1, 0, 3, last=False), {"epoch": 0, "batches": 2})  # elsewhere
    assert not continue_stopped_epoch(checkpoint(1, 0, 3, last=False), {"epoch": 1, "batches": 3})
    assert not continue_stopped_epoch({"state_dict": {}}, position)


# --------------------------------------------------------------------------------------------------------------
# The resumable training order
# --------------------------------------------------------------------------------------------------------------


def test_sampler_ranks_interleave_the_single_process_order() -> None:
    data = list(range(22))
    single = ResumableSampler(data, seed=5)
    single.set_epoch(3)
    order = list(single)
    assert sorted(order) == data and order != data  # shuffled, every sample once
    ranks = [ResumableSampler(data, num_replicas=2, rank=r, seed=5) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(3)
    local = [list(sampler) for sampler in ranks]
    assert [len(s) for s in ranks] == [11, 11]
    # batch j of B on each rank = batch j of 2B in one process (as sets): same global batches
    for j in range(0, 11, 4):
        assert sorted(local[0][j : j + 4] + local[1][j : j + 4]) == sorted(order[2 * j : 2 * j + 8])
    other = ResumableSampler(data, seed=5)
    other.set_epoch(4)
    assert list(other) != order  # a new order each epoch


def test_sampler_resume_skips_exactly_the_consumed_prefix() -> None:
    data = list(range(23))  # odd: rank 1 of 2 is padded
    for world in (1, 2):
        for rank in range(world):
            uninterrupted = ResumableSampler(data, num_replicas=world, rank=rank, seed=1)
            uninterrupted.set_epoch(2)
            expected = list(uninterrupted)
            resumed = ResumableSampler(data, num_replicas=world, rank=rank, seed=1)
            resumed.resume(epoch=2, offset=3 * 2 * world)  # 3 batches of 2 per rank consumed
            assert len(resumed) == len(expected)  # Lightning counts the full epoch
            assert list(resumed) == expected[6:]
            assert list(resumed) == expected  # the resume applies once
            resumed.resume(epoch=2, offset=6 * world)
            with pytest.warns(UserWarning, match="the rest of epoch 2 is skipped"):
                resumed.set_epoch(3)  # passing over the unfinished epoch warns; the next epoch is not skipped
            assert len(list(resumed)) == len(expected)
            resumed.resume(epoch=3, offset=6 * world)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                resumed.set_epoch(3)  # Lightning setting the resumed epoch itself: no warning
                assert len(list(resumed)) == len(expected) - 6
                resumed.set_epoch(4)  # after the resumed epoch ran: no warning


def test_loader_state_round_trip_and_changed_settings(cifar_jpeg_dir: Path) -> None:
    dm = datamodule(cifar_jpeg_dir)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and isinstance(loader.sampler, ResumableSampler)
    assert loader.progress is dm.train_progress
    for epoch, index in ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2)):
        assert dm.train_progress.next_batch(epoch) == index
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 3, "batch_size": BATCH, "world_size": 1, "seed": 3}

    fresh = datamodule(cifar_jpeg_dir)
    fresh.setup("fit")
    other = fresh.train_dataloader()
    other.load_state_dict(state)
    assert (fresh.train_progress.epoch, fresh.train_progress.batches) == (1, 3)
    reference = ResumableSampler(fresh.train_dataset, seed=3)
    reference.set_epoch(1)
    assert list(other.sampler) == list(reference)[3 * BATCH :]

    closed = datamodule(cifar_jpeg_dir)
    closed.setup("fit")
    closed_loader = closed.train_dataloader()
    closed_loader.load_state_dict({**state, "batches": 5})  # the epoch's last batch: the next epoch starts fresh
    assert (closed.train_progress.epoch, closed.train_progress.batches) == (2, 0)
    assert len(list(closed_loader.sampler)) == 40

    moved = datamodule(cifar_jpeg_dir)
    moved.setup("fit")
    with pytest.warns(UserWarning, match="world_size 2 -> 1"):
        moved.train_dataloader().load_state_dict({**state, "world_size": 2})

    # through the data module, as Lightning restores it: applied only by a fit that resumes from a checkpoint
    from types import SimpleNamespace

    for ckpt_path, expected_epoch in ((None, 0), ("some.ckpt", 1)):
        restored = datamodule(cifar_jpeg_dir)
        restored.setup("fit")
        restored.load_state_dict({"train_loader": state})
        restored.trainer = SimpleNamespace(ckpt_path=ckpt_path, world_size=1, global_rank=0, training=True)
        order = list(restored.train_dataloader().sampler)
        assert restored.train_progress.epoch == expected_epoch
        assert len(order) == (40 if ckpt_path is None else 40 - 3 * BATCH)
        assert restored.state_dict() == {
            "train_loader": {**state, "epoch": expected_epoch, "batches": 3 if ckpt_path else 0}
        }


def test_augmentation_depends_only_on_seed_rank_epoch_and_batch(cifar_jpeg_dir: Path) -> None:
    from types import SimpleNamespace

    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.zeros(8, dtype=torch.int64)

    def augmented(seed: int, rank: int, epoch: int, index: int) -> torch.Tensor:
        dm = CIFAR10DataModule(data_dir=str(cifar_jpeg_dir), seed=seed)
        dm.trainer = SimpleNamespace(training=True, global_rank=rank, current_epoch=epoch)
        dm.train_progress = TrainProgress(epoch=epoch, batches=index)
        torch.manual_seed(index)  # the global RNG plays no part
        return dm.on_after_batch_transfer((images, labels), 0)[0]

    reference = augmented(0, 0, 1, 2)
    assert torch.equal(reference, augmented(0, 0, 1, 2))
    for changed in ((1, 0, 1, 2), (0, 1, 1, 2), (0, 0, 2, 2), (0, 0, 1, 3)):
        assert not torch.equal(reference, augmented(*changed)), changed


# --------------------------------------------------------------------------------------------------------------
# Determinism of a sweep cell
# --------------------------------------------------------------------------------------------------------------

SWEEP_BASE = {
    "model": {
        "class_path": "lightning_decay.experiments.ImageClassifier",
        "init_args": {"architecture": "small_cnn", "decay": {"warmup_steps": 2}},
    },
    "data": {
        "class_path": "lightning_decay.experiments.CIFAR10DataModule",
        "init_args": {"batch_size": 8, "augment": True},  # shuffled and augmented: both must follow the seed
    },
    "trainer": {
        "max_epochs": 2, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
        "enable_model_summary": False, "enable_checkpointing": False, "log_every_n_steps": 1,
    },
}
SWEEP_GRID = """
name: determinism
configs: base.yaml
variant_key: model.init_args.decay.optimizer
variants: [proxadam]
axes:
  lr: [3.0e-3]
  weight_decay: [1.0e-2]
  seed: SEEDS
output: OUTPUT
jobs: JOBS
threads: 1
"""
#: Result fields that measure time, not training.
TIMING = ("images_per_s", "train_s", "wall_s", "fit_s")


@pytest.mark.slow  # three cell processes
def test_sweep_cell_is_deterministic(tmp_path: Path, cifar_jpeg_dir: Path) -> None:
    """The same cell with the same seed, run twice by the sweep runner (separate cell processes), gives the same
    metrics, weight norms and norm curve bit for bit; another seed gives others (the comparison can fail).

    Both runs use one thread per cell: CPU kernels reduce in a thread-count-dependent order, so the same cell with
    1 and 2 threads differs in the last digits (about 1e-6 relative after 10 steps)."""
    import yaml

    from lightning_decay.sweep import GridSpec, load_results, run_sweep

    base = dict(SWEEP_BASE, data={**SWEEP_BASE["data"]})
    base["data"]["init_args"] = {**base["data"]["init_args"], "data_dir": str(cifar_jpeg_dir)}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    rows = {}
    for name, seeds, jobs in (("first", "[7, 8]", 2), ("second", "[7]", 1)):
        text = SWEEP_GRID.replace("SEEDS", seeds).replace("OUTPUT", str(tmp_path / name)).replace("JOBS", str(jobs))
        grid_path = tmp_path / f"{name}.yaml"
        grid_path.write_text(text)
        summary = run_sweep(GridSpec.load(grid_path), log=lambda line: None)
        assert summary.failed == [] and len(summary.ran) == len(yaml.safe_load(seeds)), summary
        rows[name] = {row["seed"]: row for row in load_results(tmp_path / name)}

    def measured(row: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in row.items() if key not in TIMING}

    first, again, other = rows["first"][7], rows["second"][7], rows["first"][8]
    assert first["status"] == again["status"] == "ok" and first["steps"] == 10
    assert measured(first) == measured(again)
    assert first["test/acc"] is not None and len(first["norm_history"]) == 3
    assert first["weight_norm"] != other["weight_norm"] and first["train_loss"] != other["train_loss"]
