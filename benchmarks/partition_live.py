"""Partitioning, live: the generated runtimes on loopback, best cut vs device-only vs gateway-only.

``benchmarks/partition.py`` estimates boards we do not have. This script measures what we can
run here: a bottleneck CNN (``tests/models.py``: a cheap stride-4 stem that shrinks the input,
then six 128-channel 3x3 convolutions at 56x56, 2.3 GMACs) compiled three times for a loopback
target — ``--partition gateway-only``, ``--partition s`` (after the stem; encoding as the planner
chooses) and ``--partition device-only`` — and streamed through each bundle's generated device
runtime, with the generated gateway server in a second process.

The "device" is this machine held to one thread (its descriptor says ``cores: 1``, so its
stages are built for one intra-op thread and half this machine's peak); the gateway is this
machine with both threads. The link is a loopback proxy (``tests/runtime/
delay_proxy.py``) that adds the RTT and serialises each direction at the swept bandwidth
(store-and-forward per 64 KiB chunk). For each bandwidth the table gives the median
end-to-end latency of every option over ``--frames`` frames, and the cut
``edgec compile --partition auto`` chooses for that link. Both targets are this machine, so
``auto`` times its finalists' two halves (``compiler/partition_measure.py``) and adds the link
model (RTT + 1 ms + bytes / bandwidth). The last column shows whether that choice is the best
measured end to end.

Usage::

    python benchmarks/partition_live.py [--frames 20] [--rtt-ms 6] [--no-write]

Writes its section of ``benchmarks/RESULTS.md`` (between ``<!-- partition-live:begin -->``
and ``<!-- partition-live:end -->``) unless ``--no-write``. Takes a few minutes.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "tests" / "runtime"))
from delay_proxy import DelayProxy  # noqa: E402
from models import bottleneck_model  # noqa: E402
from results_md import write_section  # noqa: E402
from runtime_helpers import GatewayProcess  # noqa: E402

from edgec.bundle.launch import import_runtime  # noqa: E402
from edgec.compiler import compile_model  # noqa: E402
from edgec.config import CompileConfig  # noqa: E402
from edgec.targets import load_target  # noqa: E402

RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- partition-live:begin -->", "<!-- partition-live:end -->"
BANDWIDTHS_MBPS = (10, 50, 200, 1000)
OPTIONS = ("gateway-only", "s", "device-only")
WIDTH, DEPTH = 128, 6  # heavy enough that compute, not the link's fixed costs, dominates


def write_device(directory: Path, rtt_ms: float, bandwidth_mbps: float) -> Path:
    """This machine on one core, offloading to itself (both cores) over the given link."""
    host = load_target("host").cpu
    path = directory / f"one-core-{bandwidth_mbps:g}.yaml"
    path.write_text(
        f"""name: one-core
kind: host
description: this machine held to one thread, offloading to itself (benchmark)
sources: [benchmarks/partition_live.py]
cpu: {{arch: {host.arch}, model: one core of this machine, cores: 1,
       clock_ghz: {host.clock_ghz}, peak_gflops_fp32: {host.peak_gflops_fp32 / host.cores},
       peak_gops_int8: {host.peak_gops_int8 / host.cores},
       isa_features: {list(host.isa_features)}}}
memory: {{ram_gb: 8, bandwidth_gbps: 20}}
power: {{typical_w: 10, max_w: 20}}
precisions: [fp32]
backends: [onnxruntime]
gateway: {{target: host, link: {{rtt_ms: {rtt_ms}, bandwidth_mbps: {bandwidth_mbps}}}}}
"""
    )
    return path


def build(root: Path, model: Path, partition: str, target: Path) -> dict:
    result = compile_model(
        CompileConfig(
            model=model,
            target=str(target),
            output=root / f"bundle-{partition.replace('/', '_')}-{target.stem}",
            students="none",
            partition=partition,
            measure_seconds=2.0,
        )
    )
    return {"bundle": result.bundle, "manifest": result.manifest}


def stream(bundle: Path, url: str | None, frames: np.ndarray) -> list[float]:
    device = import_runtime(bundle, "device")
    quiet = logging.getLogger("edgec.bench.quiet")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    latencies = []
    with device.DeviceRuntime(bundle, gateway_url=url, logger=quiet) as runtime:
        for x in frames[:3]:  # warm-up: sessions, connection
            runtime.infer(x)
        for x in frames:
            answer = runtime.infer(x)
            if answer.route != "offloaded" and url is not None:
                raise RuntimeError(f"{bundle.name}: a frame was not offloaded ({answer.route})")
            latencies.append(answer.latency_ms)
    return latencies


def measure(args) -> tuple[list[dict], dict]:
    rows, facts = [], {}
    with tempfile.TemporaryDirectory(prefix="edgec-partition-live-") as tmp:
        root = Path(tmp)
        model = root / "bottleneck.onnx"
        onnx.save(bottleneck_model(width=WIDTH, depth=DEPTH), model)
        frames = np.random.default_rng(0).standard_normal((args.frames, 1, 3, 224, 224))
        frames = frames.astype(np.float32)
        target = write_device(root, args.rtt_ms, BANDWIDTHS_MBPS[0])
        bundles = {option: build(root, model, option, target) for option in OPTIONS}
        for option, built in bundles.items():
            stages = built["manifest"]["stages"]
            facts[option] = {
                "request_bytes": built["manifest"]["partition"]["request_bytes"],
                "encoding": built["manifest"]["partition"]["encoding"],
                "stages": {s["name"]: s["latency_ms"]["p50"] for s in stages},
            }
        gateways = {
            option: GatewayProcess(bundles[option]["bundle"], root / f"{option}.log")
            for option in OPTIONS
            if option != "device-only"
        }
        try:
            device_only = statistics.median(stream(bundles["device-only"]["bundle"], None, frames))
            for bandwidth in BANDWIDTHS_MBPS:
                chosen = build(root, model, "auto", write_device(root, args.rtt_ms, bandwidth))[
                    "manifest"
                ]["partition"]
                row = {
                    "bandwidth": bandwidth,
                    "auto": chosen["cut"],
                    "auto_encoding": chosen["encoding"],
                    "device-only": device_only,
                }
                for option, gateway in gateways.items():
                    proxy = DelayProxy(
                        ("127.0.0.1", gateway.port), args.rtt_ms, bandwidth_mbps=bandwidth
                    )
                    try:
                        row[option] = statistics.median(
                            stream(bundles[option]["bundle"], proxy.url, frames)
                        )
                    finally:
                        proxy.close()
                rows.append(row)
                print(row, flush=True)
        finally:
            for gateway in gateways.values():
                gateway.close()
    return rows, facts


def render(rows: list[dict], facts: dict, args, wall_s: float) -> str:
    host = load_target("host").cpu
    lines = [
        BEGIN,
        "## Partitioning, live on loopback (`benchmarks/partition_live.py`)",
        "",
        f"- Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, "
        f"{host.cores} cores ({host.model}; shared, noisy), Python "
        f"{platform.python_version()}; wall time {wall_s:.0f} s; load average "
        f"{os.getloadavg()[0]:.1f} at the end.",
        f"- Command: `python benchmarks/partition_live.py --frames {args.frames} "
        f"--rtt-ms {args.rtt_ms:g}`",
        f"- Model: the bottleneck CNN (`tests/models.py`, width {WIDTH}, depth {DEPTH}, "
        "random weights). Device: this machine "
        "held to one ONNX Runtime thread; gateway: this machine, two threads, in a second "
        "process. Link: a loopback proxy adding the RTT and serialising each direction at the "
        "bandwidth. Each bundle is the real compile output, run by its generated device runtime "
        "and gateway server.",
        "- Sent per frame: "
        + "; ".join(
            f"{option} {facts[option]['request_bytes']:,} bytes ({facts[option]['encoding']})"
            for option in OPTIONS
            if option != "device-only"
        )
        + ". Stage p50 at compile time (ms): "
        + "; ".join(
            f"{option}: "
            + ", ".join(f"{name} {ms:.2f}" for name, ms in facts[option]["stages"].items())
            for option in OPTIONS
        )
        + ".",
        "- Cells: median end-to-end latency (ms) of the frames, from the device runtime "
        "receiving a frame to its answer. `auto` is the cut `edgec compile --partition auto` "
        "chooses for that link: it times its finalists' halves on this machine and adds the "
        "link model (RTT + 1 ms + bytes / bandwidth).",
        "",
        "| uplink Mbps | gateway-only ms | cut after the stem ms | device-only ms | "
        "cut vs the better of the other two | measured best | `auto` chose "
        "| `auto` within 10% of the best |",
        "|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        measured = {option: row[option] for option in OPTIONS}
        best = min(measured, key=measured.get)
        auto = row["auto"] if row["auto"] in measured else None
        close = "—" if auto is None else ("yes" if measured[auto] <= 1.1 * measured[best] else "no")
        other = min(row["gateway-only"], row["device-only"])
        lines.append(
            f"| {row['bandwidth']:g} | {row['gateway-only']:.2f} | {row['s']:.2f} | "
            f"{row['device-only']:.2f} | {other / row['s']:.2f}x | {best} | "
            f"{row['auto']} ({row['auto_encoding']}) | {close} |"
        )
    wins = [
        f"{row['bandwidth']:g}"
        for row in rows
        if row["s"] < min(row[o] for o in OPTIONS if o != "s")
    ]
    lines += [
        "",
        'Reading: the "device" here is only 2x slower than the gateway, so a cut can win '
        "at most about 2x, minus the link; here it is the measured best at "
        f"{', '.join(wins) or 'no'} Mbps. Neurosurgeon's larger gains come from devices an "
        "order of magnitude slower than their server. `auto` times the two halves but "
        "models the link, so near a crossover it can pick the measured second best.",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30, help="Timed frames per cell.")
    parser.add_argument("--rtt-ms", type=float, default=6.0, help="Round trip of the link.")
    parser.add_argument("--no-write", action="store_true", help="Print only.")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows, facts = measure(args)
    section = render(rows, facts, args, time.perf_counter() - started)
    print(section)
    if not args.no_write:
        write_section(section, BEGIN, END, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
