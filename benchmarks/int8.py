"""FP32 vs edgec's INT8 vs ONNX Runtime's plain ``quantize_static`` defaults, in one run.

For the four benchmark models (resnet18, mobilenet_v2, mobilenet_v3_small, efficientnet_b0:
random weights, recalibrated BatchNorm; not part of the repository, read from ``--models-dir``
and skipped without it) and the example digits teacher, this script:

1. canonicalises the model as ``edgec compile`` does (the FP32 baseline is that model);
2. lets edgec decide, exactly as ``edgec compile --precision auto -t host`` does for a stage
   (:func:`edgec.compiler.int8.precision.decide_precision`: calibration, the host flavour search,
   the accuracy guard, the speed check) and keeps both its choice and the INT8 model it
   considered;
3. quantizes the same canonical model with ``onnxruntime.quantization.quantize_static`` and
   nothing but its defaults (QDQ, int8 activations and weights, per-tensor, MinMax, no
   pre-processing) on the same calibration inputs;
4. times FP32, ORT-default INT8 and edgec's INT8 with ONNX Runtime (CPU, 2 threads, batch 1,
   level ``all``, a thread pool that does not spin: the generated runtime's settings)
   interleaved in one process, in ``--rounds`` rounds; quotes the median of the
   rounds' medians and the best round's median;
5. runs all three on the evaluation inputs and reports the logits' SQNR against FP32 and the
   top-1 agreement (noisy on random-weight models: reported, not judged);
6. relates each INT8 latency to this machine's INT8 peak (~2,050 GOP/s on 2 threads, VNNI
   micro-kernel, RECIPES.md) and FP32 to its FP32 peak (~518 GFLOP/s).

Data: for the 224x224 models, natural photos shipped with scikit-image (``skimage.data``:
astronaut, chelsea, coffee, rocket, hubble_deep_field, immunohistochemistry, retina, and the
grey camera, coins, moon, grass, gravel, brick, clock replicated to RGB), cut into random square
crops of 30-100% of the short side, resized to 224x224, randomly flipped, ImageNet-normalised:
300 calibration crops (seed 1) and 500 different evaluation crops (seed 2). For the teacher,
``--data digits``: calibration from its training split, evaluation on its 450 validation
samples (with labels, so the teacher also reports accuracy).

Usage::

    python benchmarks/int8.py --models-dir DIR [--models resnet18 teacher ...] [--rounds 7]
        [--seconds 2] [--no-write]

Writes its section of ``benchmarks/RESULTS.md`` (between ``<!-- int8:begin -->`` and
``<!-- int8:end -->``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import logging
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
import onnxruntime as ort

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.int8.accuracy_guard import sqnr_db
from edgec.compiler.int8.precision import PrecisionOptions, decide_precision
from edgec.compiler.loading import load_model
from edgec.compiler.planning.cost_model import total_macs
from edgec.data import Dataset, load_dataset
from edgec.passes.quantize import ArrayCalibrationReader
from edgec.targets import load_target
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
BEGIN, END = "<!-- int8:begin -->", "<!-- int8:end -->"
INT8_PEAK_GOPS = 2050.0
FP32_PEAK_GFLOPS = 518.0
THREADS = 2
PATHS = ("fp32", "ort-default", "edgec-int8")


@dataclass
class PathResult:
    """One way of running one model."""

    p50_ms: float
    best_ms: float
    sqnr_db: float | None
    agreement: float | None
    accuracy: float | None = None


@dataclass
class Row:
    """One model's measurements."""

    name: str
    macs: int
    eval_samples: int
    paths: dict[str, PathResult] = field(default_factory=dict)
    choice: str = "fp32"
    flavour: str = "—"
    fp32_layers: int = 0
    reason: str = ""
    guard: str = ""
    quantize_s: float = 0.0


def natural_images(count: int, seed: int) -> np.ndarray:
    """Random crops of scikit-image's bundled photos, 224x224, ImageNet-normalised, NCHW."""
    from skimage import data as photos

    colour = [
        photos.astronaut(),
        photos.chelsea(),
        photos.coffee(),
        photos.rocket(),
        photos.hubble_deep_field(),
        photos.immunohistochemistry(),
        photos.retina(),
    ]
    grey = [photos.camera(), photos.coins(), photos.moon(), photos.grass(), photos.gravel()]
    grey += [photos.brick(), photos.clock()]
    sources = colour + [np.stack([g] * 3, axis=-1) for g in grey]
    return photo_crops(sources, count, seed)


def photo_dataset() -> Dataset:
    """300 calibration and 500 evaluation crops, no labels."""
    calib, evaluation = natural_images(300, seed=1), natural_images(500, seed=2)
    digest = hashlib.sha256(calib.tobytes() + evaluation.tobytes()).hexdigest()
    return Dataset("skimage-photos", calib, None, evaluation, None, digest)


def ort_default(model: onnx.ModelProto, calib: np.ndarray, work: Path) -> onnx.ModelProto:
    """``quantize_static`` with every option at its default, on the same calibration inputs."""
    from onnxruntime.quantization import quantize_static

    source, out = work / "ortdef_in.onnx", work / "ortdef.onnx"
    onnx.save_model(model, source)
    input_name = next(i.name for i in model.graph.input)
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # its "consider pre-processing" warnings
    try:
        quantize_static(str(source), str(out), ArrayCalibrationReader(input_name, calib))
    finally:
        root.setLevel(level)
    return onnx.load(out)


def _runner(model: onnx.ModelProto, path: Path) -> OrtRunner:
    onnx.save_model(model, path)
    return OrtRunner(path, threads=THREADS, level="all")


def _logits(runner: OrtRunner, x: np.ndarray) -> np.ndarray:
    name = runner.input_names[0]
    return np.concatenate([runner.run({name: x[i : i + 1]})[0] for i in range(len(x))])


def measure(name: str, model: onnx.ModelProto, data: Dataset, args, work: Path) -> Row:
    """Decide, quantize, evaluate and time one model."""
    row = Row(name, total_macs(model), len(data.x_val))
    started = time.perf_counter()
    options = PrecisionOptions(requested="auto", compare_seconds=3.0)
    decision = decide_precision(
        model, load_target("host"), "onnxruntime", data, options, stage=name
    )
    models = {"fp32": model, "ort-default": ort_default(model, data.x_train, work)}
    if decision.int8_model is not None:
        models["edgec-int8"] = decision.int8_model
    row.quantize_s = time.perf_counter() - started
    row.choice = "edgec-int8" if decision.precision == "int8" else "fp32"
    row.flavour = decision.int8_flavour.name if decision.int8_flavour else "—"
    row.fp32_layers = len(decision.fp32_layers) if decision.precision == "int8" else 0
    row.reason = decision.reason
    row.guard = decision.verdict.summary() if decision.verdict else "—"
    runners = {key: _runner(m, work / f"{name}-{key}.onnx") for key, m in models.items()}
    outputs = {key: _logits(r, data.x_val) for key, r in runners.items()}
    feeds = {runners["fp32"].input_names[0]: np.ascontiguousarray(data.x_val[:1])}
    rounds: dict[str, list[float]] = {key: [] for key in runners}
    for _ in range(args.rounds):
        stats = interleaved_latency(runners, feeds, seconds=args.seconds)
        for key, value in stats.items():
            rounds[key].append(value.p50)
    reference = outputs["fp32"]
    for key in runners:
        top = outputs[key].reshape(len(reference), -1).argmax(axis=1)
        accuracy = None
        if data.y_val is not None:
            accuracy = float((top == data.y_val).mean())
        row.paths[key] = PathResult(
            p50_ms=statistics.median(rounds[key]),
            best_ms=min(rounds[key]),
            sqnr_db=None if key == "fp32" else sqnr_db(reference, outputs[key]),
            agreement=None if key == "fp32" else float((top == reference.argmax(axis=1)).mean()),
            accuracy=accuracy,
        )
    return row


def _fmt(value: float | None, pattern: str) -> str:
    return "—" if value is None else format(value, pattern)


def section(rows: list[Row], command: str, seconds: float, loads: tuple[float, float]) -> str:
    """The RESULTS.md section."""
    lines = [
        BEGIN,
        "## INT8: FP32 vs edgec vs ONNX Runtime defaults (`benchmarks/int8.py`)",
        "",
        f"- Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores with AVX-512 VNNI (shared, noisy), Python "
        f"{platform.python_version()}, onnxruntime {ort.__version__}; wall time {seconds:.0f} s; "
        f"1-minute load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end (other "
        "engineers' jobs share the 2 cores: absolute times and % of peak suffer, ratios of "
        "interleaved paths much less).",
        f"- Command: `{command}`",
        "- Models: the four benchmark models (`--models-dir`: random weights, recalibrated "
        "BatchNorm) and `examples/digits/teacher.onnx`, each canonicalised as `edgec compile` "
        "does.",
        "- Data: 224x224 models — random crops of scikit-image's bundled photos, resized, "
        "flipped, ImageNet-normalised (300 calibration crops, 500 other evaluation crops, no "
        "labels); teacher — `--data digits` (calibration from the training split, evaluation on "
        "the 450 validation samples, with labels).",
        "- Paths: **fp32** the canonical model; **ort-default** `quantize_static(model, out, "
        "reader)` with all defaults (QDQ, s8 activations, s8 per-tensor weights, MinMax, no "
        "pre-processing); **edgec-int8** the INT8 model `decide_precision` (what `edgec compile "
        "--precision auto -t host` runs per stage) settled on. **choice** is what edgec ships: "
        "edgec-int8, or fp32 when INT8 was not faster or missed the accuracy guard.",
        "- Latency: ONNX Runtime CPU, 2 threads, batch 1, level `all`, no spinning thread pool "
        "(what the generated runtime runs; edgec times the same way); all paths interleaved in "
        "one process; each round times every path (`interleaved_latency`); `ms` is the median "
        "of the rounds' medians, `best` the fastest round's median. Ratio = FP32 ms / path ms "
        "(>1 is faster). % of peak: 2 x MACs / latency against ~2,050 GOP/s INT8 (VNNI) or "
        "~518 GFLOP/s FP32 on 2 threads (RECIPES.md).",
        "- SQNR: 10 log10(sum fp32² / sum (path - fp32)²) of the logits over all evaluation "
        "inputs; agreement: top-1 equal to FP32's (random-weight models have near-tied logits, "
        "so agreement is noisy there: reported, not gated).",
        "",
        "| model | GMACs | path | ms | best ms | ratio | SQNR dB | top-1 agree | accuracy "
        "| % of peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fp32 = r.paths["fp32"]
        for key in PATHS:
            if key not in r.paths:
                continue
            p = r.paths[key]
            peak = INT8_PEAK_GOPS if key != "fp32" else FP32_PEAK_GFLOPS
            share = 2 * r.macs / (p.p50_ms / 1e3) / (peak * 1e9) * 100
            label = f"**{key}** (choice)" if key == r.choice else key
            lines.append(
                f"| {r.name} | {r.macs / 1e9:.3f} | {label} | {p.p50_ms:.3f} | {p.best_ms:.3f} "
                f"| {fp32.p50_ms / p.p50_ms:.2f} | {_fmt(p.sqnr_db, '.1f')} "
                f"| {_fmt(p.agreement, '.3f')} | {_fmt(p.accuracy, '.4f')} | {share:.0f}% |"
            )
    lines += ["", "edgec's decisions:", ""]
    for r in rows:
        layers = f", {r.fp32_layers} layers kept FP32" if r.fp32_layers else ""
        lines.append(
            f"- **{r.name}**: ships {r.choice} (INT8 flavour considered: {r.flavour}{layers}; "
            f"decision took {r.quantize_s:.0f} s): {r.reason}"
            + ("" if "guard" in r.reason else f"; guard: {r.guard}")
            + "."
        )
    shared = [r for r in rows if r.name in BENCHMARK_MODELS]
    if shared:
        faster = [r.name for r in shared if r.paths[r.choice].p50_ms < r.paths["fp32"].p50_ms]
        slower = [
            r.name for r in shared if r.paths[r.choice].p50_ms > r.paths["fp32"].p50_ms * 1.02
        ]
        below = [
            r.name
            for r in shared
            if r.choice != "fp32" and r.paths["edgec-int8"].sqnr_db < r.paths["ort-default"].sqnr_db
        ]
        lines += [
            "",
            "Goals on the four benchmark models:",
            "",
            f"- edgec's choice never slower than FP32 (>2% slower: {', '.join(slower) or 'none'}).",
            f"- faster than FP32 on at least three: {len(faster)} ({', '.join(faster) or 'none'}).",
            "- SQNR at or above ONNX Runtime's defaults wherever edgec ships INT8 (an FP32 "
            f"choice reproduces FP32 exactly): below on {', '.join(below) or 'none'}.",
        ]
    lines += [END, ""]
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and write its section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*BENCHMARK_MODELS, "teacher"])
    add_models_dir(parser)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0, help="per round")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    photos = None
    rows = []
    paths = find_models(args.models_dir, [n for n in args.models if n != "teacher"])
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            if name == "teacher":
                model, data = canonicalize(load_model(TEACHER, {}).proto), load_dataset("digits")
            elif name in paths:
                photos = photos or photo_dataset()
                model, data = canonicalize(load_model(paths[name], {}).proto), photos
            else:  # not found: find_models has said so
                continue
            row = measure(name, model, data, args, Path(tmp))
            print(
                f"{name}: "
                + ", ".join(
                    f"{k} {p.p50_ms:.3f} ms SQNR {_fmt(p.sqnr_db, '.1f')}"
                    for k, p in row.paths.items()
                )
                + f"; ships {row.choice} ({row.flavour}): {row.reason}",
                flush=True,
            )
            rows.append(row)
    if not rows:
        print("nothing measured: RESULTS.md left as it is")
        return
    command = recorded_command("int8.py", sys.argv[1:], args.models_dir)
    loads = (load_start, os.getloadavg()[0])
    text = section(rows, command.strip(), time.perf_counter() - started, loads)
    print(text)
    if not args.no_write:
        write_section(text, BEGIN, END, RESULTS)


if __name__ == "__main__":
    main()
