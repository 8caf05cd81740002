"""The decoupling measure on synthetic accuracy tables whose answer is known (rows: weight decay, columns: lr)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_decay.sweep.decoupling import DEFAULT_TOLERANCE, decoupling_report, good_region, measure_decoupling
from lightning_decay.sweep.results import result_tables

LR = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
WD = [0.0, 1e-5, 1e-4, 1e-3, 1e-2]


def quadratic_table(best_column_of_row: list[int]) -> np.ndarray:
    """5 x 5 accuracies: a quadratic bowl in lr around ``best_column_of_row[row]``, a mild one in weight decay."""
    rows, columns = np.arange(5)[:, None], np.arange(5)[None, :]
    centre = np.asarray(best_column_of_row)[:, None]
    return 0.9 - 0.1 * (columns - centre) ** 2 - 0.02 * (rows - 2) ** 2


def test_a_full_block_is_perfectly_rectangular() -> None:
    table = np.full((4, 5), 0.3)
    table[1:3, 1:4] = 0.9
    result = measure_decoupling(table)
    assert result.rectangularity == 1.0
    assert (result.good_cells, result.box_cells) == (6, 6)
    assert result.threshold == pytest.approx(0.6)  # 0.9 - 0.5 * (0.9 - median 0.3)
    assert np.array_equal(np.array(result.good_mask), table > 0.5)


def test_decoupled_bowl_one_lr_column_for_every_weight_decay() -> None:
    result = measure_decoupling(quadratic_table([2, 2, 2, 2, 2]), LR, WD)
    assert result.rectangularity == 1.0
    assert result.best_x_per_y == (1e-2,) * 5  # the best lr does not move with the weight decay
    assert result.x_shift == 0
    assert result.best_y_per_x == (1e-4,) * 5
    assert result.y_shift == 0
    assert result.best_cell == (2, 2)


def test_coupled_diagonal_is_one_over_n() -> None:
    """Adam+L2 style: the best lr shrinks as the weight decay grows, so the good cells lie on an anti-diagonal."""
    result = measure_decoupling(quadratic_table([4, 3, 2, 1, 0]), LR, WD)
    assert result.rectangularity == pytest.approx(1 / 5)
    assert (result.good_cells, result.box_cells) == (5, 25)
    assert result.best_x_per_y == (1.0, 1e-1, 1e-2, 1e-3, 1e-4)
    assert result.x_shift == 4
    assert result.y_shift == 4


def test_identity_diagonal_of_any_size() -> None:
    for n in (2, 3, 7):
        result = measure_decoupling(np.eye(n) * 0.6 + 0.3)
        assert result.rectangularity == pytest.approx(1 / n)
        assert result.x_shift == n - 1


def test_partly_coupled_band_lies_between() -> None:
    """The best lr moves one step over five weight decays: a staircase, less rectangular than a column."""
    decoupled = measure_decoupling(quadratic_table([2, 2, 2, 2, 2]))
    staircase = measure_decoupling(quadratic_table([3, 3, 2, 2, 2]))
    coupled = measure_decoupling(quadratic_table([4, 3, 2, 1, 0]))
    assert coupled.rectangularity < staircase.rectangularity < decoupled.rectangularity
    assert staircase.x_shift == 1


def test_missing_cells_inside_the_box_do_not_count() -> None:
    table = np.full((3, 3), 0.2)
    table[0:2, 0:2] = 0.9
    table[1, 1] = np.nan  # e.g. a crashed cell
    result = measure_decoupling(table)
    assert result.good_cells == 3
    assert result.box_cells == 3
    assert result.rectangularity == 1.0
    assert not result.good_mask[1][1]


def test_an_l_shape_is_not_rectangular() -> None:
    table = np.full((3, 3), 0.1)
    table[0, :] = 0.9
    table[:, 0] = 0.9
    result = measure_decoupling(table)
    assert (result.good_cells, result.box_cells) == (5, 9)
    assert result.rectangularity == pytest.approx(5 / 9)


def test_threshold_is_unit_free() -> None:
    table = quadratic_table([4, 3, 3, 2, 1])
    fraction, percent = measure_decoupling(table), measure_decoupling(100 * table)
    assert fraction.rectangularity == percent.rectangularity
    assert fraction.good_mask == percent.good_mask
    assert percent.threshold == pytest.approx(100 * fraction.threshold)


def test_diverged_cells_do_not_loosen_the_threshold() -> None:
    """One cell at chance level (a diverged run) leaves the median, hence the good region, unchanged."""
    table = quadratic_table([2, 2, 2, 2, 2])
    diverged = table.copy()
    diverged[4, 4] = 0.1
    assert measure_decoupling(table).good_mask == measure_decoupling(diverged).good_mask


def test_tolerance_extremes() -> None:
    table = np.array([[0.1, 0.5, 0.9], [0.2, 0.6, 0.9], [0.3, 0.4, 0.8]])
    only_best, threshold = good_region(table, tolerance=0.0)
    assert threshold == 0.9
    assert only_best.sum() == 2  # the two tied best cells
    above_median, threshold = good_region(table, tolerance=1.0)
    assert threshold == pytest.approx(0.5)
    assert above_median.sum() == 5
    assert DEFAULT_TOLERANCE == 0.5


def test_constant_table_is_all_good() -> None:
    result = measure_decoupling(np.full((2, 3), 0.5))
    assert (result.good_cells, result.box_cells, result.rectangularity) == (6, 6, 1.0)


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="2-D"):
        measure_decoupling([0.1, 0.2])
    with pytest.raises(ValueError, match="no finite"):
        measure_decoupling(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="tolerance"):
        good_region(np.ones((2, 2)), tolerance=1.5)
    with pytest.raises(ValueError, match="x values"):
        measure_decoupling(np.ones((2, 2)), x_values=[1, 2, 3])


def rows_from_table(variant: str, table: np.ndarray, seeds: tuple[int, ...] = (0,)) -> list[dict]:
    rows = []
    for i, wd in enumerate(WD[: table.shape[0]]):
        for j, lr in enumerate(LR[: table.shape[1]]):
            for seed in seeds:
                rows.append(
                    {
                        "cell": f"{variant}-{i}-{j}-{seed}", "variant": variant, "lr": lr, "weight_decay": wd,
                        "seed": seed, "status": "ok", "accuracy": float(table[i, j]) + 0.01 * (seed - 0.5),
                        "axes": ["lr", "weight_decay", "seed"],
                    }
                )
    return rows


def test_report_from_results_rows() -> None:
    rows = rows_from_table("adamw", quadratic_table([2] * 5), seeds=(0, 1))
    rows += rows_from_table("adaml2", quadratic_table([4, 3, 2, 1, 0]), seeds=(0, 1))
    tables = result_tables(rows)
    assert [t.label for t in tables] == ["adamw", "adaml2"]
    assert np.allclose(tables[0].values, quadratic_table([2] * 5))  # seeds averaged (+-0.005 cancel)
    measures = [measure_decoupling(t.values, t.x_values, t.y_values) for t in tables]
    report = decoupling_report(tables, measures, DEFAULT_TOLERANCE)
    assert "| adamw | 1.00 | 5 / 5 |" in report
    assert "| adaml2 | 0.20 | 5 / 25 |" in report
    adaml2 = report.split("## adaml2")[1]
    best_lr_per_wd, best_wd_per_lr = adaml2.split("| lr | best weight_decay |")
    assert "| 0.01 | 0.0001 | 0.82 |" in best_lr_per_wd  # at weight decay 1e-2 the best lr is 1e-4
    assert "| 0 | 1 | 0.82 |" in best_lr_per_wd  # at weight decay 0 the best lr is 1
    assert "| 0.01 | 0.0001 | 0.9 |" in best_wd_per_lr  # at lr 1e-2 the best weight decay is 1e-4
    assert not math.isnan(measures[1].best)
