"""FP16 against FP32 on 224x224 models and real photo crops: top-1 agreement and logits SQNR.

For each ONNX model in ``--models-dir`` (the benchmark set is resnet18, mobilenet_v2,
mobilenet_v3_small and efficientnet_b0: batch 1, 3x224x224; pass the folder that holds them,
nothing outside this repository is assumed) this script:

1. canonicalises the model as ``edgec compile`` does (the FP32 reference is that model);
2. converts it exactly as a compile does for a GPU target
   (:func:`edgec.compiler.fp16.to_fp16`: ``onnxconverter-common``, float32 I/O, the FP32
   block list);
3. runs FP32, the FP16 ONNX and the accuracy guard's FP16 emulation
   (:func:`edgec.compiler.fp16.emulation`: every converted op's output rounded to FP16) with
   ONNX Runtime's CPU provider on ``--samples`` photo crops, and reports each one's top-1
   agreement with FP32 and its logits' SQNR. This CPU has no FP16 kernels for most ops (ONNX
   Runtime computes them in FP32 between casts), so the FP16 ONNX row measures the weights'
   rounding and the emulation row adds every activation's: the figure to judge by.

Data: random square crops (30-100% of the short side) of scikit-image's bundled photos
(``skimage.data``: astronaut, chelsea, coffee, rocket, and the grey camera replicated to RGB),
resized to 224x224, randomly flipped, ImageNet-normalised (seed 2).

Usage::

    python benchmarks/fp16.py --models-dir DIR [--models resnet18 ...] [--samples 200]
        [--no-write]

Prints a table and writes its section of ``benchmarks/RESULTS.md`` (between
``<!-- fp16:begin -->`` and ``<!-- fp16:end -->``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from bench_models import (
    BENCHMARK_MODELS,
    add_models_dir,
    find_models,
    photo_crops,
    recorded_command,
)
from results_md import write_section  # benchmarks/, the script's folder, is on the path

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.fp16 import MIN_SQNR_DB, emulation, to_fp16
from edgec.compiler.int8.accuracy_guard import sqnr_db
from edgec.targets.onnxruntime.backend import OrtRunner

BEGIN, END = "<!-- fp16:begin -->", "<!-- fp16:end -->"
MIN_AGREEMENT = 0.99  # the bar for a shared 224x224 model
THREADS = 2


def crops(count: int, seed: int) -> np.ndarray:
    """Random crops of scikit-image's photos, 224x224, ImageNet-normalised, NCHW float32."""
    from skimage import data as photos

    colour = [photos.astronaut(), photos.chelsea(), photos.coffee(), photos.rocket()]
    sources = [*colour, np.stack([photos.camera()] * 3, axis=-1)]
    return photo_crops(sources, count, seed)


@dataclass
class Row:
    """One model's numbers."""

    name: str
    fp16_initializers: int
    weights_mb: tuple[float, float]
    agreement: dict[str, float]
    sqnr: dict[str, float]
    seconds: float


def _logits(model: onnx.ModelProto, path: Path, x: np.ndarray, level: str = "all") -> np.ndarray:
    onnx.save_model(model, path)
    runner = OrtRunner(path, threads=THREADS, level=level)
    name = runner.input_names[0]
    return np.concatenate([runner.run({name: x[i : i + 1]})[0] for i in range(len(x))])


def _weights_mb(model: onnx.ModelProto) -> float:
    return sum(len(init.raw_data) for init in model.graph.initializer) / 1e6


def measure(path: Path, x: np.ndarray, work: Path) -> Row:
    """Convert one model and compare its FP16 forms with FP32 on ``x``."""
    started = time.perf_counter()
    fp32 = canonicalize(onnx.load(path))
    fp16 = to_fp16(fp32)
    reference = _logits(fp32, work / "fp32.onnx", x)
    outputs = {
        "fp16 onnx": _logits(fp16, work / "fp16.onnx", x),
        # "basic", as the guard runs it: the extended optimizations fuse across the casts.
        "emulation": _logits(
            emulation(fp32), work / "emul.onnx", x.astype(np.float16).astype(np.float32), "basic"
        ),
        # FP32 on FP16-rounded inputs: how much the model itself amplifies a 2^-11 relative
        # perturbation (a chaotic random-weight network fails FP16 for that reason alone).
        "input only": _logits(fp32, work / "fp32.onnx", x.astype(np.float16).astype(np.float32)),
    }
    top = reference.argmax(axis=1)
    return Row(
        path.stem,
        sum(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer),
        (_weights_mb(fp32), _weights_mb(fp16)),
        {k: float((v.argmax(axis=1) == top).mean()) for k, v in outputs.items()},
        {k: sqnr_db(reference, v) for k, v in outputs.items()},
        time.perf_counter() - started,
    )


def _machine() -> str:
    """This machine's CPU model and architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.machine()


def ort_version() -> str:
    """The ONNX Runtime version that ran the models."""
    import onnxruntime

    return onnxruntime.__version__


def section(rows: list[Row], command: str, samples: int) -> str:
    """The RESULTS.md section."""
    lines = [
        BEGIN,
        "## FP16 against FP32 on photo crops (`benchmarks/fp16.py`)",
        "",
        f"{datetime.date.today().isoformat()}, {_machine()}, ONNX Runtime "
        f"{ort_version()} CPU, {THREADS} threads; "
        f"`{command}`. {samples} random 224x224 crops of scikit-image's photos (astronaut, "
        "chelsea, coffee, rocket, camera), ImageNet-normalised. The models have random weights "
        "(recalibrated BatchNorm): agreement measures numerics, not accuracy. Conversion: "
        "`edgec.compiler.fp16.to_fp16` (onnxconverter-common, float32 I/O, FP32 block list). "
        "*FP16 ONNX*: the shipped graph on ORT's CPU provider, which has no FP16 kernels for "
        "most ops and runs them in FP32 between casts (weights rounded, activations mostly "
        "not); *emulation*: the accuracy guard's view, every weight and activation of a "
        "converted op rounded to FP16, the one to judge by; *input only*: FP32 on inputs "
        "rounded to FP16, how much the model itself amplifies a 2^-11 relative perturbation. "
        f"Passes: emulation agreement >= {MIN_AGREEMENT} and SQNR >= {MIN_SQNR_DB:g} dB (the "
        "guard's floor). No GPU here: GPU FP16 timings are pending.",
        "",
        "| model | FP16 weights | weights MB FP32 → FP16 | top-1 agreement FP16 ONNX | "
        "top-1 agreement emulation | SQNR dB FP16 ONNX | SQNR dB emulation | "
        "agreement / SQNR dB input only | passes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        ok = row.agreement["emulation"] >= MIN_AGREEMENT and row.sqnr["emulation"] >= MIN_SQNR_DB
        lines.append(
            f"| {row.name} | {row.fp16_initializers} | {row.weights_mb[0]:.1f} → "
            f"{row.weights_mb[1]:.1f} | {row.agreement['fp16 onnx']:.3f} | "
            f"{row.agreement['emulation']:.3f} | {row.sqnr['fp16 onnx']:.1f} | "
            f"{row.sqnr['emulation']:.1f} | {row.agreement['input only']:.3f} / "
            f"{row.sqnr['input only']:.1f} | {'yes' if ok else 'NO'} |"
        )
    lines += ["", END, ""]
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, measure each model, print the table and write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_models_dir(parser)
    parser.add_argument("--models", nargs="+", default=list(BENCHMARK_MODELS))
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    paths = find_models(args.models_dir, args.models)  # prints one line for those skipped
    if not paths:
        print("nothing measured: RESULTS.md left as it is")
        return
    x = crops(args.samples, seed=2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgec-fp16-bench-") as tmp:
        for path in paths.values():
            row = measure(path, x, Path(tmp))
            print(
                f"{row.name}: agreement {row.agreement}, SQNR "
                f"{ {k: round(v, 1) for k, v in row.sqnr.items()} } ({row.seconds:.0f} s)",
                flush=True,
            )
            rows.append(row)
    command = recorded_command("fp16.py", sys.argv[1:], args.models_dir)
    text = section(rows, command, args.samples)
    print(text)
    if not args.no_write:
        write_section(text, BEGIN, END)


if __name__ == "__main__":
    main()
