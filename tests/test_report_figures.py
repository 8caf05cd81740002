"""What the pictures say: ``diagnostics.png`` of a short run (markers on curves of few points, the number of
logged steps in its title) and the sweep heatmaps' panel titles (the variant and its decay convention)."""

from __future__ import annotations

from pathlib import Path

from lightning_decay.callbacks.training_report import draw_panels, render_panels
from lightning_decay.diagnostics.report import report_panels
from lightning_decay.sweep.heatmaps import plot_sweep, variant_title
from tests.test_sweep import synthetic_rows


def short_series(steps: tuple[int, ...]) -> dict[str, list[tuple[int, float]]]:
    """What the monitors log over a few steps: two layers' norms and the total, two groups' decay factors, the lr
    and one layer's angular update."""
    series = {
        "weight_norm/net.0.weight": [(s, 2.0 + 0.1 * s) for s in steps],
        "weight_norm/net.0.bias": [(s, 0.1 * s) for s in steps],
        "weight_norm/total": [(s, 2.5 + 0.1 * s) for s in steps],
        "decay_factor/decay": [(s, 1 - 5e-5) for s in steps],
        "decay_factor/no_decay": [(s, 1.0) for s in steps],
        "lr-AdamW/decay": [(s, 1e-3 * s) for s in steps],
        "scale_invariance/angular_update/net.0.weight": [(s, 0.01 / s) for s in steps],
    }
    return series


def png_info(path: Path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as image:
        return dict(image.info)


def test_a_three_step_run_is_drawn_with_markers_and_says_how_many_steps(tmp_path: Path) -> None:
    panels = report_panels(short_series((10, 20, 30)))
    figure = render_panels(panels)
    lines = [line for axis in figure.axes for line in axis.get_lines()]
    assert len(lines) >= 6
    assert all(line.get_marker() not in {None, "None", "", " "} for line in lines)  # three points: dots, not a void
    assert "3 logged steps (steps 10 to 30)" in figure.get_suptitle()
    path = draw_panels(panels, tmp_path / "diagnostics.png")
    assert "3 logged steps (steps 10 to 30)" in png_info(path)["Title"]


def test_a_long_run_is_drawn_as_lines_without_markers(tmp_path: Path) -> None:
    figure = render_panels(report_panels(short_series(tuple(range(1, 201)))))
    lines = [line for axis in figure.axes for line in axis.get_lines()]
    assert lines and all(line.get_marker() in {None, "None", "", " "} for line in lines)
    assert "200 logged steps (steps 1 to 200)" in figure.get_suptitle()


def test_heatmap_titles_name_the_variant_and_its_convention(tmp_path: Path) -> None:
    plots = plot_sweep(synthetic_rows(), tmp_path)
    for name in ("heatmap_accuracy", "heatmap_norm", "norm_curves"):
        panels = png_info(plots[name])["Panels"].split("\n\n")
        assert len(panels) == 4, panels  # adamw and adamp, two loss scales each
        for title in (" ".join(panel.split()) for panel in panels):  # the step wraps over lines
            variant = title.split(",", 1)[0]
            assert variant in {"adamw", "adamp"}
            if variant == "adamw":
                assert "torch convention" in title and "w <- (1 - lr_t*wd) w - lr_t u_t" in title, title
            else:
                assert "w <- (w - lr_t u_t) / (1 + lr_t*wd/D), elementwise" in title, title
    assert variant_title("adamw", "adamw, loss_scale=10").startswith("adamw, loss_scale=10, torch convention\n")
    assert variant_title("adamw-paper").startswith("adamw-paper, paper convention")
    assert "w <- (1 - eta_t*wd) w - lr_t u_t" in variant_title("adamw-paper")
    assert variant_title("adaml2").startswith("adaml2, L2 penalty in the gradient")
    assert variant_title("my-own-variant") == "my-own-variant"  # not in the registry: the name alone
