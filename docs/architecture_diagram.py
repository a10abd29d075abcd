"""Draw docs/architecture.png: edgec's data flow and its packages with the allowed imports.

Run from the repository root after changing the layout (matplotlib is a core dependency)::

    python docs/architecture_diagram.py

The top band is the compile's data flow, one box per step, each naming the package that owns
it. The bottom band is the package layout: an arrow from A to B means A may import B; nothing
imports upwards, and ``runtime/`` imports nothing from edgec at all (it is copied into every
bundle and runs on devices without edgec).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).resolve().parent / "architecture.png"

FLOW = "#dbe9f6"
FLOW_EDGE = "#2b6cb0"
PKG = "#f4f4f4"
PKG_EDGE = "#444444"
SHIPPED = "#e3f4e1"
SHIPPED_EDGE = "#2f855a"
ARROW = "#555555"


def box(ax, x, y, w, h, title, body="", face=PKG, edge=PKG_EDGE, size=11):
    """A rounded box centred at (x, y) with a bold title and an optional smaller body."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=face,
            edgecolor=edge,
            linewidth=1.4,
        )
    )
    if body:
        ax.text(x, y + h / 2 - 0.2, title, ha="center", va="top", fontsize=size, weight="bold")
        ax.text(x, y + h / 2 - 0.55, body, ha="center", va="top", fontsize=size - 2.5)
    else:
        ax.text(x, y, title, ha="center", va="center", fontsize=size, weight="bold")


def arrow(ax, start, end, color=ARROW, connection="arc3", width=1.3):
    """An arrow from ``start`` to ``end`` (points in data coordinates)."""
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=14,
            color=color,
            linewidth=width,
            connectionstyle=connection,
            shrinkA=2,
            shrinkB=2,
        )
    )


def data_flow(ax) -> None:
    """The top band: teacher + target + data -> load -> ... -> bundle."""
    ax.text(0.3, 15.6, "Data flow of edgec compile", fontsize=14, weight="bold", va="center")
    ax.text(
        0.3,
        15.1,
        "each arrow is a plain function call on plain data; the driver "
        "(compiler/driver.py) runs the steps in order",
        fontsize=9.5,
        va="center",
        color="#333333",
    )
    inputs = ["teacher.onnx", "target", "--data"]
    for i, label in enumerate(inputs):
        box(ax, 1.25, 13.9 - i * 0.75, 2.1, 0.55, label, size=9)
        arrow(ax, (2.3, 13.9 - i * 0.75), (2.95, 13.15))
    steps = [
        ("load", "compiler/\nloading.py\nchecker, shapes"),
        ("canonicalize", "passes/\nfold, DCE,\nfusion hints"),
        ("students", "compiler/\nstudents/\nprune + distil"),
        ("quantize", "compiler/int8/\n+ passes/quantize\ncalibrate, guard"),
        ("build", "targets/<backend>/\nbuild, tune, measure\nor estimate latency"),
        ("plan", "compiler/\nplanning/\nthresholds, policy"),
        ("bundle", "bundle/ + runtime/\nmanifest, runtime,\nsign, report"),
    ]
    x0, step_w, gap = 2.95, 2.15, 0.33
    for i, (title, body) in enumerate(steps):
        x = x0 + step_w / 2 + i * (step_w + gap)
        face, edge = (SHIPPED, SHIPPED_EDGE) if title == "bundle" else (FLOW, FLOW_EDGE)
        box(ax, x, 13.15, step_w, 1.75, title, body, face=face, edge=edge, size=11)
        if i:
            arrow(ax, (x - step_w / 2 - gap, 13.15), (x - step_w / 2, 13.15), color=FLOW_EDGE)
    ax.text(
        x0 + 4 * (step_w + gap) + step_w / 2,
        12.05,
        "per stage",
        ha="center",
        fontsize=9,
        style="italic",
        color=FLOW_EDGE,
    )
    ax.text(
        x0 + 3 * (step_w + gap) + step_w / 2,
        12.05,
        "per stage",
        ha="center",
        fontsize=9,
        style="italic",
        color=FLOW_EDGE,
    )


# Package boxes: name -> (centre x, centre y, width, height, body). Four rows, importers above
# what they import, placed so that no two arrows cross.
PACKAGES = {
    "cli/": (9.0, 9.85, 6.8, 0.95, "click commands, shared option groups; flags -> config -> API"),
    "config.py": (2.4, 7.7, 3.2, 1.2, "validated, frozen\nCompileConfig"),
    "compiler/": (
        9.5,
        7.7,
        9.0,
        1.85,
        "driver, loading, canonicalize, backend choice, report\n"
        "int8/  precision decision, accuracy guard, diagnosis\n"
        "planning/  stages, cascade, policy, partition, cost model\n"
        "inspect/  per-layer table      students/  prune, distil",
    ),
    "kernels/": (4.1, 5.2, 3.0, 1.45, "fused pre-processing,\nNumPy references"),
    "passes/": (8.0, 5.2, 3.2, 1.45, "graph passes on onnx_ir,\npipelines, quantize"),
    "runtime/": (
        12.5,
        5.2,
        3.4,
        1.45,
        "ships in every bundle:\nloaders, codec, verifier,\ntemplates; imports nothing",
    ),
    "bundle/": (
        16.8,
        5.2,
        3.6,
        1.45,
        "manifest I/O, trust\n(sign, verify), install,\ngate, launch",
    ),
    "targets/": (
        9.8,
        2.55,
        18.0,
        1.2,
        "descriptors (YAML), host detection, registry, the Backend protocol; "
        "onnxruntime/, tvm/, tensorrt/: build, load, measure, tune, op support",
    ),
}

# Allowed imports (A may import B): start, end, connection style.
IMPORTS = [
    ("cli/", "config.py", (6.2, 9.37), (3.2, 8.3), "arc3"),
    ("cli/", "compiler/", (9.0, 9.37), (9.0, 8.63), "arc3"),
    ("cli/", "bundle/", (12.4, 9.85), (16.8, 5.93), "angle,angleA=0,angleB=90,rad=0"),
    ("compiler/", "config.py", (5.0, 7.7), (4.0, 7.7), "arc3"),
    ("compiler/", "kernels/", (5.4, 6.77), (4.8, 5.93), "arc3"),
    ("compiler/", "passes/", (8.0, 6.77), (8.0, 5.93), "arc3"),
    ("compiler/", "targets/", (10.2, 6.77), (10.2, 3.15), "arc3"),
    ("compiler/", "runtime/", (12.5, 6.77), (12.5, 5.93), "arc3"),
    ("compiler/", "bundle/", (13.8, 6.77), (15.4, 5.93), "arc3"),
    ("config.py", "kernels/", (3.4, 7.1), (3.8, 5.93), "arc3"),
    ("config.py", "targets/", (1.6, 7.1), (1.6, 3.15), "arc3"),
    ("passes/", "kernels/", (6.4, 5.2), (5.6, 5.2), "arc3"),
    ("bundle/", "runtime/", (15.0, 5.2), (14.2, 5.2), "arc3"),
    ("bundle/", "targets/", (16.8, 4.47), (16.8, 3.15), "arc3"),
]


def packages(ax) -> None:
    """The bottom band: the packages of src/edgec and which may import which."""
    ax.text(
        0.3,
        11.15,
        "Packages of src/edgec and the allowed imports",
        fontsize=14,
        weight="bold",
        va="center",
    )
    ax.text(
        0.3,
        10.72,
        "arrow A -> B: A may import B; never upwards, no cycles "
        "(data.py and errors.py are leaves anyone may import)",
        fontsize=9.5,
        va="center",
        color="#333333",
    )
    for name, (x, y, w, h, body) in PACKAGES.items():
        face, edge = (SHIPPED, SHIPPED_EDGE) if name == "runtime/" else (PKG, PKG_EDGE)
        box(ax, x, y, w, h, name, body, face=face, edge=edge, size=12)
    for _importer, _imported, start, end, connection in IMPORTS:
        arrow(ax, start, end, connection=connection)
    ax.text(
        0.3,
        1.3,
        "Rules the layering test enforces: runtime/ imports nothing from the compiler side; "
        "passes/ imports no config, runtime, compiler or bundle code;\n"
        "config.py does not import the TVM backend; no import cycle between edgec modules.",
        fontsize=9.5,
        va="center",
        color="#333333",
    )


def main() -> None:
    """Draw both bands and write the PNG (no date metadata, so reruns give the same bytes)."""
    fig, ax = plt.subplots(figsize=(17, 10.5))
    ax.set_xlim(0, 20.2)
    ax.set_ylim(0.8, 16.1)
    ax.axis("off")
    data_flow(ax)
    ax.plot([0.3, 19.9], [11.6, 11.6], color="#bbbbbb", linewidth=1)
    packages(ax)
    fig.savefig(OUT, dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
