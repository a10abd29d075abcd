"""Device/gateway partitioning across link speeds: best cut vs device-only vs gateway-only.

For each model and device (its gateway and RTT from the device's descriptor), this script
sweeps the uplink bandwidth and records the end-to-end latency of the cut edgec chooses
(``edgec.compiler.planning.partition.plan_partition``), of running everything on the device, and of
sending the raw input to the gateway. All latencies are ``estimated`` by the roofline cost
model from the descriptors' published peaks — there is no Raspberry Pi or Jetson here — so
the table shows where the choice moves, not what a board measures.

Models: the example teacher, a "bottleneck" CNN built here (a cheap stride-4 stem, then heavy
3x3 convolutions: the shape Neurosurgeon exploits), and resnet18 and mobilenet_v2 from the four
benchmark models (random weights; latency only), read from ``--models-dir`` and skipped without
it.

Usage::

    python benchmarks/partition.py [--models-dir DIR] [--no-write]

Writes its section of ``benchmarks/RESULTS.md`` (between ``<!-- partition:begin -->`` and
``<!-- partition:end -->``) and ``benchmarks/partition.png`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import onnx

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.loading import load_model
from edgec.compiler.planning.partition import plan_partition
from edgec.passes.partition import DEVICE_ONLY, GATEWAY_ONLY
from edgec.targets import load_target
from edgec.targets.descriptor import Link

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from models import bottleneck_model

REPO = Path(__file__).resolve().parent.parent
from bench_models import add_models_dir, find_models, recorded_command  # noqa: E402
from results_md import write_section  # noqa: E402  (benchmarks/ is the script's folder)

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PLOT = Path(__file__).resolve().parent / "partition.png"
BEGIN, END = "<!-- partition:begin -->", "<!-- partition:end -->"
BANDWIDTHS_MBPS = (0.5, 1, 2, 5, 10, 20, 50, 100, 300, 1000)
DEVICES = ("raspberry-pi-4", "jetson-nano")


def models(models_dir: Path | None) -> dict[str, onnx.ModelProto]:
    """The models to sweep, canonicalised as ``edgec compile`` does."""
    found = {
        "digits teacher": canonicalize(load_model(REPO / "examples/digits/teacher.onnx").proto),
        "bottleneck CNN": canonicalize(bottleneck_model()),
    }
    for name, path in find_models(models_dir, ("resnet18", "mobilenet_v2")).items():
        found[name] = canonicalize(load_model(path).proto)
    return found


def sweep(model: onnx.ModelProto, device_name: str) -> list[dict]:
    """One row per bandwidth: chosen cut, its latency, device-only and gateway-only."""
    device = load_target(device_name)
    rows = []
    for bandwidth in BANDWIDTHS_MBPS:
        link = Link(rtt_ms=device.gateway.link.rtt_ms, bandwidth_mbps=bandwidth)
        plan = plan_partition(model, device, link=link)
        device_only = next(o for o in plan.options if o.cut.name == DEVICE_ONLY)
        gateway_only = min(
            (o for o in plan.options if o.cut.name == GATEWAY_ONLY and o.encoding == "raw"),
            key=lambda o: o.total_ms,
        )
        rows.append(
            {
                "bandwidth": bandwidth,
                "chosen": plan.chosen,
                "device_only": device_only.total_ms,
                "gateway_only": gateway_only.total_ms,
            }
        )
    return rows


def render(results: dict[tuple[str, str], list[dict]], command: str) -> str:
    """The RESULTS.md section."""
    today = datetime.date.today().isoformat()
    lines = [
        BEGIN,
        "## Partitioning between device and gateway (`benchmarks/partition.py`)",
        "",
        f"- date: {today}; machine: {platform.machine()}, Python {platform.python_version()}",
        f"- command: `{command}`",
        "- all latencies are **estimated** by the roofline cost model from the descriptors "
        "(RTT from each device's descriptor; bandwidth swept); gateway-only sends the raw "
        "float32 input; the chosen option may send an INT8-encoded tensor",
        "- resnet18 / mobilenet_v2 are two of the four benchmark models (`--models-dir`; "
        "random weights, latency only) and are skipped without it",
        "",
    ]
    for (model, device), rows in results.items():
        lines += [
            f"### {model} on {device}",
            "",
            "| uplink Mbps | chosen cut | encoding | sent bytes | chosen ms | device-only ms "
            "| gateway-only (raw) ms | speed-up vs the better of the two |",
            "|---:|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            chosen = row["chosen"]
            best_extreme = min(row["device_only"], row["gateway_only"])
            lines.append(
                f"| {row['bandwidth']:g} | {chosen.cut.name} | {chosen.encoding} | "
                f"{chosen.payload_bytes:,} | {chosen.total_ms:.2f} | {row['device_only']:.2f} "
                f"| {row['gateway_only']:.2f} | {best_extreme / chosen.total_ms:.2f}x |"
            )
        lines.append("")
    lines += [
        f"Plot: `benchmarks/{PLOT.name}`. Reading: on fast links the input goes to the "
        "gateway; on slow links the device runs everything; in between, models whose "
        "tensors shrink early (the bottleneck CNN) gain from a middle cut, while "
        "resnet-style models whose early activations are larger than the input mostly "
        "gain from INT8-encoding what they send.",
        END,
    ]
    return "\n".join(lines)


def plot(results: dict[tuple[str, str], list[dict]]) -> None:
    """Latency vs bandwidth per model/device (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(DEVICES) * 2
    rows_n = -(-len(results) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 3.2 * rows_n), squeeze=False)
    for ax in axes.flat[len(results) :]:
        ax.axis("off")
    for ax, ((model, device), rows) in zip(axes.flat, results.items(), strict=False):
        bw = [r["bandwidth"] for r in rows]
        ax.loglog(bw, [r["device_only"] for r in rows], "--", label="device-only")
        ax.loglog(bw, [r["gateway_only"] for r in rows], ":", label="gateway-only (raw)")
        ax.loglog(bw, [r["chosen"].total_ms for r in rows], "o-", label="edgec's cut")
        ax.set_title(f"{model}\n{device}", fontsize=9)
        ax.set_xlabel("uplink Mbps")
        ax.set_ylabel("estimated ms")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=90)


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="Print only.")
    add_models_dir(parser)
    args = parser.parse_args(argv)
    results = {
        (name, device): sweep(model, device)
        for name, model in models(args.models_dir).items()
        for device in DEVICES
    }
    command = recorded_command(
        "partition.py", sys.argv[1:] if argv is None else argv, args.models_dir
    )
    section = render(results, command)
    print(section)
    if not args.no_write:
        write_section(section, BEGIN, END, RESULTS)
        plot(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
