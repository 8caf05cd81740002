"""The offline W&B run-file reader against real offline runs (no account, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_decay.diagnostics.wandb_files import BLOCK_BYTES, find_run_file, iter_records, read_history


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_reads_every_row_across_blocks(offline: Path) -> None:
    """Thousands of rows (many 32 KiB blocks) and one row larger than three blocks (a record split into
    first/middle/last chunks) come back exactly, in order."""
    import wandb

    big = "".join(chr(65 + i % 26) for i in range(3 * BLOCK_BYTES + 123))
    run = wandb.init(project="reader-test", dir=str(offline), mode="offline")
    try:
        for step in range(3000):
            row = {"x": step, "nested/value": step * 0.25, "text": f"row {step}"}
            if step == 1500:
                row["big"] = big
            run.log(row, step=step)
    finally:
        run.finish()
    path = find_run_file(offline)
    assert path.stat().st_size > 20 * BLOCK_BYTES
    rows = read_history(path)
    assert [row["x"] for row in rows] == list(range(3000))
    assert [row["_step"] for row in rows] == list(range(3000))
    assert all(row["nested/value"] == row["x"] * 0.25 for row in rows)
    assert all(row["text"] == f"row {row['x']}" for row in rows)
    assert rows[1500]["big"] == big
    assert sum("big" in row for row in rows) == 1
    kinds = {record.WhichOneof("record_type") for record in iter_records(path)}
    assert {"run", "history", "exit"} <= kinds

    # A file cut in the middle of a record (a live run being written): the complete rows before the cut.
    data = path.read_bytes()
    for cut in (len(data) // 2 + 3, 7 + 2 * BLOCK_BYTES + 1000):
        partial = offline / f"partial-{cut}" / "run-partial.wandb"
        partial.parent.mkdir()
        partial.write_bytes(data[:cut])
        prefix = read_history(partial, quiet_seconds=0)
        assert 0 < len(prefix) < len(rows)
        assert prefix == rows[: len(prefix)]


def test_find_run_file_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        find_run_file(tmp_path)
    fake = tmp_path / "run-abc.wandb"
    fake.write_bytes(b"not a wandb file at all")
    assert find_run_file(tmp_path) == fake
    with pytest.raises(ValueError, match="not a W&B run file"):
        read_history(fake)


def test_a_file_of_another_format_version_is_refused_by_name(offline: Path) -> None:
    """A W&B format change (the header's version byte) is an error that names the version, not garbage rows."""
    import wandb

    run = wandb.init(project="reader-version", dir=str(offline), mode="offline")
    try:
        run.log({"x": 1.0})
    finally:
        run.finish()
    path = find_run_file(offline)
    assert [row["x"] for row in read_history(path)] == [1.0]
    data = bytearray(path.read_bytes())
    data[6] = 7
    changed = offline / "changed" / "run-changed.wandb"
    changed.parent.mkdir()
    changed.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"format version 7 \(wandb .*metrics\.csv"):
        read_history(changed, quiet_seconds=0)
