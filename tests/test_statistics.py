"""Seed statistics (t quantiles, intervals, verdicts), the lr-wd slope on synthetic heatmaps built to be coupled or
decoupled, the per-seed views of result tables, and the decoded-data disk cache that makes sweep cells cheap."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_decay.experiments import cifar10
from lightning_decay.sweep.comparison import comparison_report, load_panel_slopes, slope_difference
from lightning_decay.sweep.comparison import main as compare_main
from lightning_decay.sweep.decoupling import (
    NEGLIGIBLE_SLOPE,
    best_log_x,
    decoupling_report,
    informative_rows,
    measure_lr_wd_slope,
    measure_tables,
    panel_slopes,
    slope_verdict,
)
from lightning_decay.sweep.results import result_tables
from lightning_decay.sweep.statistics import (
    Interval,
    best_cell,
    compare_best_cells,
    difference_interval,
    mean_interval,
    slope_interval,
    student_t_cdf,
    t_quantile,
    verdict,
)

# Student t quantiles from a printed table (two-sided 95%, 90%, 99%: p = 0.975, 0.95, 0.995), 3 decimals.
T_TABLE = {
    0.975: {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 8: 2.306, 10: 2.228, 20: 2.086, 30: 2.042,
            60: 2.000, 120: 1.980},
    0.95: {1: 6.314, 2: 2.920, 3: 2.353, 5: 2.015, 10: 1.812, 30: 1.697},
    0.995: {1: 63.657, 2: 9.925, 5: 4.032, 10: 3.169, 30: 2.750},
}


@pytest.mark.parametrize("p", sorted(T_TABLE))
def test_t_quantile_matches_the_table(p: float) -> None:
    for df, expected in T_TABLE[p].items():
        assert t_quantile(p, df) == pytest.approx(expected, abs=6e-4), (p, df)
        assert t_quantile(1 - p, df) == pytest.approx(-expected, abs=6e-4)
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)


def test_t_cdf_closed_forms() -> None:
    for t in (-3.0, -0.5, 0.0, 0.7, 12.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert student_t_cdf(1.5, 1e6) == pytest.approx(0.9331928, abs=1e-6)  # ~normal
    with pytest.raises(ValueError, match="df"):
        student_t_cdf(1.0, 0)
    with pytest.raises(ValueError, match="p must"):
        t_quantile(1.0, 3)


def test_mean_interval_known_values() -> None:
    interval = mean_interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # s = 1
    assert (interval.estimate, interval.n, interval.df, interval.spread) == (2.0, 3, 2.0, 1.0)
    assert (interval.low, interval.high) == pytest.approx((2 - half, 2 + half), abs=1e-6)
    assert mean_interval([1.0, 2.0, 3.0], confidence=0.99).half_width == pytest.approx(9.924843 / math.sqrt(3), 1e-6)
    single = mean_interval([0.3, float("nan")])  # NaN dropped; one value: no interval
    assert single.estimate == 0.3 and math.isnan(single.low) and not single.excludes(0.0)
    with pytest.raises(ValueError):
        mean_interval([float("nan")])


def test_paired_difference_sees_through_shared_seed_noise() -> None:
    seed_effect = np.array([0.30, 0.36, 0.33])  # the same seeds on both sides (same init and data order)
    a, b = seed_effect + 0.01, seed_effect + np.array([0.0, 0.001, -0.001])
    paired = difference_interval(a, b, paired=True)
    welch = difference_interval(a, b)
    assert paired.estimate == pytest.approx(0.01) and welch.estimate == pytest.approx(0.01)
    assert paired.excludes(0.0) and paired.method == "paired t" and paired.df == 2
    assert welch.contains(0.0) and welch.method == "Welch t"
    assert welch.df == pytest.approx(4.0, rel=0.02)  # equal n and nearly equal variances: ~2(n - 1)
    with pytest.raises(ValueError, match="same length"):
        difference_interval([1, 2], [1, 2, 3], paired=True)


def test_welch_interval_is_welch_satterthwaite_and_no_spread_is_a_point() -> None:
    """Welch's interval (now from scipy.stats.ttest_ind) against the formula written out; constant samples (where
    scipy's statistic is undefined) give a zero-width interval, not NaN."""
    a, b = np.array([0.61, 0.64, 0.60, 0.66]), np.array([0.55, 0.62, 0.50])
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = t_quantile(0.975, df) * math.sqrt(va + vb)
    welch = difference_interval(a, b)
    assert welch.df == pytest.approx(df, rel=1e-12)
    assert (welch.low, welch.high) == pytest.approx((a.mean() - b.mean() - half, a.mean() - b.mean() + half), rel=1e-12)
    flat = mean_interval([0.5, 0.5, 0.5])
    assert (flat.low, flat.high, flat.se) == (0.5, 0.5, 0.0)
    same = difference_interval([0.5, 0.6], [0.4, 0.5], paired=True)  # differences 0.1, 0.1
    assert same.low == pytest.approx(0.1) and same.high == pytest.approx(0.1) and same.method == "paired t"


def test_slope_interval() -> None:
    u = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    exact = slope_interval(u, 2 - 0.5 * u)
    assert exact.estimate == pytest.approx(-0.5) and exact.half_width == pytest.approx(0.0, abs=1e-12)
    v = np.array([0.1, 0.9, 2.2, 2.8, 4.1])
    fitted = slope_interval(u, v)
    assert fitted.estimate == pytest.approx(np.polyfit(u, v, 1)[0])
    residuals = v - np.polyval(np.polyfit(u, v, 1), u)
    se = math.sqrt((residuals**2).sum() / 3 / ((u - u.mean()) ** 2).sum())
    assert fitted.half_width == pytest.approx(3.182446 * se, rel=1e-6) and fitted.df == 3
    assert math.isnan(slope_interval([1.0, 1.0], [0.0, 1.0]).estimate)  # one distinct u: no slope


def test_verdict_says_whether_the_difference_exceeds_the_spread() -> None:
    assert verdict(difference_interval([0.35, 0.36, 0.37], [0.30, 0.31, 0.32], paired=True), " pp", 100).endswith(
        "larger than the seed spread"
    )
    assert "within the seed spread" in verdict(difference_interval([0.35, 0.30, 0.37], [0.34, 0.33, 0.32]))
    assert "no interval" in verdict(difference_interval([0.3], [0.2]))


# -- the lr-wd slope on synthetic heatmaps -----------------------------------------------------------------------

LRS = 1e-3 * 2.0 ** np.arange(8)  # 1e-3 ... 1.28e-1, factor 2
WDS = 10.0 ** np.linspace(-3, -2, 6)  # one decade in 6 steps


def synthetic(slope: float, seeds: int = 3, noise: float = 0.002, seed: int = 0) -> list[np.ndarray]:
    """Accuracy tables (rows: WDS, columns: LRS) whose best lr is ``c * wd**slope`` exactly: a parabola in log lr
    around it, a mild wd preference, and independent per-cell noise per seed."""
    rng = np.random.default_rng(seed)
    u, w = np.log10(LRS)[None, :], np.log10(WDS)[:, None]
    centre = math.log10(1.6e-2) + slope * (w - w.mean())
    clean = 0.35 - 0.1 * (u - centre) ** 2 - 0.02 * (w - w.mean()) ** 2
    return [clean + noise * rng.standard_normal(clean.shape) for _ in range(seeds)]


def test_best_log_x_refines_a_parabola_exactly() -> None:
    u = np.log10(LRS)
    row = 0.3 - (u - math.log10(0.011)) ** 2
    best, edge = best_log_x(row[None, :], LRS)
    assert best[0] == pytest.approx(math.log10(0.011)) and not edge[0]
    unrefined, _ = best_log_x(row[None, :], LRS, refine=False)
    assert unrefined[0] == pytest.approx(math.log10(8e-3))  # the best grid point
    rising = np.linspace(0.1, 0.3, len(LRS))[None, :]
    best, edge = best_log_x(rising, LRS)
    assert best[0] == pytest.approx(math.log10(LRS[-1])) and edge[0]  # optimum beyond the grid: flagged
    with pytest.raises(ValueError, match="positive"):
        best_log_x(rising, [0.0, *LRS[1:]])


def test_informative_rows_skip_rows_where_nothing_trains() -> None:
    table = np.array([[0.30, 0.35, 0.32], [0.20, 0.25, 0.22], [0.10, 0.10, 0.10]])
    assert informative_rows(table).tolist() == [True, True, False]
    # a row that trains at one lr only (0.25, below the table's median 0.275) still has a best lr: halfway is 0.225
    table = np.array([[0.30, 0.35, 0.32], [0.30, 0.34, 0.31], [0.10, 0.25, 0.10], [0.10, 0.20, 0.10]])
    assert informative_rows(table).tolist() == [True, True, True, False]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slope_separates_coupled_from_decoupled(seed: int) -> None:
    decoupled = measure_lr_wd_slope(synthetic(0.0, seed=seed), LRS, WDS)
    coupled = measure_lr_wd_slope(synthetic(-1.0, seed=seed), LRS, WDS)
    assert decoupled.verdict == "decoupled" and decoupled.slope.excludes(-1.0)
    if seed == 0:  # a tight interval just off 0 by noise: a negligible shift (< NEGLIGIBLE_SLOPE) is still decoupled
        assert decoupled.slope.excludes(0.0) and decoupled.slope.low > -NEGLIGIBLE_SLOPE
    assert coupled.verdict == "coupled" and coupled.slope.contains(-1.0)
    assert abs(decoupled.slope.estimate) < 0.05 and abs(coupled.slope.estimate + 1) < 0.1
    assert coupled.edge_rows == 0 and coupled.rows == len(WDS) and len(coupled.per_seed) == 3
    assert measure_lr_wd_slope(synthetic(-0.5, seed=seed), LRS, WDS).verdict.startswith("undetermined")
    # the rectangularity at tolerance 0.5 points the same way on this grid
    assert decoupled.rectangularity.estimate > 0.9 > 0.7 > coupled.rectangularity.estimate


def test_slope_with_one_noisy_seed_has_no_verdict() -> None:
    noisy = measure_lr_wd_slope(synthetic(-1.0, seeds=1), LRS, WDS)
    assert noisy.slope.n == 1 and math.isnan(noisy.slope.low) and noisy.verdict == "undetermined"
    assert noisy.mean_table.estimate == pytest.approx(noisy.per_seed[0])  # one seed: the mean table is that seed


def test_slope_verdicts() -> None:
    def interval(low: float, high: float) -> Interval:
        return Interval((low + high) / 2, low, high, 0.95, 3, 2.0, 0.1, 0.1, "t")

    assert slope_verdict(interval(-0.2, 0.1)) == "decoupled"
    assert slope_verdict(interval(-0.3, -0.12)) == "weakly coupled"
    assert slope_verdict(interval(0.15, 0.45)) == "weakly coupled, rising"
    assert slope_verdict(interval(-0.3, -0.05)) == "decoupled"  # a detectable but negligible shift (< 0.1)
    assert slope_verdict(interval(-1.2, -0.7)) == "coupled"
    assert slope_verdict(interval(-0.8, -0.3)) == "undetermined (shift detectable)"
    assert slope_verdict(interval(-1.5, 0.4)) == "undetermined"
    assert slope_verdict(interval(0.7, 1.2)) == "coupled, rising"
    assert slope_verdict(interval(0.3, 1.2)) == "undetermined (shift detectable)"
    assert slope_verdict(Interval(-1.0, math.nan, math.nan, 0.95, 1, 0.0, math.nan, math.nan, "t")) == "undetermined"


def rows_from_tables(tables: dict[str, list[np.ndarray]]) -> list[dict]:
    rows = []
    for variant, seeds in tables.items():
        for seed, table in enumerate(seeds):
            for i, wd in enumerate(WDS):
                for j, lr in enumerate(LRS):
                    rows.append({
                        "cell": f"{variant}-{seed}-{i}-{j}", "variant": variant, "lr": float(lr),
                        "weight_decay": float(wd), "seed": seed, "status": "ok", "accuracy": float(table[i, j]),
                        "axes": ["seed", "lr", "weight_decay"],
                    })
    return rows


def test_result_tables_keep_the_seeds() -> None:
    tables = {"adaml2": synthetic(-1.0), "adamw": synthetic(0.0)}
    rows = rows_from_tables(tables)
    rows[0]["accuracy"] = None  # one missing seed value in one cell
    l2, adamw = result_tables(rows)
    stack = np.stack(tables["adamw"])
    assert np.allclose(adamw.values, stack.mean(0)) and np.allclose(adamw.stds, stack.std(0, ddof=1))
    assert l2.counts[0, 0] == 2 and l2.counts[0, 1] == 3
    assert set(l2.samples(0, 0)) == {1, 2} and l2.samples(0, 1)[0] == pytest.approx(tables["adaml2"][0][0, 1])
    by_seed = l2.by_seed()
    assert list(by_seed) == [0, 1, 2] and math.isnan(by_seed[0][0, 0])
    assert np.allclose(by_seed[2], tables["adaml2"][2])
    best = best_cell(adamw)
    assert best.mean.n == 3 and best.mean.estimate == pytest.approx(np.nanmax(adamw.values))
    i, j = np.unravel_index(np.nanargmax(l2.values), l2.values.shape)
    l2.values[0, 0], l2.counts[0, 0] = l2.values[i, j] + 0.1, 1  # a better mean from fewer seeds is passed over
    assert best_cell(l2).mean.n == 3 and best_cell(l2).mean.estimate == pytest.approx(l2.values[i, j])
    difference = compare_best_cells(best, best_cell(l2))
    assert difference.method == "paired t"


def test_report_has_the_seed_section_only_with_seeds() -> None:
    rows = rows_from_tables({"adaml2": synthetic(-1.0), "adamw": synthetic(0.0)})
    tables = result_tables(rows)
    report = decoupling_report(tables, measure_tables(tables), 0.5, panel_slopes(tables))
    assert "## Over seeds" in report and "| adaml2 | 3 |" in report and "| coupled |" in report
    assert "| decoupled" in report and "adamw - adaml2:" in report
    one_seed = result_tables([row for row in rows if row["seed"] == 0])
    report = decoupling_report(one_seed, measure_tables(one_seed), 0.5, panel_slopes(one_seed))
    assert "## Over seeds" not in report


# -- slopes of several sweeps compared (lightning-decay sweep compare) -------------------------------------------


def write_sweep(folder: Path, tables: dict[str, list[np.ndarray]], seeds: list[int] | None = None) -> Path:
    """A sweep output folder whose ``results.json`` holds ``tables`` (only the rows of ``seeds``, if given)."""
    folder.mkdir(parents=True)
    rows = [row for row in rows_from_tables(tables) if seeds is None or row["seed"] in seeds]
    (folder / "results.json").write_text(json.dumps(rows))
    return folder


def test_compare_finds_the_coupled_sweep(tmp_path: Path) -> None:
    coupled = write_sweep(tmp_path / "coupled", {"adaml2": synthetic(-1.0, seed=1)})
    decoupled = write_sweep(tmp_path / "decoupled", {"adamw": synthetic(0.0, seed=2)})
    panels = load_panel_slopes([coupled, decoupled])
    assert [(p.label, p.source, p.seeds) for p in panels] == [("adaml2", "coupled", (0, 1, 2)),
                                                             ("adamw", "decoupled", (0, 1, 2))]
    difference = slope_difference(panels[0], panels[1])
    assert difference.method == "paired t" and difference.contains(-1.0) and difference.excludes(0.0)
    per_seed = np.subtract(panels[0].slope.per_seed, panels[1].slope.per_seed)
    assert difference.estimate == pytest.approx(per_seed.mean())
    # the best lr per weight decay follows c * wd**slope: 1.6e-2 at the middle of the wd range
    lrs = np.array(panels[0].best_lrs, dtype=float)
    assert np.polyfit(np.log10(WDS), np.log10(lrs), 1)[0] == pytest.approx(-1.0, abs=0.1)
    assert max(panels[1].best_lrs) / min(panels[1].best_lrs) < 1.2 and not any(panels[1].at_edge)

    out = tmp_path / "compare.md"
    assert compare_main([str(coupled), str(decoupled), "--output", str(out)]) == 0
    report = out.read_text()
    assert "| adaml2 | coupled | 3 |" in report and "| coupled |" in report and "| decoupled |" in report
    line = next(line for line in report.splitlines() if line.startswith("| adaml2 | adamw | "))
    assert line.endswith("| paired t | larger than the seed spread |")
    assert float(line.split("|")[3].split()[0]) == pytest.approx(difference.estimate, abs=0.005)
    assert str(tmp_path) not in report  # folders by name: a committed report carries no machine path

    # different seeds on the two sides: Welch's interval over the per-seed slopes
    two_seeds = write_sweep(tmp_path / "two-seeds", {"adamw": synthetic(0.0, seed=2)}, seeds=[0, 1])
    unpaired = slope_difference(panels[0], load_panel_slopes([two_seeds])[0])
    assert unpaired.method == "Welch t" and unpaired.n == 5


def test_compare_errors_name_the_folder_or_panel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        compare_main([str(tmp_path / "missing")])
    assert "sweep folder" in capsys.readouterr().err
    rows = [row for row in rows_from_tables({"adamw": synthetic(0.0)}) if row["weight_decay"] in WDS[:2]]
    folder = tmp_path / "narrow"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(rows))
    with pytest.raises(SystemExit):
        compare_main([str(folder)])
    assert "narrow: panel 'adamw' has 2 weight decays" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_main([str(folder), "--confidence", "95"])
    assert "--confidence" in capsys.readouterr().err


RESULTS = Path(__file__).parents[1] / "docs" / "results"
COMMITTED_COMPARISONS = {
    "decoupling-fine.md": [f"decoupling-fine-{name}" for name in ("l2", "torch", "paper", "prox")],
    "decoupling-fine-4x.md": [f"decoupling-fine-{name}-4x" for name in ("l2", "torch", "paper", "prox")],
    "muon-decoupling.md": ["muon-torch-scale", "muon-paper-scale"],
    "muon-decoupling-4x.md": ["muon-torch-scale-4x", "muon-paper-scale-4x"],
}


@pytest.mark.parametrize("report", sorted(COMMITTED_COMPARISONS))
def test_committed_comparison_is_the_commands_output(report: str) -> None:
    """The committed comparisons are what ``lightning-decay sweep compare`` makes of the committed sweeps."""
    folders = [RESULTS / name for name in COMMITTED_COMPARISONS[report]]
    assert (RESULTS / report).read_text() == comparison_report(load_panel_slopes(folders))


# -- the decoded-data cache ----------------------------------------------------------------------------------------


def test_disk_cache_round_trip(cifar_jpeg_tar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = cifar10.resolve_source(cifar_jpeg_tar)
    cifar10.clear_cache()
    monkeypatch.delenv(cifar10.DISK_CACHE_ENV, raising=False)
    decoded = cifar10.load_source(source)
    assert not list(tmp_path.glob("cache/*"))  # off unless asked for
    monkeypatch.setenv(cifar10.DISK_CACHE_ENV, str(tmp_path / "cache"))
    cifar10.clear_cache()
    cifar10.load_source(source)  # decodes and writes the file
    (cache_file,) = (tmp_path / "cache").glob("cifar10-*.pt")
    cifar10.clear_cache()
    payload = torch.load(cache_file, weights_only=True)
    payload["train_images"][0] = 255 - payload["train_images"][0]  # mark the file to see that it is read
    torch.save(payload, cache_file)
    cached = cifar10.load_source(source)
    assert torch.equal(cached.train_images[0], 255 - decoded.train_images[0])
    assert torch.equal(cached.test_images, decoded.test_images) and torch.equal(cached.train_labels,
                                                                                decoded.train_labels)
    cache_file.write_bytes(b"not a tensor file")  # unreadable: decoded again and rewritten
    cifar10.clear_cache()
    assert torch.equal(cifar10.load_source(source).train_images, decoded.train_images)
    assert torch.equal(torch.load(cache_file, weights_only=True)["train_images"], decoded.train_images)
    cifar10.clear_cache()
