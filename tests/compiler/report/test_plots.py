"""The report's Pareto plot is readable at a glance: a log x axis the points fill, tick labels
that do not overlap, the chosen point labelled, and the budget shown without squeezing them.

The front is the digits demo's (``edgec compile examples/digits/teacher.onnx --target
raspberry-pi-4 --data digits --budget-ms 5``): four policies between 0.21 and 0.22 ms against a
5 ms budget, which used to push every point into the left tenth of the plot.
"""

from __future__ import annotations

import itertools
import math

import pytest

from edgec.compiler.report.plots import MIN_POINT_SHARE, pareto_figure, write_pareto_plot


def _policy(points: list[tuple[float, float]], chosen: int, budget: float | None) -> dict:
    front = [
        {"expected_latency_ms": ms, "accuracy": acc, "thresholds": {"tiny": i / 10}}
        for i, (ms, acc) in enumerate(points)
    ]
    return {
        "pareto": front,
        "expected_latency_ms": points[chosen][0],
        "expected_accuracy": points[chosen][1],
        "budget_ms": budget,
        "accuracy_basis": "labels",
    }


DEMO = _policy(
    [(0.2098, 0.986667), (0.2102, 0.988889), (0.2148, 0.993333), (0.2236, 0.995556)], 2, 5.0
)
WIDE = _policy([(0.2, 0.95), (0.6, 0.97), (1.5, 0.985), (3.2, 0.99)], 2, 5.0)


def _share_of_axis(axes, xs: list[float]) -> float:
    lo, hi = axes.get_xlim()
    return math.log10(max(xs) / min(xs)) / math.log10(hi / lo)


def _tick_label_boxes(figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = figure.axes[0]
    labels = [*axes.get_xticklabels(minor=False), *axes.get_xticklabels(minor=True)]
    lo, hi = axes.get_xlim()
    shown = [t for t in labels if t.get_text() and lo <= t.get_position()[0] <= hi]
    return [t.get_window_extent(renderer) for t in shown]


@pytest.mark.parametrize("policy", [DEMO, WIDE], ids=["demo", "wide"])
def test_points_fill_a_log_axis_with_readable_ticks(policy):
    figure = pareto_figure(policy)
    axes = figure.axes[0]
    assert axes.get_xscale() == "log"
    xs = [p["expected_latency_ms"] for p in policy["pareto"]]
    assert _share_of_axis(axes, xs) > MIN_POINT_SHARE
    boxes = _tick_label_boxes(figure)
    assert len(boxes) >= 3
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), "x tick labels overlap"


def test_the_chosen_point_is_labelled():
    texts = [t.get_text() for t in pareto_figure(DEMO).axes[0].texts]
    assert "chosen: 0.215 ms, 99.33%" in texts


@pytest.mark.parametrize("chosen", [0, 1, 2])
def test_the_chosen_label_stays_inside_the_axes_and_clear_of_the_legend(chosen):
    """The demo's plot had its legend (lower right, inside the axes) over the chosen label;
    the legend now sits below the axes and the label turns to the side with room."""
    points = [(0.0668, 0.9911), (0.0670, 0.9911), (0.0670, 0.9933)]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = pareto_figure(_policy(points, chosen, 5.0))
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = figure.axes[0]
    (label,) = [t for t in axes.texts if t.get_gid() == "chosen-label"]
    box = label.get_window_extent(renderer)
    frame = axes.get_window_extent(renderer)
    legend = axes.get_legend().get_window_extent(renderer)
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    assert not box.overlaps(legend) and legend.y1 <= frame.y0


def test_a_far_budget_is_named_in_the_legend_instead_of_stretching_the_axis():
    axes = pareto_figure(DEMO).axes[0]
    assert axes.get_xlim()[1] < 5.0
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert "budget 5 ms (off the axis, right)" in legend


def test_a_near_budget_is_drawn_on_the_axis():
    axes = pareto_figure(WIDE).axes[0]
    lo, hi = axes.get_xlim()
    assert lo < 5.0 < hi
    assert "budget 5 ms" in [t.get_text() for t in axes.get_legend().get_texts()]


def test_a_single_point_without_budget_still_draws(tmp_path):
    path = write_pareto_plot(tmp_path / "report" / "pareto.png", _policy([(1.0, 0.9)], 0, None))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
