"""What the canonical pass pipeline buys: nodes, pass time, ONNX Runtime latency, TVM builds.

For each model — the nine light architectures shipped in the ``onnx`` wheel with random weights
(``tests/models.py: randomized_light_model``) and the four benchmark models (random weights,
recalibrated BatchNorm; not part of the repository, read from ``--models-dir`` and skipped
without it) — this script:

1. loads it as ``edgec compile`` does and canonicalises it with the pass pipeline,
   recording every pass's time (``--time-passes``' instrumentation) and the node counts;
2. times ONNX Runtime (CPU, 2 threads, batch 1) on the model before and after, in the same
   process, interleaved in rounds, at two graph-optimisation levels: ``all`` (ORT's own
   run-time fusions on: what ``edgec`` ships for ``host``) and ``disabled`` (no run-time
   fusions: a proxy for a backend that runs the graph it is given — TVM and TensorRT do not
   see ORT's fusions); medians of per-run times;
3. builds the model before and after with Apache TVM (Relax ONNX importer,
   ``tvm.compile`` for the host CPU with the default Relax pipeline, no tuning) and records
   success and build time — or reports "not measured: TVM not installed" when
   ``import tvm`` fails.

Usage::

    python benchmarks/passes.py [--models-dir DIR] [--models resnet50 densenet121 ...]
        [--rounds 5] [--no-tvm] [--no-write]

Writes its section of ``benchmarks/RESULTS.md`` (between ``<!-- passes:begin -->`` and
``<!-- passes:end -->``) unless ``--no-write``.
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

os.environ.setdefault("TVM_NUM_THREADS", "2")  # must be set before tvm is imported

import numpy as np
import onnx
import onnxruntime as ort

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.loading import load_model
from edgec.passes.instrument import PassInstrument

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from bench_models import (  # noqa: E402  (benchmarks/ is the script's folder)
    BENCHMARK_MODELS,
    add_models_dir,
    find_models,
    recorded_command,
)
from models import LIGHT_MODELS, randomized_light_model  # noqa: E402  (a test helper)
from results_md import write_section  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- passes:begin -->", "<!-- passes:end -->"
LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


@dataclass
class Row:
    """One model's measurements."""

    name: str
    source: str
    nodes_before: int = 0
    nodes_after: int = 0
    bn_before: int = 0
    bn_after: int = 0
    pass_ms: float = 0.0
    canonicalize_ms: float = 0.0
    ort_ms: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_abs_diff: float = 0.0
    tvm: dict[str, str] = field(default_factory=dict)


def _session(model: onnx.ModelProto, level: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _time_interleaved(
    sessions: dict[str, ort.InferenceSession], feed: dict, rounds: int, budget_s: float
) -> dict[str, float]:
    """Median per-run milliseconds of each session, timed in alternating rounds."""
    for session in sessions.values():  # warm-up
        session.run(None, feed)
    start = time.perf_counter()
    sessions["before"].run(None, feed)
    one = time.perf_counter() - start
    runs = max(3, min(50, int(budget_s / max(one, 1e-4) / rounds / len(sessions))))
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, feed)
                times[key].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _tvm_build(model: onnx.ModelProto) -> str:
    """``ok (12.3 s)`` or ``failed: <first line>`` for an untuned host-CPU TVM build."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    target = tvm.target.Target(
        {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2}
    )
    start = time.perf_counter()
    try:
        mod = from_onnx(model, keep_params_in_input=False)
        tvm.compile(mod, target=target, relax_pipeline=relax.get_default_pipeline(target))
    except Exception as err:  # a failed build is a result here, not a crash
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return f"failed: {type(err).__name__}: {first[:80]}"
    return f"ok ({time.perf_counter() - start:.1f} s)"


def tvm_status() -> str | None:
    """``None`` when TVM imports, else why it cannot be measured."""
    try:
        import tvm  # noqa: F401
    except ImportError:
        return "not measured: TVM not installed"
    return None


def measure(name: str, path: Path, source: str, rounds: int, use_tvm: bool) -> Row:
    """All measurements of one model file."""
    row = Row(name, source)
    loaded = load_model(path)
    before = loaded.proto
    instrument = PassInstrument()
    start = time.perf_counter()
    after = canonicalize(before, instrument)
    row.canonicalize_ms = (time.perf_counter() - start) * 1e3
    row.pass_ms = sum(r.seconds for r in instrument.records) * 1e3
    row.nodes_before, row.nodes_after = len(before.graph.node), len(after.graph.node)
    row.bn_before = sum(n.op_type == "BatchNormalization" for n in before.graph.node)
    row.bn_after = sum(n.op_type == "BatchNormalization" for n in after.graph.node)
    spec = loaded.inputs[0]
    feed = {spec.name: np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32)}
    for level in LEVELS:
        sessions = {"before": _session(before, level), "after": _session(after, level)}
        medians = _time_interleaved(sessions, feed, rounds, budget_s=6.0)
        row.ort_ms[level] = (medians["before"], medians["after"])
        if level == "disabled":
            outs = [s.run(None, feed)[0] for s in sessions.values()]
            row.max_abs_diff = float(np.abs(outs[0] - outs[1]).max())
    if use_tvm:
        row.tvm = {"before": _tvm_build(before), "after": _tvm_build(after)}
    return row


def _models(
    names: list[str] | None, models_dir: Path | None, work: Path
) -> list[tuple[str, Path, str]]:
    """``(name, file, source)`` of each model to measure: light ones are written to ``work``.

    Without ``names``: every light model, then the four benchmark models; any name that is not
    a light model is looked up in ``models_dir``.
    """
    names = names or [*LIGHT_MODELS, *BENCHMARK_MODELS]
    in_dir = find_models(models_dir, [n for n in names if n not in LIGHT_MODELS])
    found = []
    for name in names:
        if name in LIGHT_MODELS:
            path = work / f"{name}.onnx"
            onnx.save(randomized_light_model(name), path)
            found.append((name, path, "onnx wheel (light), random weights"))
        elif name in in_dir:
            found.append((name, in_dir[name], "--models-dir"))
    return found


def section(rows: list[Row], command: str, tvm_note: str | None, seconds: float) -> str:
    """The RESULTS.md section."""
    lines = [
        BEGIN,
        "## Graph passes (`benchmarks/passes.py`)",
        "",
        f"- Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores (shared, noisy), Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__}; wall time {seconds:.0f} s; load average at the end "
        f"{os.getloadavg()[0]:.1f} (other engineers' jobs share the 2 cores: ratios measured "
        "side by side are what to read).",
        f"- Command: `{command}`",
        "- Models: the `onnx` wheel's light architectures with random weights "
        "(`randomized_light_model`) and, where given, the four benchmark models "
        "(`--models-dir`: random weights, recalibrated BatchNorm already folded by the "
        "exporter).",
        "- Pass time: the sum of every pass run in the `canonical` and `finalize` pipelines "
        "(`--time-passes`); canonicalise adds (de)serialisation, shape inference and the checker.",
        "- ORT latency: batch 1, 2 threads, median per-run ms of the model before and after the "
        "passes, timed interleaved in the same process; `all` = ORT's own run-time fusions on, "
        "`disabled` = off (a proxy for a backend that runs the graph as given). "
        "`max |diff|`: largest output difference before/after.",
        "- TVM build: Relax ONNX importer + `tvm.compile` for the host CPU "
        "(default Relax pipeline, untuned). "
        + (tvm_note if tvm_note else "Measured (apache-tvm is installed)."),
        "",
        "| model | nodes before → after | BN before → after | passes ms | canonicalise ms "
        "| ORT all ms before → after | ORT disabled ms before → after | max \\|diff\\| "
        "| TVM build before | TVM build after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, d = r.ort_ms["all"], r.ort_ms["disabled"]
        lines.append(
            f"| {r.name} | {r.nodes_before} → {r.nodes_after} | {r.bn_before} → {r.bn_after} "
            f"| {r.pass_ms:.0f} | {r.canonicalize_ms:.0f} "
            f"| {a[0]:.2f} → {a[1]:.2f} ({a[1] / a[0]:.2f}x) "
            f"| {d[0]:.2f} → {d[1]:.2f} ({d[1] / d[0]:.2f}x) | {r.max_abs_diff:.1e} "
            f"| {r.tvm.get('before', tvm_note or '—')} | {r.tvm.get('after', tvm_note or '—')} |"
        )
    lines += [END, ""]
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and write its section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="light model or benchmark model names")
    add_models_dir(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-tvm", action="store_true", help="skip the TVM builds")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    note = "not measured: skipped with --no-tvm" if args.no_tvm else tvm_status()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, path, source in _models(args.models, args.models_dir, Path(work)):
            row = measure(name, path, source, args.rounds, use_tvm=note is None)
            a, d = row.ort_ms["all"], row.ort_ms["disabled"]
            print(
                f"{name}: nodes {row.nodes_before}->{row.nodes_after}, passes "
                f"{row.pass_ms:.0f} ms, ORT all {a[0]:.2f}->{a[1]:.2f} ms, disabled "
                f"{d[0]:.2f}->{d[1]:.2f} ms, TVM {row.tvm or note}",
                flush=True,
            )
            rows.append(row)
    if not rows:
        print("nothing measured: RESULTS.md left as it is")
        return
    command = recorded_command("passes.py", sys.argv[1:], args.models_dir)
    text = section(rows, command.strip(), note, time.perf_counter() - started)
    print(text)
    if not args.no_write:
        write_section(text, BEGIN, END, RESULTS)


if __name__ == "__main__":
    main()
