"""The detection cascade on ``--data digits-detect``: the seed's table, for a detector.

``python benchmarks/cascade.py --task detection`` runs this (see its ``--help``). All real, all
on this machine:

1. ``compile_model`` of ``examples/digits-detect/teacher.onnx`` with ``--data digits-detect``
   and one student (``--det-student`` of the teacher's MACs, pruned and distilled) for a
   loopback target whose gateway is this machine over a link of ``--rtt-ms``; budget
   ``--budget-ms`` at p99;
2. the generated gateway (``edgec serve``) behind the tests' proxy that injects the RTT plus
   exponential jitter;
3. the 600 validation frames (about half without any digit) streamed through the generated
   device runtime, in interleaved rounds: the **cascade**, **device only** (no gateway: the
   student answers every frame) and **gateway only** (every frame sent to the teacher and
   waited for).

Per tier: the share of frames it answered, its mAP@0.5 on those frames, mean and p99 latency;
overall: mAP@0.5 (faster-coco-eval), latency, share within the budget, bytes sent and bandwidth
saved against sending every frame, and the share of the empty frames the device answered. Each
figure is the median over the rounds. Goals (issue 19): empty frames answered on the device,
mAP within 1 point of gateway-only, at least 70% bandwidth saved.
"""

from __future__ import annotations

import datetime
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from cascade import ARMS, _ms, _pct, _test_helpers, run_arms

from edgec.compiler import compile_model
from edgec.compiler.detection.metrics import mean_average_precision
from edgec.config import CompileConfig
from edgec.data import load_dataset
from edgec.runtime import detection

HERE = Path(__file__).resolve().parent
TEACHER = HERE.parent / "examples" / "digits-detect" / "teacher.onnx"
BEGIN, END = "<!-- cascade-detection:begin -->", "<!-- cascade-detection:end -->"


def build_bundle(work: Path, args) -> tuple[Path, dict, float]:
    """Compile the example detector into a cascade for the loopback target."""
    _, helpers = _test_helpers()
    started = time.perf_counter()
    result = compile_model(
        CompileConfig(
            model=TEACHER,
            target=str(helpers.write_loopback_target(work, args.rtt_ms)),
            output=work / "bundle",
            budget_ms=args.budget_ms,
            data="digits-detect",
            students=(args.det_student,),
            distill_epochs=args.epochs,
            measure_seconds=3.0,
        )
    )
    return result.bundle, result.manifest, time.perf_counter() - started


def _answer(stage: str, row, ms: float, sent: int) -> dict:
    boxes, scores, classes, _ = detection.unpack(row)
    return {"stage": stage, "dets": (boxes, scores, classes), "ms": ms, "bytes": sent}


def stream(device, bundle: Path, url: str | None, frames: list) -> list[dict]:
    """The cascade (``url`` given) or the device stage alone (``url`` None), per frame."""
    logger = device.observability.json_logger("bench.detect", logging.WARNING)
    with device.DeviceRuntime(bundle, gateway_url=url, logger=logger) as runtime:
        return [
            {
                "stage": a.stage,
                "dets": (a.boxes, a.scores, a.classes),
                "ms": a.latency_ms,
                "bytes": a.bytes_sent,
            }
            for a in (runtime.infer(x) for x in frames)
        ]


def gateway_only(device, url: str, frames: list) -> list[dict]:
    """Every frame sent to the gateway and waited for (up to 1 s)."""
    client = device.GatewayClient(url, "bench", retry_after_s=0.0)
    answers = []
    for x in frames:
        started = time.perf_counter()
        try:
            stage, row, sent = client.infer(x, 1000.0)
        except device.OffloadError as err:
            stage, row, sent = "lost", np.full((1, 1), -1.0, np.float32), err.sent
        answers.append(_answer(stage, row, (time.perf_counter() - started) * 1000.0, sent))
    return answers


def summarise(answers, truth, budget: float, every: int, tiers: dict) -> dict:
    """Overall and per-tier figures of one streamed run."""
    boxes, classes = truth
    ms = np.array([a["ms"] for a in answers])
    sent = sum(a["bytes"] for a in answers)
    empty = (classes < 0).all(axis=1)
    on_device = np.array([tiers.get(a["stage"]) == "device" for a in answers])
    row = {
        "map50": mean_average_precision([a["dets"] for a in answers], boxes, classes),
        "mean_ms": float(ms.mean()),
        "p99_ms": float(np.percentile(ms, 99)),
        "within": float((ms <= budget).mean()),
        "bytes": sent,
        "saved": 1 - sent / every,
        "empty_on_device": float(on_device[empty].mean()),
    }
    for tier in ("device", "gateway"):
        mask = np.array([tiers.get(a["stage"]) == tier for a in answers])
        picked = [a["dets"] for a, m in zip(answers, mask, strict=True) if m]
        has_objects = mask.any() and (classes[mask] >= 0).any()
        row[tier] = {
            "share": float(mask.mean()),
            "map50": (
                mean_average_precision(picked, boxes[mask], classes[mask]) if has_objects else None
            ),
            "mean_ms": float(ms[mask].mean()) if mask.any() else None,
            "p99_ms": float(np.percentile(ms[mask], 99)) if mask.any() else None,
        }
    return row


def render(results: dict, manifest: dict, args, build_s: float, frames: int, every: int) -> str:
    """The RESULTS.md section."""
    policy = manifest["policy"]
    det = policy["detection"]
    cascade = results["cascade"]
    lines = [
        BEGIN,
        "## Detection cascade on digits-detect (`benchmarks/cascade.py --task detection`)",
        "",
        f"- date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, "
        f"Python {platform.python_version()}; build (student, compile) {build_s:.0f} s",
        f"- command: `python benchmarks/cascade.py --task detection --rounds {args.rounds} "
        f"--rtt-ms {args.rtt_ms:g} --jitter-ms {args.jitter_ms:g} --budget-ms "
        f"{args.budget_ms:g} --epochs {args.epochs} --det-student {args.det_student:g}`",
        f"- data: digits-detect validation split ({frames} frames 64x64 float32, "
        f"{every // frames} bytes per forwarded request); budget {args.budget_ms:g} ms at p99; "
        f"link: RTT {args.rtt_ms:g} ms in the descriptor, injected on loopback as "
        f"{args.rtt_ms:g} ms + exponential jitter of mean {args.jitter_ms:g} ms",
        "- device and gateway are this machine; device latencies are x86, not a Raspberry "
        f"Pi's. Medians over {args.rounds} interleaved rounds; mAP@0.5 by faster-coco-eval.",
        "",
        "| stage | tier | MACs | mAP@0.5 (val) | p50 / p99 ms (compile) | low / high |",
        "|---|---|---:|---:|---|---|",
    ]
    for s in manifest["stages"]:
        lat = s["latency_ms"]
        t = det["thresholds"].get(s["name"])
        shown = "—" if t is None else f"{t['low']:.3f} / {min(t['high'], 1.0):.3f}"
        lines.append(
            f"| {s['name']} | {s['tier']} | {s['macs']:,} | {_pct(s['accuracy'])} | "
            f"{lat['p50']:.3f} / {lat['p99']:.3f} | {shown} |"
        )
    lines += [
        "",
        "Per tier, in the cascade run (mAP on the frames that tier answered):",
        "",
        "| tier | share answered | mAP@0.5 | mean ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for tier in ("device", "gateway"):
        t = cascade[tier]
        lines.append(
            f"| {tier} | {_pct(t['share'])} | {_pct(t['map50'])} | {_ms(t['mean_ms'])} | "
            f"{_ms(t['p99_ms'])} |"
        )
    lines += [
        "",
        "Overall, against the baselines measured in the same run:",
        "",
        "| run | mAP@0.5 | mean ms | p99 ms | within budget | bytes sent | bandwidth saved | "
        "empty frames on device |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in ARMS:
        r = results[arm]
        lines.append(
            f"| {arm} | {_pct(r['map50'])} | {_ms(r['mean_ms'])} | {_ms(r['p99_ms'])} | "
            f"{_pct(r['within'])} | {int(r['bytes']):,} | {_pct(r['saved'])} | "
            f"{_pct(r['empty_on_device'])} |"
        )
    gap = 100 * (results["gateway only"]["map50"] - cascade["map50"])
    lines += [
        "",
        f"Goals: empty frames answered on the device: {_pct(cascade['empty_on_device'])}; "
        f"mAP {abs(gap):.1f} points {'below' if gap > 0 else 'above'} gateway-only "
        "(goal: no more than 1 below); bandwidth saved "
        f"{_pct(cascade['saved'])} (goal: at least 70%). The planner promised mAP "
        f"{_pct(policy['expected_accuracy'])}, {_pct(policy['offload_rate'])} offloaded and "
        f"p99 {policy['latency_ms']['p99']:.2f} ms on the validation split.",
        END,
    ]
    return "\n".join(lines) + "\n"


def run_detection(args, write) -> str:
    """Build, stream the three arms in rounds; return the section (``write`` stores it)."""
    data = load_dataset("digits-detect")
    truth = (data.boxes_val, data.classes_val)
    frames = [sample[None] for sample in data.x_val]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle, manifest, build_s = build_bundle(work, args)
        tiers = {s["name"]: s["tier"] for s in manifest["stages"]}
        results, every = run_arms(
            bundle,
            work,
            args,
            frames,
            (stream, gateway_only),
            lambda answers, every: summarise(answers, truth, args.budget_ms, every, tiers),
            lambda row: f"mAP {100 * row['map50']:.2f}%",
        )
    section = render(results, manifest, args, build_s, len(frames), every)
    print(section)
    if not args.no_write:
        write(section, BEGIN, END)
    return section
