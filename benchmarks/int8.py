"""INT8 accuracy and speed: ONNX Runtime's quantization vs edgec before and after each technique.

Models: the four benchmark models (resnet18, mobilenet_v2, mobilenet_v3_small,
efficientnet_b0: random weights, recalibrated BatchNorm; read from ``--models-dir`` and skipped
without it), the example digits ``teacher``, and two models trained here on the harder digits
(``bench_models.train_hard_models``, seeded): ``hard-teacher`` and ``mobilenet-digits``, a
MobileNetV2-style CNN with depthwise convolutions. Each is canonicalised as ``edgec compile``
does; FP32 is that model.

Paths, all from the same calibration inputs (the guard's seeded subset of 300 training inputs):

* **ort-default** — ``quantize_static`` with every option at its default (QDQ, s8 activations,
  s8 per-tensor weights, MinMax, no pre-processing);
* **ort-u8s8** — ONNX Runtime's best u8s8 recipe for this CPU: ``quant_pre_process``, then
  ``quantize_static`` with u8 activations, s8 per-channel weights, and ``reduce_range`` (7-bit
  weights) on x86 without VNNI;
* **edgec** — edgec's quantization (``edgec.passes.quantize``) in the host's preferred flavour
  (u8s8 per-channel, 7-bit weights without VNNI), then with each technique added in turn:
  **+cle** (cross-layer equalization), **+cle+bc** (and bias correction), **+cle+adaround**
  (and AdaRound weight rounding), **+cle+adaround+bc** (all three);
* **edgec-choice** — what ``edgec compile --precision auto -t host`` ships for the stage
  (``decide_precision``: the host flavour search, the accuracy guard and its repair, the speed
  check): an INT8 model, or FP32; **edgec-int8** — the INT8 model that decision settled on
  (shipped or not: FP32 ships when INT8 is not 1.1x faster than FP32 or misses the guard).

Accuracy, on the evaluation inputs: **agree>=0.5** — top-1 agreement with FP32 on the inputs
where FP32's top-1 softmax probability is at least 0.5 (the guard's moderately confident
inputs); **SQNR** of the logits against FP32; accuracy where there are labels; and, per model,
FP32's own agreement under one 8-bit step of input noise (the guard's noise floor).
Data: 224x224 models — 300 calibration and 500 other evaluation crops of scikit-image's photos;
``teacher`` — ``--data digits`` (450 validation samples); the hard-digits models — their
validation split.

Speed (unless ``--no-speed``): ONNX Runtime CPU, 2 threads, batch 1, level ``all``, every path
of a model interleaved in one process (``interleaved_latency``) in ``--rounds`` rounds; ``ms``
is the median of the rounds' medians; ``vs u8s8`` is ORT u8s8's ms over the path's (>= 1 is as
fast or faster). Goal on the three trained models: edgec-choice agree>=0.5 >= 0.985 at
>= 0.95x ORT u8s8's speed.

Usage::

    python benchmarks/int8.py [--models-dir DIR] [--models NAME ...] [--rounds 7]
        [--seconds 2] [--adaround-seconds 120] [--no-speed] [--no-write]

Writes its section of ``benchmarks/RESULTS.md`` (between ``<!-- int8:begin -->`` and
``<!-- int8:end -->``) unless ``--no-write``, again after each model (a run stopped early
keeps what it measured, marked incomplete), with the load average seen during the run; with
``--no-speed`` the speed columns read "pending". A model whose measurement raises is listed
as failed with its error, the others still run, and the script exits 1. Progress: a line per
path, bias correction's and AdaRound's layer lines (at most one per 20 s), and the
compile's steps for edgec-choice. Bounded by the product's own bounds: bias correction
measures on at most 128 calibration inputs (32 for 224x224 images), AdaRound learns for
``--adaround-seconds`` per model and path (the product's default, 120 s; layers left then keep
round-to-nearest).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.evaluate import predict
from edgec.compiler.int8.accuracy_guard import input_noise, sqnr_db
from edgec.compiler.int8.precision import (
    MAX_GUARD_SAMPLES,
    PrecisionOptions,
    decide_precision,
    rule_flavour,
    saturates_u8s8,
)
from edgec.compiler.loading import load_model
from edgec.compiler.progress import Reporter
from edgec.data import Dataset, load_dataset
from edgec.passes import adaround
from edgec.passes.quantize import ArrayCalibrationReader, calibrate, preprocess, quantize_model
from edgec.targets import load_target
from edgec.targets.onnxruntime.backend import OrtRunner
from edgec.targets.onnxruntime.timing import interleaved_latency

REPO = Path(__file__).resolve().parent.parent
TEACHER = REPO / "examples" / "digits" / "teacher.onnx"
from bench_models import (  # noqa: E402  (benchmarks/ is the script's folder)
    BENCHMARK_MODELS,
    HARD_MODELS,
    add_models_dir,
    find_models,
    photo_crops,
    recorded_command,
    train_hard_models,
)
from results_md import write_section  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- int8:begin -->", "<!-- int8:end -->"
THREADS = 2
PROGRESS_SECONDS = 20.0
CALIB_SAMPLES = 300
MODERATE = 0.5
TRAINED = ("teacher", *HARD_MODELS)
GOAL_AGREEMENT, GOAL_SPEED = 0.985, 0.95
# Cumulative techniques on edgec's preferred host flavour: (label, equalize, bias, adaround).
TECHNIQUES = (
    ("edgec", False, False, False),
    ("edgec+cle", True, False, False),
    ("edgec+cle+bc", True, True, False),
    ("edgec+cle+adaround", True, False, True),
    ("edgec+cle+adaround+bc", True, True, True),
)
PATHS = (
    "fp32",
    "ort-default",
    "ort-u8s8",
    *(t[0] for t in TECHNIQUES),
    "edgec-int8",
    "edgec-choice",
)


@dataclass
class PathResult:
    """One way of running one model."""

    agreement: float | None
    sqnr_db: float | None
    accuracy: float | None
    p50_ms: float | None = None
    quantize_s: float = 0.0
    agreement_all: float | None = None


@dataclass
class Row:
    """One model's measurements."""

    name: str
    eval_samples: int
    moderate_samples: int
    noise_agreement: float | None
    paths: dict[str, PathResult] = field(default_factory=dict)
    choice: str = "fp32"
    flavour: str = "—"
    fp32_layers: int = 0
    reason: str = ""


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


def _subset(x: np.ndarray, y: np.ndarray | None, limit: int, seed: int = 0):
    """The same seeded subset ``decide_precision`` draws (calibration and guard inputs)."""
    if len(x) <= limit:
        return x, y
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])
    return x[keep], None if y is None else y[keep]


class _Progress:
    """Prints a product step's progress lines, at most one every PROGRESS_SECONDS."""

    def __init__(self, label: str):
        self.label, self.last = label, 0.0

    def __call__(self, text: str) -> None:
        now = time.perf_counter()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            print(f"  {self.label}: {text}", flush=True)


def _quiet_root():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's "consider pre-processing" warnings
    return lambda: root.setLevel(level)


def ort_default(model: onnx.ModelProto, calib: np.ndarray, work: Path) -> onnx.ModelProto:
    """``quantize_static`` with every option at its default, on the calibration inputs."""
    from onnxruntime.quantization import quantize_static

    source, out = work / "ortdef_in.onnx", work / "ortdef.onnx"
    onnx.save_model(model, source)
    restore = _quiet_root()
    try:
        quantize_static(str(source), str(out), ArrayCalibrationReader(_input(model), calib))
    finally:
        restore()
    return onnx.load(out)


def ort_u8s8(
    model: onnx.ModelProto, calib: np.ndarray, reduce_range: bool, work: Path
) -> onnx.ModelProto:
    """ONNX Runtime's u8s8 per-channel recipe: ``quant_pre_process``, then ``quantize_static``
    with u8 activations, s8 per-channel weights, 7-bit weights where ``reduce_range``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, pre, out = work / "u8s8_in.onnx", work / "u8s8_pre.onnx", work / "u8s8.onnx"
    onnx.save_model(model, source)
    restore = _quiet_root()
    try:
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            ArrayCalibrationReader(_input(model), calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        restore()
    return onnx.load(out)


def _input(model: onnx.ModelProto) -> str:
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def _runner(model: onnx.ModelProto, path: Path) -> OrtRunner:
    onnx.save_model(model, path)
    return OrtRunner(path, threads=THREADS, level="all")


def _top_probability(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    return probs.max(axis=1) / probs.sum(axis=1)


def measure(name: str, model: onnx.ModelProto, data: Dataset, args, work: Path) -> Row:
    """Quantize every path, evaluate it, and (unless --no-speed) time them interleaved."""
    host = load_target("host")
    calib, _ = _subset(data.x_train, None, CALIB_SAMPLES)
    x_val, y_val = _subset(data.x_val, data.y_val, MAX_GUARD_SAMPLES)
    models: dict[str, onnx.ModelProto] = {"fp32": model}
    seconds: dict[str, float] = {}

    def timed(key, build):
        started = time.perf_counter()
        models[key] = build()
        seconds[key] = time.perf_counter() - started

    reduce = saturates_u8s8(host)
    timed("ort-default", lambda: ort_default(model, calib, work))
    timed("ort-u8s8", lambda: ort_u8s8(model, calib, reduce, work))
    base = rule_flavour(host, "onnxruntime")  # u8s8 per-channel (7-bit without VNNI) on x86
    prepared = {}
    for label, equalize, bias, rounding in TECHNIQUES:
        flavour = dataclasses.replace(
            base, equalize=equalize, bias_correction=bias, adaround=rounding
        )

        def build(flavour=flavour, label=label):
            if flavour.equalize not in prepared:
                pre = preprocess(model, equalize=flavour.equalize)
                prepared[flavour.equalize] = (pre, calibrate(pre, calib, "minmax", data.sha256))
            needs = flavour.bias_correction or flavour.adaround
            return quantize_model(
                *prepared[flavour.equalize],
                flavour,
                samples=calib if needs else None,
                progress=_Progress(f"{name} {label}"),
            )

        timed(label, build)
        print(f"  {name}: {label} quantized ({seconds[label]:.0f} s)", flush=True)
    started = time.perf_counter()
    options = PrecisionOptions(requested="auto", compare_seconds=args.decide_seconds)
    decision = decide_precision(model, host, "onnxruntime", data, options, Reporter(), name)
    seconds["edgec-choice"] = time.perf_counter() - started
    models["edgec-choice"] = decision.model
    if decision.int8_model is not None:
        models["edgec-int8"] = decision.int8_model
        seconds["edgec-int8"] = seconds["edgec-choice"]
    runners = {key: _runner(m, work / f"{name}-{key}.onnx") for key, m in models.items()}
    outputs = {key: predict(r, x_val) for key, r in runners.items()}
    reference = outputs["fp32"].reshape(len(x_val), -1)
    moderate = _top_probability(reference.astype(np.float64)) >= MODERATE
    noisy = predict(runners["fp32"], input_noise(x_val, calib, seed=0))
    top = reference.argmax(axis=1)
    row = Row(
        name,
        len(x_val),
        int(moderate.sum()),
        # None without moderately confident inputs (most random-weight models have none).
        float((noisy.reshape(len(x_val), -1).argmax(axis=1) == top)[moderate].mean())
        if moderate.any()
        else None,
        choice="edgec-int8" if decision.precision == "int8" else "fp32",
        flavour=decision.flavour.name if decision.precision == "int8" else "—",
        fp32_layers=len(decision.fp32_layers) if decision.precision == "int8" else 0,
        reason=decision.reason,
    )
    for key, out in outputs.items():
        out = out.reshape(len(x_val), -1)
        same = out.argmax(axis=1) == top
        row.paths[key] = PathResult(
            agreement=float(same[moderate].mean()) if moderate.any() else None,
            sqnr_db=None if key == "fp32" else sqnr_db(reference, out),
            accuracy=None if y_val is None else float((out.argmax(axis=1) == y_val).mean()),
            quantize_s=seconds.get(key, 0.0),
            agreement_all=float(same.mean()),
        )
    if not args.no_speed:
        feeds = {runners["fp32"].input_names[0]: np.ascontiguousarray(x_val[:1])}
        rounds: dict[str, list[float]] = {key: [] for key in runners}
        for _ in range(args.rounds):
            for key, value in interleaved_latency(runners, feeds, seconds=args.seconds).items():
                rounds[key].append(value.p50)
        for key in runners:
            row.paths[key].p50_ms = statistics.median(rounds[key])
    return row


def _fmt(value: float | None, pattern: str, missing: str = "—") -> str:
    return missing if value is None else format(value, pattern)


def goals(rows: list[Row], speed: bool) -> list[str]:
    """The goal lines for the trained models."""
    lines = []
    for r in rows:
        if r.name not in TRAINED:
            continue
        choice, u8s8 = r.paths["edgec-choice"], r.paths["ort-u8s8"]
        ok_agree = choice.agreement is not None and choice.agreement >= GOAL_AGREEMENT
        if speed and choice.p50_ms:
            ratio = u8s8.p50_ms / choice.p50_ms
            speed_text = (
                f"{ratio:.2f}x ORT u8s8's speed ({'met' if ratio >= GOAL_SPEED else 'missed'})"
            )
        else:
            speed_text = "speed pending"
        considered = r.paths.get("edgec-int8")
        int8 = f", edgec-int8 {_fmt(considered.agreement, '.4f')}" if considered else ""
        lines.append(
            f"- **{r.name}** (ships {r.choice}): edgec-choice agree>=0.5 "
            f"{_fmt(choice.agreement, '.4f')} ({'met' if ok_agree else 'missed'}; ORT u8s8 "
            f"{_fmt(u8s8.agreement, '.4f')}{int8}), {speed_text}."
        )
    return lines


def section(
    rows: list[Row],
    command: str,
    seconds: float,
    speed: bool,
    loads: list[float] | None = None,
    pending: list[str] | None = None,
    failed: dict[str, str] | None = None,
) -> str:
    """The RESULTS.md section; ``loads``: the 1-minute load averages seen during the run,
    ``pending``: the models not measured yet (the section is rewritten after each model),
    ``failed``: models whose measurement raised, and the error."""
    vnni = not saturates_u8s8(load_target("host"))
    load = (
        f"; load average {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores "
        "during the run"
        if loads
        else ""
    )
    lines = [
        BEGIN,
        "## INT8: ONNX Runtime vs edgec, technique by technique (`benchmarks/int8.py`)",
        "",
        f"- Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, {'with' if vnni else 'without'} VNNI (shared, noisy), Python "
        f"{platform.python_version()}, onnxruntime {ort.__version__}; wall time "
        f"{seconds:.0f} s{load}.",
        f"- Command: `{command}`",
        "- Models: the benchmark models given with `--models-dir` (random weights, recalibrated "
        "BatchNorm), `examples/digits/teacher.onnx`, and two models trained by the script on "
        "the harder digits of `distill.py` (seeded): `hard-teacher` (four conv-BN-ReLU "
        "layers) and `mobilenet-digits` (MobileNetV2-style inverted residual blocks with "
        "depthwise convs); each canonicalised as `edgec compile` does.",
        "- Paths: **ort-default** `quantize_static` defaults (s8s8 per-tensor, no "
        "pre-processing); **ort-u8s8** `quant_pre_process` + `quantize_static` u8 activations, "
        f"s8 per-channel weights{', 7-bit (reduce_range)' if not vnni else ''}; **edgec** "
        "edgec's quantization in the host's preferred flavour (the same u8s8 per-channel), then "
        "with cross-layer equalization (**+cle**), bias correction (**+bc**), AdaRound "
        "(**+adaround**), cumulatively; **edgec-int8** the INT8 model `edgec compile "
        "--precision auto -t host` settles on (its flavour search and guard), **edgec-choice** "
        "what it ships (FP32 when INT8 is not 1.1x faster than FP32 or misses the guard).",
        "- Accuracy: **agree>=0.5** top-1 agreement with FP32 on the inputs where FP32's top-1 "
        "probability is >= 0.5 (n = their count; most random-weight models have none); "
        "**agree all** top-1 agreement on all evaluation inputs; **SQNR** of the logits against "
        "FP32; accuracy with labels; **noise** FP32's own agreement there under one 8-bit step "
        "of input noise (the guard's floor). Calibration: the guard's seeded 300 training "
        "inputs.",
        "- Speed: ONNX Runtime CPU, 2 threads, batch 1, level `all`, all paths of a model "
        "interleaved in one process; ms = median of the rounds' medians; **vs u8s8** = ORT "
        "u8s8 ms / path ms (>= 1: as fast or faster)."
        + ("" if speed else " **Speed pending**: this run was `--no-speed`."),
        *(
            [
                f"- **Incomplete**: {len(rows)} models measured so far; not (yet) measured: "
                f"{', '.join(pending)}."
            ]
            if pending
            else []
        ),
        *(f"- **Failed**: {name}: {error}" for name, error in (failed or {}).items()),
        "",
        "| model | n (noise) | path | agree>=0.5 | agree all | SQNR dB | accuracy | ms "
        "| vs u8s8 | quantize s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        u8s8 = r.paths["ort-u8s8"].p50_ms
        for key in PATHS:
            p = r.paths.get(key)
            if p is None:
                continue
            label = f"**{key}** ({r.choice})" if key == "edgec-choice" else key
            ratio = u8s8 / p.p50_ms if (u8s8 and p.p50_ms) else None
            missing = "—" if speed else "pending"
            lines.append(
                f"| {r.name} | {r.moderate_samples} ({_fmt(r.noise_agreement, '.3f')}) "
                f"| {label} | {_fmt(p.agreement, '.4f')} | {_fmt(p.agreement_all, '.4f')} "
                f"| {_fmt(p.sqnr_db, '.1f')} "
                f"| {_fmt(p.accuracy, '.4f')} | {_fmt(p.p50_ms, '.3f', missing)} "
                f"| {_fmt(ratio, '.2f', missing)} | {p.quantize_s:.0f} |"
            )
    lines += ["", "edgec's choices:", ""]
    for r in rows:
        layers = f", {r.fp32_layers} layers kept FP32" if r.fp32_layers else ""
        lines.append(f"- **{r.name}**: {r.choice} ({r.flavour}{layers}): {r.reason}.")
    trained = goals(rows, speed)
    if trained:
        lines += ["", "Goal on the trained models (agree>=0.5 >= 0.985 at >= 0.95x ORT u8s8):", ""]
        lines += trained
    lines += [END, ""]
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and write its section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*BENCHMARK_MODELS, *TRAINED])
    add_models_dir(parser)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0, help="per round")
    parser.add_argument(
        "--decide-seconds", type=float, default=3.0, help="edgec's own timing of its flavours"
    )
    parser.add_argument(
        "--adaround-seconds",
        type=float,
        default=adaround.DEFAULT_SECONDS,
        help="AdaRound's time per model and flavour",
    )
    parser.add_argument("--epochs", type=int, default=15, help="training the hard-digits models")
    parser.add_argument("--no-speed", action="store_true", help="accuracy only: nothing timed")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    adaround.DEFAULT_SECONDS = args.adaround_seconds
    started = time.perf_counter()
    photos = None
    rows: list[Row] = []
    failed: dict[str, str] = {}
    loads = [os.getloadavg()[0]]
    command = recorded_command("int8.py", sys.argv[1:], args.models_dir).strip()

    def write(rows: list[Row], pending: list[str]) -> str:
        seconds = time.perf_counter() - started
        text = section(rows, command, seconds, not args.no_speed, loads, pending, failed)
        if not args.no_write:
            write_section(text, BEGIN, END, RESULTS)
        return text

    paths = find_models(args.models_dir, [n for n in args.models if n not in TRAINED])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hard = None
        for name in args.models:
            if name == "teacher":
                model, data = canonicalize(load_model(TEACHER, {}).proto), load_dataset("digits")
            elif name in HARD_MODELS:
                hard = hard or train_hard_models(work, epochs=args.epochs)  # when first needed
                model, data = canonicalize(load_model(hard[0][name], {}).proto), hard[1]
            elif name in paths:
                photos = photos or photo_dataset()
                model, data = canonicalize(load_model(paths[name], {}).proto), photos
            else:  # not found: find_models has said so
                continue
            try:
                row = measure(name, model, data, args, work)
            except Exception as error:  # a product bug: reported, the other models still run
                traceback.print_exc()
                failed[name] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                continue
            print(
                f"{name}: "
                + ", ".join(
                    f"{k} {_fmt(p.agreement, '.4f')} ({_fmt(p.sqnr_db, '.1f')} dB"
                    + (f", {p.p50_ms:.3f} ms)" if p.p50_ms else ")")
                    for k, p in row.paths.items()
                )
                + f"; ships {row.choice}",
                flush=True,
            )
            rows.append(row)
            loads.append(os.getloadavg()[0])
            done = args.models.index(name) + 1
            if done < len(args.models):
                # Rewritten after each model: a run stopped early keeps what it measured.
                write(rows, args.models[done:])
    if not rows:
        print("nothing measured: RESULTS.md left as it is")
        return
    text = write(rows, [])
    print(text)
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (see above)")


if __name__ == "__main__":
    main()
