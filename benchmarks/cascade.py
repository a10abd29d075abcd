"""The cascade on harder digits: per tier latency, accuracy and share; budget share; bandwidth.

Reproduces the shape of the seed case study's table (per tier: latency, accuracy, share of the
frames it answered; overall: share of frames within the budget and bandwidth saved) with
edgec's own pieces, all real and all on this machine:

1. the harder digits of ``benchmarks/distill.py`` (32x32, random affine views, pixel noise),
   split exactly as ``edgec compile --data`` splits it;
2. that benchmark's CNN teacher, trained on the training part and exported to ONNX;
3. ``compile_model`` with two students (10% and 30% of the teacher's MACs, pruned and
   distilled) for a loopback target: the device is this machine, the gateway is this machine
   too, over a link of ``--rtt-ms`` in the descriptor; budget ``--budget-ms`` at p99;
4. the generated gateway (``edgec serve``) behind a proxy that injects the RTT plus
   exponential jitter (``--jitter-ms``, mean, both directions together);
5. the validation split streamed through the generated device runtime, in interleaved rounds:
   the **cascade**, **device only** (no gateway: the device stages answer everything) and
   **gateway only** (every frame sent to the teacher over the same link and waited for:
   what a device without students does).

"Device" latencies are this x86 machine's, not a Raspberry Pi's: the link dominates here. Each
metric is the median over the rounds.

Usage::

    python benchmarks/cascade.py [--rounds 3] [--rtt-ms 20] [--jitter-ms 4] [--budget-ms 40]
        [--epochs 15] [--no-write]

Writes its section of ``benchmarks/RESULTS.md`` (between ``<!-- cascade:begin -->`` and
``<!-- cascade:end -->``) unless ``--no-write``.

``--task detection`` runs the detection section instead (``benchmarks/detection_cascade.py``:
the example detector on ``digits-detect``, mAP@0.5 per tier and overall; its own markers)::

    python benchmarks/cascade.py --task detection [--rounds 3] [--rtt-ms 20] [--jitter-ms 4]
        [--budget-ms 40] [--epochs 15] [--det-student 0.3] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from distill import Teacher, export_teacher, hard_digits

from edgec.bundle.launch import import_runtime
from edgec.compiler import compile_model
from edgec.compiler.students.distill import DistillSettings, deterministic, train_student
from edgec.config import CompileConfig
from edgec.data import split

HERE = Path(__file__).resolve().parent
from results_md import write_section  # noqa: E402  (benchmarks/ is the script's folder)

RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- cascade:begin -->", "<!-- cascade:end -->"
ARMS = ("cascade", "device only", "gateway only")


def _test_helpers():
    """The tests' RTT-injecting proxy and loopback helpers (``tests/runtime``)."""
    sys.path.insert(0, str(HERE.parent / "tests" / "runtime"))
    import delay_proxy
    import runtime_helpers

    return delay_proxy, runtime_helpers


def build_bundle(work: Path, args: argparse.Namespace) -> tuple[Path, dict, float]:
    """Train the teacher on the training split, compile the cascade; bundle, manifest, secs."""
    _, helpers = _test_helpers()
    started = time.perf_counter()
    x, y = hard_digits(args.copies)
    np.savez(work / "hard_digits.npz", x=x, y=y)
    data = split(str(work / "hard_digits.npz"), x, y)  # the split `--data` will make
    with deterministic(0):
        teacher = Teacher()
    settings = DistillSettings(epochs=args.epochs, lr=2e-3, seed=0, augment="none")
    report = train_student(teacher, data.x_train, None, data.y_train, settings)
    print(f"teacher: {report.epochs_run} epochs, {report.seconds:.0f} s", flush=True)
    export_teacher(teacher, work / "teacher.onnx")
    result = compile_model(
        CompileConfig(
            model=work / "teacher.onnx",
            target=str(helpers.write_loopback_target(work, args.rtt_ms)),
            output=work / "bundle",
            budget_ms=args.budget_ms,
            data=str(work / "hard_digits.npz"),
            students=(0.1, 0.3),
            distill_epochs=args.epochs,
            measure_seconds=3.0,
        )
    )
    return result.bundle, result.manifest, time.perf_counter() - started


def stream(device, bundle: Path, url: str | None, frames: list) -> list[dict]:
    """The cascade (``url`` given) or the device stages alone (``url`` None), per frame."""
    logger = device.observability.json_logger("bench.cascade", logging.WARNING)
    with device.DeviceRuntime(bundle, gateway_url=url, logger=logger) as runtime:
        return [
            {"stage": a.stage, "pred": a.prediction, "ms": a.latency_ms, "bytes": a.bytes_sent}
            for a in runtime.stream(iter(frames))
        ]


def gateway_only(device, url: str, frames: list) -> list[dict]:
    """Every frame sent to the gateway and waited for (up to 1 s), as a device without
    students would."""
    client = device.GatewayClient(url, "bench", retry_after_s=0.0)
    answers = []
    for x in frames:
        started = time.perf_counter()
        try:
            stage, probs, sent = client.infer(x, 1000.0)
            pred = int(probs.argmax())
        except device.OffloadError as err:
            stage, pred, sent = "lost", -1, err.sent
        ms = (time.perf_counter() - started) * 1000.0
        answers.append({"stage": stage, "pred": pred, "ms": ms, "bytes": sent})
    client.close()
    return answers


def summarise(answers: list[dict], labels: np.ndarray, budget: float, every: int, tiers) -> dict:
    """Overall and per-tier numbers for one streamed run."""
    ms = np.array([a["ms"] for a in answers])
    right = np.array([a["pred"] == y for a, y in zip(answers, labels, strict=True)])
    sent = sum(a["bytes"] for a in answers)
    row = {
        "accuracy": float(right.mean()),
        "mean_ms": float(ms.mean()),
        "p99_ms": float(np.percentile(ms, 99)),
        "within": float((ms <= budget).mean()),
        "bytes": sent,
        "saved": 1 - sent / every,
    }
    for tier in ("device", "gateway"):
        mask = np.array([tiers.get(a["stage"]) == tier for a in answers])
        row[tier] = {
            "share": float(mask.mean()),
            "accuracy": float(right[mask].mean()) if mask.any() else None,
            "mean_ms": float(ms[mask].mean()) if mask.any() else None,
            "p99_ms": float(np.percentile(ms[mask], 99)) if mask.any() else None,
        }
    return row


def median_row(rows: list[dict]) -> dict:
    """Per metric, the median over rounds (per-tier metrics too)."""
    out: dict = {}
    for key, value in rows[0].items():
        if isinstance(value, dict):
            out[key] = median_row([r[key] for r in rows])
        else:
            values = [r[key] for r in rows if r[key] is not None]
            out[key] = statistics.median(values) if values else None
    return out


def run_arms(bundle: Path, work: Path, args, frames: list, streams, summarise, describe):
    """Serve ``bundle`` behind the RTT proxy and stream the three arms in interleaved rounds.

    Shared by the classifier and the detection sections. ``streams`` is ``(stream,
    gateway_only)``: ``stream(device, bundle, url, frames)`` runs the device runtime (the
    cascade with ``url``, the device stages alone with ``None``) and ``gateway_only(device,
    url, frames)`` sends every frame. ``summarise(answers, every)`` makes one run's row
    (``every``: the bytes of sending every frame) and ``describe(row)`` its progress line.

    Returns:
        Per arm, the median row over the rounds; and ``every``.
    """
    stream_device, stream_gateway = streams
    device = import_runtime(bundle, "device")
    delay_proxy, helpers = _test_helpers()
    gateway = helpers.GatewayProcess(bundle, work / "gateway.log")
    proxy = delay_proxy.DelayProxy(("127.0.0.1", gateway.port), args.rtt_ms, args.jitter_ms)
    body, headers = device.codec.encode_tensor(frames[0], args.budget_ms, "bench")
    every = device.codec.request_bytes(proxy.url.split("//")[1], headers, body) * len(frames)
    runs = {
        "cascade": lambda: stream_device(device, bundle, proxy.url, frames),
        "device only": lambda: stream_device(device, bundle, None, frames),
        "gateway only": lambda: stream_gateway(device, proxy.url, frames),
    }
    rounds: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    try:
        for number in range(args.rounds):
            for arm in ARMS:
                row = summarise(runs[arm](), every)
                rounds[arm].append(row)
                print(
                    f"round {number} {arm:12s}: {describe(row)} within "
                    f"{100 * row['within']:.1f}% saved {100 * row['saved']:.1f}%",
                    flush=True,
                )
    finally:
        proxy.close()
        gateway.close()
    return {arm: median_row(rows) for arm, rows in rounds.items()}, every


def _pct(value) -> str:
    return "—" if value is None else f"{round(100 * value, 1) + 0.0:.1f}%"  # never "-0.0%"


def _ms(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def render(results: dict, manifest: dict, args, build_s: float, frames: int, every: int) -> str:
    """The RESULTS.md section."""
    policy = manifest["policy"]
    stages = manifest["stages"]
    cascade = results["cascade"]
    lines = [
        BEGIN,
        "## Cascade on harder digits (`benchmarks/cascade.py`)",
        "",
        f"- date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, "
        f"Python {platform.python_version()}; build (teacher training, students, compile) "
        f"{build_s:.0f} s",
        f"- command: `python benchmarks/cascade.py --rounds {args.rounds} --rtt-ms {args.rtt_ms:g}"
        f" --jitter-ms {args.jitter_ms:g} --budget-ms {args.budget_ms:g} --epochs {args.epochs}`",
        f"- data: harder digits ({frames} validation frames, 32x32 float32; "
        f"{every // frames} bytes per forwarded request); budget {args.budget_ms:g} ms at p99; "
        f"link: RTT {args.rtt_ms:g} ms in the descriptor, injected on loopback as "
        f"{args.rtt_ms:g} ms + exponential jitter of mean {args.jitter_ms:g} ms",
        "- device and gateway are this machine (shared, 2 cores, noisy); the device stages "
        "are x86 latencies, not a Raspberry Pi's. Medians over "
        f"{args.rounds} interleaved rounds.",
        "",
        "| stage | tier | MACs | accuracy (val) | p50 / p99 ms (compile) | threshold |",
        "|---|---|---:|---:|---|---:|",
    ]
    for s in stages:
        lat = s["latency_ms"]
        threshold = s.get("threshold")
        lines.append(
            f"| {s['name']} | {s['tier']} | {s['macs']:,} | {_pct(s['accuracy'])} | "
            f"{lat['p50']:.3f} / {lat['p99']:.3f} | "
            f"{'—' if threshold is None else f'{threshold:.3f}'} |"
        )
    lines += [
        "",
        "Per tier, in the cascade run:",
        "",
        "| tier | share answered | accuracy | mean ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for tier in ("device", "gateway"):
        t = cascade[tier]
        lines.append(
            f"| {tier} | {_pct(t['share'])} | {_pct(t['accuracy'])} | {_ms(t['mean_ms'])} | "
            f"{_ms(t['p99_ms'])} |"
        )
    lines += [
        "",
        "Overall, against the baselines measured in the same run:",
        "",
        "| run | accuracy | mean ms | p99 ms | within budget | bytes sent | bandwidth saved |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in ARMS:
        r = results[arm]
        lines.append(
            f"| {arm} | {_pct(r['accuracy'])} | {_ms(r['mean_ms'])} | {_ms(r['p99_ms'])} | "
            f"{_pct(r['within'])} | {int(r['bytes']):,} | {_pct(r['saved'])} |"
        )
    lines += [
        "",
        f"The planner promised {_pct(policy['expected_accuracy'])} accuracy, "
        f"{policy['expected_latency_ms']:.2f} ms expected latency and "
        f"{_pct(policy['offload_rate'])} offloaded (p99 "
        f"{policy['latency_ms']['p99']:.2f} ms, {_pct(policy['within_budget'])} within budget, "
        f"validation split). The seed case study reported 92% of frames within budget and 70% "
        "bandwidth saved.",
        END,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Build, stream the three arms in rounds, and write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--jitter-ms", type=float, default=4.0)
    parser.add_argument("--budget-ms", type=float, default=40.0)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--task", choices=("classification", "detection"), default="classification")
    parser.add_argument("--det-student", type=float, default=0.3, help="detection: MAC ratio")
    args = parser.parse_args()
    if args.task == "detection":
        from detection_cascade import run_detection

        run_detection(args, lambda section, begin, end: write_section(section, begin, end, RESULTS))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle, manifest, build_s = build_bundle(work, args)
        x, y = np.load(work / "hard_digits.npz")["x"], np.load(work / "hard_digits.npz")["y"]
        data = split(str(work / "hard_digits.npz"), x, y)
        frames = [sample[None] for sample in data.x_val]
        tiers = {s["name"]: s["tier"] for s in manifest["stages"]}
        results, every = run_arms(
            bundle,
            work,
            args,
            frames,
            (stream, gateway_only),
            lambda answers, every: summarise(answers, data.y_val, args.budget_ms, every, tiers),
            lambda row: f"acc {100 * row['accuracy']:.2f}%",
        )
    section = render(results, manifest, args, build_s, len(frames), every)
    print(section)
    if not args.no_write:
        write_section(section, BEGIN, END, RESULTS)


if __name__ == "__main__":
    main()
