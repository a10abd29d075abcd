"""Plots for the bundle's report: the cascade's accuracy–latency Pareto front.

matplotlib is imported lazily with the Agg backend (no display needed), and the PNG carries no
software or date metadata, so the same policy draws the same bytes on the same machine.
"""

from __future__ import annotations

from pathlib import Path


def write_pareto_plot(path: Path, policy: dict) -> Path:
    """Draw the policy's Pareto front, the chosen point and the budget into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    front = policy.get("pareto") or []
    figure = Figure(figsize=(6.4, 4.2), dpi=100)
    axes = figure.add_subplot()
    xs = [p["expected_latency_ms"] for p in front]
    ys = [100 * p["accuracy"] for p in front]
    axes.step(xs, ys, where="post", color="#4477aa", label="Pareto front", linewidth=1.2)
    axes.scatter(xs, ys, s=14, color="#4477aa", zorder=3)
    chosen_x = policy["expected_latency_ms"]
    chosen_y = 100 * (policy.get("expected_accuracy") or 0.0)
    axes.scatter(
        [chosen_x], [chosen_y], s=90, marker="*", color="#cc3311", zorder=4, label="chosen"
    )
    if policy.get("budget_ms") is not None:
        axes.axvline(policy["budget_ms"], color="#999999", linestyle="--", label="budget")
    basis = policy.get("accuracy_basis", "labels")
    axes.set_xscale("log")
    axes.set_xlabel("expected latency (ms, log scale)")
    axes.set_ylabel("accuracy (%)" if basis == "labels" else "agreement with the teacher (%)")
    axes.set_title("Cascade policies on the validation split")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
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
