"""ONNX Runtime against Apache TVM on this CPU: untuned, tuned at several budgets; agreement.

Part ``speed`` — for resnet18 and mobilenet_v2 from the four benchmark models (random weights
with recalibrated BatchNorm; not part of the repository, read from ``--models-dir`` and skipped
without it), built with edgec's own backends exactly as ``edgec compile --target host`` builds
them:

* ONNX Runtime FP32 (``onnxruntime`` backend: offline level ``all``, 2 intra-op threads);
* TVM untuned (``tvm`` backend: Relax default pipeline, ``TVM_NUM_THREADS=2``);
* TVM tuned with MetaSchedule at each ``--budgets`` trial count, each from scratch (no tuning
  cache), candidates measured on this machine; the tuning time is reported.

All variants are timed in the same process, interleaved in rounds (each round runs every
variant for up to ``--seconds`` seconds, at least twice), batch 1, random input; medians and
minimums over all rounds. Every variant's output is compared with ONNX Runtime's.

Part ``light`` — every light architecture in the ``onnx`` wheel with random weights
(``tests/models.py``), canonicalised as ``edgec compile`` does and cut before its final
Softmax (random-weight probabilities are near-uniform or one-hot, so they agree whatever the
logits do; logits are the real check), is built untuned for this machine with TVM, run once,
and compared with ONNX Runtime (the full set; the unit tests check squeezenet only).

The machine is shared: the load average before and after each part is recorded.

Usage::

    python benchmarks/tvm_vs_ort.py [--part speed|light|all] [--models-dir DIR] [--budgets 16 96]
        [--rounds 3] [--seconds 2] [--models resnet18 mobilenet_v2] [--no-write]

Writes its sections of ``benchmarks/RESULTS.md`` (``<!-- tvm:begin -->`` … ``<!-- tvm:end -->``
and ``<!-- tvm-light:begin -->`` … ``<!-- tvm-light:end -->``) unless ``--no-write``.
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

os.environ.setdefault("TVM_NUM_THREADS", "2")  # read when TVM's thread pool starts

import numpy as np
import onnx

from edgec.compiler.canonicalize import canonicalize
from edgec.targets import BuildOptions, get_backend, load_target

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "targets" / "tvm"))
from bench_models import add_models_dir, find_models, recorded_command  # noqa: E402
from models import LIGHT_MODELS, randomized_light_model  # noqa: E402  (test helpers)
from results_md import write_section  # noqa: E402  (benchmarks/ is the script's folder)
from tvm_models import without_final_softmax  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTIONS = {
    "speed": ("<!-- tvm:begin -->", "<!-- tvm:end -->"),
    "light": ("<!-- tvm-light:begin -->", "<!-- tvm-light:end -->"),
}


@dataclass
class Variant:
    """One way of running a model."""

    label: str
    runner: object
    build_s: float
    tuning: dict | None = None
    samples_ms: list[float] = field(default_factory=list)
    max_abs_diff: float = 0.0


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} / {five:.1f}"


def _build(backend_name: str, model: Path, out: Path, trials: int = 0):
    started = time.perf_counter()
    backend = get_backend(backend_name)
    progress = (lambda line: print(f"    {line}", flush=True)) if trials else None
    options = BuildOptions("fp32", tune_trials=trials, progress=progress)
    artifact = backend.build(model, load_target("host"), out, options)
    return backend.load(artifact), time.perf_counter() - started, artifact.metadata.get("tuning")


def _time_rounds(variants: list[Variant], feeds: dict, rounds: int, seconds: float) -> None:
    for variant in variants:  # warm-up: caches, thread pools, lazy allocations
        variant.runner.run(feeds)
    for _ in range(rounds):
        for variant in variants:
            started = time.perf_counter()
            count = 0
            while count < 2 or time.perf_counter() - started < seconds:
                t0 = time.perf_counter()
                variant.runner.run(feeds)
                variant.samples_ms.append((time.perf_counter() - t0) * 1000.0)
                count += 1
                if count >= 2000:
                    break


def speed(models: dict[str, Path], budgets: list[int], rounds: int, seconds: float) -> dict:
    """Build and time every variant of every model (``{name: ONNX file}``)."""
    results = {"load_before": _load(), "models": {}}
    for name, path in models.items():
        print(f"{name}:", flush=True)
        graph = onnx.load(path, load_external_data=False).graph
        spec = graph.input[0].type.tensor_type.shape
        shape = [d.dim_value for d in spec.dim]
        feeds = {graph.input[0].name: np.random.default_rng(0).standard_normal(shape).astype("f4")}
        variants = []
        with tempfile.TemporaryDirectory() as tmp:
            runner, build_s, _ = _build("onnxruntime", path, Path(tmp) / "ort")
            variants.append(Variant("ONNX Runtime FP32", runner, build_s))
            print(f"  onnxruntime built in {build_s:.1f} s", flush=True)
            runner, build_s, _ = _build("tvm", path, Path(tmp) / "tvm")
            variants.append(Variant("TVM untuned", runner, build_s))
            print(f"  tvm untuned built in {build_s:.1f} s", flush=True)
            for trials in budgets:
                runner, build_s, tuning = _build("tvm", path, Path(tmp) / f"tvm{trials}", trials)
                variants.append(Variant(f"TVM tuned, {trials} trials", runner, build_s, tuning))
                print(f"  tvm tuned ({trials} trials) built in {build_s:.1f} s", flush=True)
            reference = variants[0].runner.run(feeds)[0]
            for variant in variants:
                out = variant.runner.run(feeds)[0]
                variant.max_abs_diff = float(np.abs(out - reference).max())
            _time_rounds(variants, feeds, rounds, seconds)
        for variant in variants:
            print(
                f"  {variant.label}: median {statistics.median(variant.samples_ms):.2f} ms",
                flush=True,
            )
        results["models"][name] = {"variants": variants, "scale": float(np.abs(reference).max())}
    results["load_after"] = _load()
    return results


def light() -> dict:
    """Build every light model untuned with TVM and compare one output with ONNX Runtime."""
    rows = {"load_before": _load(), "rows": []}
    for name in LIGHT_MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.onnx"
            model = canonicalize(randomized_light_model(name))  # as edgec compile does
            onnx.save(without_final_softmax(model), path)
            ort_runner, _, _ = _build("onnxruntime", path, Path(tmp) / "ort")
            try:
                tvm_runner, build_s, _ = _build("tvm", path, Path(tmp) / "tvm")
            except Exception as err:  # report, do not stop: one model failing is a result
                rows["rows"].append((name, None, None, None, None, str(err).splitlines()[0]))
                print(f"{name}: {err}", flush=True)
                continue
            name_in = ort_runner.input_names[0]
            shape = [
                d if isinstance(d, int) else 1 for d in ort_runner.session.get_inputs()[0].shape
            ]
            feeds = {name_in: np.random.default_rng(0).standard_normal(shape).astype("f4")}
            reference = ort_runner.run(feeds)[0]
            started = time.perf_counter()
            out = tvm_runner.run(feeds)[0]
            run_s = time.perf_counter() - started
            diff = float(np.abs(out - reference).max())
            scale = float(np.abs(reference).max())
            rows["rows"].append((name, build_s, run_s, diff, scale, ""))
            print(f"{name}: build {build_s:.1f} s, max |diff| {diff:.3g} (scale {scale:.3g})")
    rows["load_after"] = _load()
    return rows


def _header(title: str, command: str, started: float, load: tuple[str, str]) -> list[str]:
    import importlib.metadata as md

    return [
        f"## {title} (`benchmarks/tvm_vs_ort.py`)",
        "",
        f"- date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores (shared with other engineers' work), Python "
        f"{platform.python_version()}; apache-tvm {md.version('apache-tvm')}, onnxruntime "
        f"{md.version('onnxruntime')}",
        f"- command: `{command}`; wall time {(time.perf_counter() - started) / 60:.1f} min",
        f"- load average (1 min / 5 min) before: {load[0]}; after: {load[1]} — on 2 cores, "
        "anything above ~2 means other work took CPU time during the run",
    ]


def render_speed(results: dict, args, command: str, started: float) -> str:
    """The speed section."""
    begin, end = SECTIONS["speed"]
    load = (results["load_before"], results["load_after"])
    lines = [begin, *_header("ONNX Runtime vs Apache TVM on this CPU", command, started, load)]
    lines += [
        f"- models: {' and '.join(results['models'])} of the four benchmark models "
        "(`--models-dir`; random weights), batch 1, FP32, 2 threads for both runtimes; all "
        "variants built by edgec's backends and timed in one process, interleaved, "
        f"{args.rounds} rounds of ≥{args.seconds:g} s (≥2 runs) each",
        "- tuned = MetaSchedule from scratch at that trial budget (evolutionary search; XGBoost "
        "cost model from 16 trials); tuning and build times are wall time",
        "",
        "- absolute milliseconds depend on the load above; the ratios, measured interleaved in "
        "the same process, are the comparison",
        "- CUDA: not measured — no NVIDIA GPU was available to this session; edgec's CUDA "
        "builds (sm_53/sm_87/sm_75) are only checked to build (tests)",
        "",
        *_summary(results),
        "",
        "| model | variant | median ms | min ms | runs | vs ORT (median) | build s | tuning s "
        "| tasks tuned | max abs diff vs ORT |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, data in results["models"].items():
        base = statistics.median(data["variants"][0].samples_ms)
        for v in data["variants"]:
            median = statistics.median(v.samples_ms)
            tuning = v.tuning or {}
            tuned = f"{tuning['tasks_tuned']}/{tuning['tasks']}" if tuning else "—"
            tuning_s = f"{tuning['seconds']:.0f}" if tuning else "—"
            lines.append(
                f"| {name} | {v.label} | {median:.2f} | {min(v.samples_ms):.2f} | "
                f"{len(v.samples_ms)} | {median / base:.1f}x | {v.build_s:.0f} | {tuning_s} | "
                f"{tuned} | {v.max_abs_diff:.2g} (scale {data['scale']:.2g}) |"
            )
    lines += ["", end]
    return "\n".join(lines) + "\n"


def _summary(results: dict) -> list[str]:
    """One computed line per model: how TVM's variants compare with ONNX Runtime."""
    lines = []
    for name, data in results["models"].items():
        ort, untuned, *tuned = data["variants"]
        base = statistics.median(ort.samples_ms)
        best = min(tuned or [untuned], key=lambda v: statistics.median(v.samples_ms))
        ratio = statistics.median(best.samples_ms) / base
        verdict = "slower than" if ratio > 1 else "faster than"
        tuning = f", after {best.tuning['seconds'] / 60:.1f} min of tuning" if best.tuning else ""
        lines.append(
            f"- **{name}**: untuned TVM is {statistics.median(untuned.samples_ms) / base:.1f}x "
            f"ONNX Runtime's median; the best TVM build ({best.label}{tuning}) is "
            f"{ratio:.1f}x, i.e. {verdict} ONNX Runtime"
        )
    return lines


def render_light(rows: dict, command: str, started: float) -> str:
    """The light-model agreement section."""
    begin, end = SECTIONS["light"]
    title = "TVM (untuned, host) against ONNX Runtime on the light models"
    load = (rows["load_before"], rows["load_after"])
    lines = [begin, *_header(title, command, started, load)]
    lines += [
        "- the nine architectures in the `onnx` wheel with random weights "
        "(`tests/models.py`), canonicalised as `edgec compile` does, compared on their logits "
        "(the final Softmax removed: random-weight probabilities agree whatever the logits do), "
        "one random input each; the unit tests check squeezenet the same way",
        "",
        "| model | TVM build s | TVM run s | max abs diff | output scale | relative | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, build_s, run_s, diff, scale, note in rows["rows"]:
        if build_s is None:
            lines.append(f"| {name} | — | — | — | — | — | {note} |")
            continue
        lines.append(
            f"| {name} | {build_s:.0f} | {run_s:.2f} | {diff:.2g} | {scale:.2g} | "
            f"{diff / max(scale, 1e-30):.1g} | {note} |"
        )
    lines += ["", end]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the chosen parts and write their sections."""
    # This file is tvm.py: keep its folder off the path so `import tvm` finds Apache TVM.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speed", "light", "all"), default="speed")
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[16, 96])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--no-write", action="store_true")
    add_models_dir(parser)
    args = parser.parse_args()
    command = recorded_command("tvm.py", sys.argv[1:], args.models_dir)
    if args.part in ("speed", "all"):
        started = time.perf_counter()
        models = find_models(args.models_dir, args.models)
        if not models:
            print("speed: nothing measured, its section of RESULTS.md left as it is", flush=True)
        else:
            results = speed(models, args.budgets, args.rounds, args.seconds)
            section = render_speed(results, args, command, started)
            print(section)
            if not args.no_write:
                write_section(section, *SECTIONS["speed"], RESULTS)
    if args.part in ("light", "all"):
        started = time.perf_counter()
        section = render_light(light(), command, started)
        print(section)
        if not args.no_write:
            write_section(section, *SECTIONS["light"], RESULTS)


if __name__ == "__main__":
    main()
