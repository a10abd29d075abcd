"""ONNX Runtime vs LiteRT, FP32 and INT8, side by side per model, and what ``auto`` would ship.

For the four benchmark models (resnet18, mobilenet_v2, mobilenet_v3_small, efficientnet_b0:
random weights, recalibrated BatchNorm; not part of the repository, read from ``--models-dir``
and skipped without it) and the example digits teacher, this script:

1. canonicalises the model as ``edgec compile`` does (FP32 is that model);
2. quantizes it as edgec does for an ARM board (s8s8, per-channel weights: pre-processing,
   MinMax calibration on the calibration inputs, Q/DQ) — one INT8 model that both runtimes
   run, so the comparison is between runtimes, not quantizers;
3. converts FP32 and INT8 to ``.tflite`` with edgec's converter
   (:mod:`edgec.targets.litert.convert`; INT8 full-integer, float I/O);
4. checks the conversion: LiteRT FP32 against ONNX Runtime FP32 (max |difference| relative to
   the output's largest magnitude), within ``FP32_TOLERANCE`` or, for a model whose FP32
   outputs are that sensitive to rounding, within twice ONNX Runtime's own disagreement
   between its optimisation levels ``all`` and ``disabled`` on the same inputs (random-weight
   EfficientNet-B0 on photos reaches logits of ~1,500, and ORT differs from itself by ~4e-3
   there); each INT8 path's logits SQNR and top-1 agreement against FP32, and LiteRT INT8's
   agreement with ONNX Runtime INT8;
5. times the four paths (ort-fp32, ort-int8, litert-fp32, litert-int8) interleaved in one
   process, 2 threads, batch 1, in ``--rounds`` rounds (median of the rounds' medians);
6. runs ``--backend auto``'s choice per precision with edgec's own ``build_stage`` (what
   ``edgec compile -t host`` runs): each backend builds the stage and is timed with edgec's
   measurement policy, twice in opposite orders; the lower p99 ships; reported against the
   interleaved medians (the goal: never more than 5% slower than the faster of the two).

Data: for the 224x224 models, random crops of scikit-image's bundled photos (as
``benchmarks/int8.py``): ``--calib`` calibration crops (seed 1), ``--eval`` other evaluation
crops (seed 2); for the teacher, ``--data digits``.

Usage::

    python benchmarks/litert.py --models-dir DIR [--models resnet18 teacher ...] [--rounds 7]
        [--seconds 2] [--accuracy-only] [--no-write]

``--accuracy-only`` skips all timing (conversion checks only). Writes its section of
``benchmarks/RESULTS.md`` (between ``<!-- litert:begin -->`` and ``<!-- litert:end -->``)
unless ``--no-write`` or ``--accuracy-only``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgec.compiler.backend_choice import build_stage, primary_backend
from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.int8.accuracy_guard import sqnr_db
from edgec.compiler.loading import load_model
from edgec.compiler.planning.cost_model import total_macs
from edgec.compiler.progress import Reporter
from edgec.config import CompileConfig
from edgec.data import load_dataset
from edgec.passes.quantize import Int8Flavour, calibrate, preprocess, quantize_model
from edgec.targets import load_target
from edgec.targets.litert.convert import convert
from edgec.targets.litert.runner import LiteRtRunner
from edgec.targets.onnxruntime.backend import OrtRunner
from edgec.targets.onnxruntime.timing import interleaved_latency

REPO = Path(__file__).resolve().parent.parent
TEACHER = REPO / "examples" / "digits" / "teacher.onnx"
from bench_models import (  # noqa: E402  (benchmarks/ is the script's folder)
    BENCHMARK_MODELS,
    add_models_dir,
    find_models,
    photo_crops,
    recorded_command,
)
from results_md import write_section  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- litert:begin -->", "<!-- litert:end -->"
THREADS = 2
PATHS = ("ort-fp32", "ort-int8", "litert-fp32", "litert-int8")
#: LiteRT FP32 must match ONNX Runtime FP32 to this share of the output's largest magnitude.
FP32_TOLERANCE = 1e-4
AUTO_SLACK = 1.05


@dataclass
class Row:
    """One model's measurements."""

    name: str
    macs: int
    eval_samples: int
    fp32_diff: float = 0.0
    ort_floor: float = 0.0
    fp32_agree: float = 0.0
    sqnr: dict[str, float] = field(default_factory=dict)
    agree: dict[str, float] = field(default_factory=dict)
    int8_agree_ort: float = 0.0
    fully_integer: bool = False
    p50: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    auto: dict[str, str] = field(default_factory=dict)


def photos(count: int, seed: int) -> np.ndarray:
    """Random crops of scikit-image's bundled photos, 224x224, ImageNet-normalised, NCHW."""
    from skimage import data as pictures

    colour = [pictures.astronaut(), pictures.chelsea(), pictures.coffee(), pictures.rocket()]
    colour += [pictures.hubble_deep_field(), pictures.immunohistochemistry(), pictures.retina()]
    grey = [pictures.camera(), pictures.coins(), pictures.moon(), pictures.grass()]
    grey += [pictures.gravel(), pictures.brick(), pictures.clock()]
    return photo_crops(colour + [np.stack([g] * 3, axis=-1) for g in grey], count, seed)


def _logits(runner, x: np.ndarray) -> np.ndarray:
    name = runner.input_names[0]
    return np.concatenate([runner.run({name: x[i : i + 1]})[0] for i in range(len(x))])


def _top1(y: np.ndarray) -> np.ndarray:
    return y.reshape(len(y), -1).argmax(axis=1)


def auto_choice(path: Path, precision: str, work: Path, seconds: float) -> tuple[str, dict]:
    """What ``--backend auto`` on this machine ships for a stage: edgec's own
    :func:`~edgec.compiler.backend_choice.build_stage` builds it with every host candidate,
    times each (twice, in opposite orders) and keeps the lower p99."""
    host = load_target("host")
    config = CompileConfig(
        model=path, target="host", output=work, backend="auto", measure_seconds=seconds
    )
    work.mkdir(parents=True, exist_ok=True)
    build = build_stage(
        "stage", onnx.load(path), precision, work, path, host, host,
        primary_backend(host, config), config, Reporter(quiet=True),
    )  # fmt: skip
    p99 = {
        name: entry["latency_ms"]["p99"]
        for name, entry in build.candidates.items()
        if "latency_ms" in entry
    }
    return build.backend.name, p99


def measure(name: str, model: onnx.ModelProto, x_cal, x_val, args, work: Path) -> Row:
    """Quantize, convert, check and time one model."""
    row = Row(name, total_macs(model), len(x_val))
    pre = preprocess(model)
    table = calibrate(pre, x_cal, "minmax", name)
    qdq = quantize_model(pre, table, Int8Flavour("int8", per_channel=True))
    paths = {"fp32": work / f"{name}-fp32.onnx", "int8": work / f"{name}-int8.onnx"}
    onnx.save_model(model, paths["fp32"])
    onnx.save_model(qdq, paths["int8"])
    runners = {}
    for precision, source in (("fp32", model), ("int8", qdq)):
        tflite = work / f"{name}-{precision}.tflite"
        data = convert(source)
        tflite.write_bytes(data)
        if precision == "int8":
            from edgec.targets.litert.backend import integer_report

            row.fully_integer = integer_report(data)["fully_integer"]
        # Exact integer products: what LiteRT and an ARM board compute.
        runners[f"ort-{precision}"] = OrtRunner(
            paths[precision], threads=THREADS, level="all", exact_int8=precision == "int8"
        )
        runners[f"litert-{precision}"] = LiteRtRunner(tflite, threads=THREADS)
    outputs = {key: _logits(r, x_val) for key, r in runners.items()}
    reference = outputs["ort-fp32"]
    scale = max(float(np.abs(reference).max()), 1e-12)
    row.fp32_diff = float(np.abs(outputs["litert-fp32"] - reference).max()) / scale
    unoptimised = _logits(OrtRunner(paths["fp32"], threads=THREADS, level="disabled"), x_val)
    row.ort_floor = float(np.abs(unoptimised - reference).max()) / scale
    row.fp32_agree = float((_top1(outputs["litert-fp32"]) == _top1(reference)).mean())
    for key in ("ort-int8", "litert-int8"):
        row.sqnr[key] = sqnr_db(reference, outputs[key])
        row.agree[key] = float((_top1(outputs[key]) == _top1(reference)).mean())
    row.int8_agree_ort = float((_top1(outputs["litert-int8"]) == _top1(outputs["ort-int8"])).mean())
    if args.accuracy_only:
        return row
    feeds = {runners["ort-fp32"].input_names[0]: np.ascontiguousarray(x_val[:1])}
    rounds: dict[str, list[float]] = {key: [] for key in runners}
    for _ in range(args.rounds):
        stats = interleaved_latency(runners, feeds, seconds=args.seconds)
        for key, value in stats.items():
            rounds[key].append(value.p50)
    row.p50 = {k: statistics.median(v) for k, v in rounds.items()}
    row.best = {k: min(v) for k, v in rounds.items()}
    for precision in ("fp32", "int8"):
        chosen, _ = auto_choice(paths[precision], precision, work / precision, args.seconds)
        row.auto[precision] = chosen
    return row


def fp32_ok(row: Row) -> bool:
    """Within the tolerance, or within twice ORT's own level-to-level disagreement."""
    return row.fp32_diff <= max(FP32_TOLERANCE, 2 * row.ort_floor)


def _auto_ratio(row: Row, precision: str) -> float:
    """auto's choice's interleaved median over the faster of the two."""
    key = {"onnxruntime": "ort", "litert": "litert"}[row.auto[precision]]
    chosen = row.p50[f"{key}-{precision}"]
    return chosen / min(row.p50[f"ort-{precision}"], row.p50[f"litert-{precision}"])


def section(rows: list[Row], command: str, seconds: float, loads: tuple[float, float]) -> str:
    """The RESULTS.md section."""
    import ai_edge_litert
    import onnxruntime as ort

    lines = [
        BEGIN,
        "## LiteRT vs ONNX Runtime, FP32 and INT8 (`benchmarks/litert.py`)",
        "",
        f"- Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores (shared), Python {platform.python_version()}, onnxruntime "
        f"{ort.__version__}, ai-edge-litert {getattr(ai_edge_litert, '__version__', '2.3.0')} "
        f"(XNNPACK); wall time {seconds:.0f} s; 1-minute load average {loads[0]:.1f} at the "
        f"start, {loads[1]:.1f} at the end.",
        f"- Command: `{command}`",
        "- INT8: one Q/DQ model per network (s8s8, per-channel weights, MinMax), run by ONNX "
        "Runtime (exact integer products) and, converted to a full-integer `.tflite` with float "
        "I/O, by LiteRT.",
        f"- FP32 check: max |LiteRT - ORT| / max |ORT| over the evaluation inputs; tolerance "
        f"{FP32_TOLERANCE:g}, or twice ORT's own difference between its levels `all` and "
        "`disabled` (ORT floor) where that is larger. INT8: logits SQNR and top-1 agreement "
        "against ORT FP32 (random-weight models have near-tied logits: reported, not gated), "
        "and LiteRT INT8's top-1 agreement with ORT INT8.",
        "- Latency: 2 threads, batch 1, the four paths interleaved in one process; ms = median "
        "of the rounds' medians. auto: what `--backend auto -t host` ships per precision "
        "(edgec's own build_stage: each backend built and timed twice, lower p99), and its "
        f"interleaved median over the faster one's (goal: at most {AUTO_SLACK:g}).",
        "",
        "| model | GMACs | FP32 diff (ORT floor), top-1 agree | INT8 full-integer "
        "| SQNR ort/litert dB | top-1 agree ort/litert | litert=ort INT8 | "
        + " | ".join(f"{p} ms" for p in PATHS)
        + " | auto fp32 "
        "| auto int8 |",
        "|---|---|---|---|---|---|---|" + "---|" * len(PATHS) + "---|---|",
    ]
    for r in rows:
        times = " | ".join(f"{r.p50[p]:.3f}" if r.p50 else "—" for p in PATHS)
        autos = [
            f"{r.auto[p]} ({_auto_ratio(r, p):.2f})" if r.auto else "—" for p in ("fp32", "int8")
        ]
        lines.append(
            f"| {r.name} | {r.macs / 1e9:.3f} | {r.fp32_diff:.1e} ({r.ort_floor:.1e}), "
            f"{r.fp32_agree:.3f} | "
            f"{r.fully_integer} | "
            f"{r.sqnr['ort-int8']:.1f}/{r.sqnr['litert-int8']:.1f} | "
            f"{r.agree['ort-int8']:.3f}/{r.agree['litert-int8']:.3f} | {r.int8_agree_ort:.3f} | "
            f"{times} | {autos[0]} | {autos[1]} |"
        )
    worst = max((_auto_ratio(r, p) for r in rows if r.auto for p in ("fp32", "int8")), default=0)
    over = [r.name for r in rows if not fp32_ok(r)]
    lines += [
        "",
        f"- FP32 outputs within {FP32_TOLERANCE:g} (or twice the ORT floor): "
        + ("all." if not over else f"not {', '.join(over)}."),
        f"- auto's choice at most {AUTO_SLACK:g}x the faster: worst {worst:.2f}.",
        END,
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and write its section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*BENCHMARK_MODELS, "teacher"])
    add_models_dir(parser)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0, help="per round")
    parser.add_argument("--calib", type=int, default=100, help="calibration crops")
    parser.add_argument("--eval", type=int, default=200, help="evaluation crops")
    parser.add_argument("--accuracy-only", action="store_true", help="no timing, no section")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    crops = None
    rows = []
    found = find_models(args.models_dir, [n for n in args.models if n != "teacher"])
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            if name == "teacher":
                digits = load_dataset("digits")
                model = canonicalize(load_model(TEACHER, {}).proto)
                x_cal, x_val = digits.x_train[: args.calib], digits.x_val[: args.eval]
            elif name in found:
                crops = crops or (photos(args.calib, 1), photos(args.eval, 2))
                model = canonicalize(load_model(found[name], {}).proto)
                x_cal, x_val = crops
            else:  # not found: find_models has said so
                continue
            row = measure(name, model, x_cal, x_val, args, Path(tmp))
            print(
                f"{name}: FP32 diff {row.fp32_diff:.1e} (ORT floor {row.ort_floor:.1e}, "
                f"{'ok' if fp32_ok(row) else 'OVER'}, top-1 agree {row.fp32_agree:.3f}); "
                f"INT8 full-integer {row.fully_integer}, "
                f"SQNR ort {row.sqnr['ort-int8']:.1f} litert {row.sqnr['litert-int8']:.1f} dB, "
                f"top-1 agree ort {row.agree['ort-int8']:.3f} litert "
                f"{row.agree['litert-int8']:.3f}, litert=ort INT8 {row.int8_agree_ort:.3f}"
                + (
                    "; "
                    + ", ".join(f"{k} {v:.3f} ms" for k, v in row.p50.items())
                    + f"; auto {row.auto}"
                    if row.p50
                    else ""
                ),
                flush=True,
            )
            rows.append(row)
    if not rows:
        print("nothing measured: RESULTS.md left as it is")
        return
    if args.accuracy_only:
        return
    command = recorded_command("litert.py", sys.argv[1:], args.models_dir)
    loads = (load_start, os.getloadavg()[0])
    text = section(rows, command.strip(), time.perf_counter() - started, loads)
    print(text)
    if not args.no_write:
        write_section(text, BEGIN, END, RESULTS)


if __name__ == "__main__":
    main()
