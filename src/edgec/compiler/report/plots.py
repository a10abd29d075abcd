"""Plots for the bundle's report: the cascade's accuracy–latency Pareto front.

matplotlib is imported lazily with the Agg backend (no display needed), and the PNG carries no
software or date metadata, so the same policy draws the same bytes on the same machine.
"""

from __future__ import annotations

import math
from pathlib import Path

# The Pareto points must fill at least this share of the x axis (log scale): a budget far
# to their right is drawn as a marker at the edge instead of stretching the axis.
MIN_POINT_SHARE = 0.5
_BLUE, _RED, _GREY = "#4477aa", "#cc3311", "#777777"


def _x_limits(xs: list[float], budget: float | None) -> tuple[float, float, bool]:
    """Log-axis limits around the points, and whether the budget fits on the axis."""
    low, high = min(xs), max(xs)
    real = math.log10(high / low)
    span = max(real, 0.02)  # a single point still gets a readable axis
    pad = 0.08 * span + (span - real) / 2
    lo, hi = low / 10**pad, high * 10**pad
    if budget is None or budget <= 0:
        return lo, hi, False
    new_lo, new_hi = min(lo, budget / 10**pad), max(hi, budget * 10**pad)
    if span / math.log10(new_hi / new_lo) >= MIN_POINT_SHARE:
        return new_lo, new_hi, True
    return lo, hi, False


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` ticks evenly spaced (in log) inside ``[lo, hi]``, rounded to the fewest
    significant digits that keep at least three of them apart."""
    step = math.log10(hi / lo) / (count + 1)
    raw = [lo * 10 ** (i * step) for i in range(1, count + 1)]
    ticks: list[float] = []
    for digits in (1, 2, 3, 4):
        ticks = sorted({r for v in raw if lo <= (r := float(f"{v:.{digits}g}")) <= hi})
        if len(ticks) >= 3:
            break
    return ticks


def pareto_figure(policy: dict):
    """The Pareto front, the chosen point (labelled) and the budget as a matplotlib Figure.

    The x axis is logarithmic and spans the points (they fill most of its width); the budget
    is a dashed line when it fits, else an arrow at the right edge saying where it is. Ticks
    are a few round values in plain numbers, so their labels never overlap.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    front = policy.get("pareto") or []
    chosen_x = policy["expected_latency_ms"]
    chosen_y = 100 * (policy.get("expected_accuracy") or 0.0)
    xs = [p["expected_latency_ms"] for p in front] or [chosen_x]
    ys = [100 * p["accuracy"] for p in front] or [chosen_y]
    budget = policy.get("budget_ms")
    lo, hi, budget_fits = _x_limits([*xs, chosen_x], budget)

    figure = Figure(figsize=(6.4, 4.2), dpi=100)
    axes = figure.add_subplot()
    axes.set_xscale("log")
    axes.set_xlim(lo, hi)
    axes.xaxis.set_major_locator(FixedLocator(_ticks(lo, hi)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.step(xs, ys, where="post", color=_BLUE, label="Pareto front", linewidth=1.2)
    axes.scatter(xs, ys, s=14, color=_BLUE, zorder=3)
    axes.scatter([chosen_x], [chosen_y], s=90, marker="*", color=_RED, zorder=4, label="chosen")
    # The label goes on the side with room: left of a point in the right half of the axis,
    # above the lowest point (below it the axis ends).
    right_half = math.log(chosen_x / lo) > 0.5 * math.log(hi / lo)
    lowest = chosen_y <= min(ys)
    axes.annotate(
        f"chosen: {chosen_x:.3g} ms, {chosen_y:.2f}%",
        (chosen_x, chosen_y),
        xytext=(-10 if right_half else 10, 8 if lowest else -14),
        textcoords="offset points",
        horizontalalignment="right" if right_half else "left",
        color=_RED,
        fontsize="small",
        gid="chosen-label",
    )
    if budget is not None and budget_fits:
        axes.axvline(budget, color=_GREY, linestyle="--", label=f"budget {budget:g} ms")
    elif budget is not None:  # far right of the points: said in the legend, not drawn
        axes.plot(
            [], [], color=_GREY, linestyle="--", label=f"budget {budget:g} ms (off the axis, right)"
        )
    basis = policy.get("accuracy_basis", "labels")
    axes.set_xlabel("expected latency (ms, log scale)")
    axes.set_ylabel("accuracy (%)" if basis == "labels" else "agreement with the teacher (%)")
    low_y, high_y = min([*ys, chosen_y]), max([*ys, chosen_y])
    margin = max(0.1 * (high_y - low_y), 0.05)
    axes.set_ylim(low_y - margin, high_y + margin)
    axes.set_title("Cascade policies on the validation split")
    axes.grid(True, alpha=0.3)
    # Below the axes, so it never covers a point or the chosen label.
    axes.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize="small", frameon=False
    )
    figure.tight_layout()
    return figure


def write_pareto_plot(path: Path, policy: dict) -> Path:
    """Draw :func:`pareto_figure` into ``path`` (PNG, without software or date metadata)."""
    figure = pareto_figure(policy)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def pareto_table(policy: dict) -> list[str]:
    """Markdown lines: the Pareto front, with the chosen point marked (or added when it is
    not on the front: a cheaper point may miss the percentile)."""
    lines = [
        "| thresholds | accuracy | expected ms | "
        f"p{policy['percentile']} ms | within budget | offload | chosen |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    chosen = policy.get("thresholds", {})
    marked = False
    for point in policy.get("pareto", []):
        mark = point["thresholds"] == chosen
        marked |= mark
        lines.append(_row(point, "◀" if mark else ""))
    if not marked:
        lines.append(
            _row(
                {
                    "thresholds": chosen,
                    "accuracy": policy.get("expected_accuracy") or 0.0,
                    "expected_latency_ms": policy["expected_latency_ms"],
                    "percentile_latency_ms": policy["latency_ms"][f"p{policy['percentile']}"],
                    "within_budget": policy["within_budget"],
                    "offload_rate": policy["offload_rate"],
                },
                "◀ (off the front)",
            )
        )
    return lines


def _row(point: dict, mark: str) -> str:
    shown = ", ".join(f"{n} {t:.4g}" for n, t in point["thresholds"].items()) or "—"
    return (
        f"| {shown} | {100 * point['accuracy']:.2f}% | {point['expected_latency_ms']:.3f} | "
        f"{point['percentile_latency_ms']:.3f} | {100 * point['within_budget']:.1f}% | "
        f"{100 * point['offload_rate']:.1f}% | {mark} |"
    )
