"""Backend choice per stage, honest fallbacks (a missing TensorRT, Edge TPU compiler or cross
toolchain), backend facts instead of backend names, and the cost model's view of TVM builds.

The measured choice itself (ONNX Runtime against a tuned TVM build on this machine) runs in
``tests/targets/tvm/test_tvm_rpc_tuning.py``, next to the tuning it depends on.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgec.cli import main
from edgec.compiler.planning.cost_model import _peaks, estimate_latency
from edgec.targets import backend_names, get_backend, load_target


def test_tvm_on_a_cuda_target_is_estimated_on_the_gpu():
    """The TVM backend builds CUDA for the Jetson Nano, so the cost model uses its GPU peak;
    on the Raspberry Pi (no accelerator) and for ONNX Runtime it uses the CPU."""
    nano, pi = load_target("jetson-nano"), load_target("raspberry-pi-4")
    gpu_fp32 = nano.accelerator.peak_tflops_fp32 * 1e12
    assert _peaks(nano, "tvm", "fp32") == (gpu_fp32, nano.accelerator.memory_bandwidth_gbps * 1e9)
    assert _peaks(nano, "onnxruntime", "fp32")[0] == nano.cpu.peak_gflops_fp32 * 1e9
    assert _peaks(pi, "tvm", "fp32")[0] == pi.cpu.peak_gflops_fp32 * 1e9


def test_gpu_estimate_is_faster_than_the_cpu_estimate(teacher_path):
    """Same model, same board: the CUDA build's estimate is below the CPU build's."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(teacher_path))
    nano = load_target("jetson-nano")
    gpu = estimate_latency(model, nano, "tvm", "fp32")
    cpu = estimate_latency(model, nano, "onnxruntime", "fp32")
    assert gpu.source == cpu.source == "estimated"
    assert gpu.p50 < cpu.p50


@pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="the tvm extra is missing")
def test_tuning_for_a_board_without_its_device_exits_2(tmp_path, teacher_path):
    """Candidates can only be timed where they run: tuning for the Pi needs --device."""
    out = tmp_path / "b"
    result = CliRunner().invoke(
        main,
        ["compile", str(teacher_path), "-t", "raspberry-pi-4", "-o", str(out),
         "--tune-trials", "4", "--students", "none", "--precision", "fp32"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: --tune-trials for raspberry-pi-4 needs the device")
    assert "--device rpc://HOST:PORT" in lines[-1]
    assert not out.exists()


# ------------------------------------------------------------------------ honest fallbacks
needs_tvm = pytest.mark.skipif(
    importlib.util.find_spec("tvm") is None, reason="the tvm extra is missing"
)


def compile_cli(*args: str):
    return CliRunner().invoke(main, ["compile", *args], catch_exceptions=False)


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture
def no_cross_compiler(tmp_path, monkeypatch) -> Path:
    """PATH holds no cross compiler (nor anything else): as on a machine without one."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


def fake_compiler(bin_dir: Path, script: str) -> None:
    """An ``aarch64-linux-gnu-gcc`` on PATH that runs the shell ``script``."""
    path = bin_dir / "aarch64-linux-gnu-gcc"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_jetson_nano_says_it_fell_back_from_tensorrt_and_the_gpu_is_unused(
    tmp_path, teacher_path, no_cross_compiler
):
    """Without TensorRT (and without the cross compiler TVM's aarch64 link needs) the Nano's
    stage is built with ONNX Runtime for its CPU: the manifest records the fallback and why,
    TVM's skip says what to install, and the compile output and report.md say it in one line
    that ends with the GPU going unused."""
    out = tmp_path / "nano"
    result = compile_cli(
        str(teacher_path), "-t", "jetson-nano", "--students", "none", "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    (stage,) = manifest_of(out)["stages"]
    assert stage["backend"] == "onnxruntime"
    fallback = stage["backend_fallback"]
    assert fallback["wanted"] == "tensorrt" and "TensorRT" in fallback["reason"]
    line = (
        "jetson-nano: stage teacher built with onnxruntime for the CPU instead of tensorrt: "
        f"{fallback['reason']}; the GPU is not used"
    )
    assert fallback["note"] == line
    assert f"note: {line}" in result.stderr.splitlines()
    assert f"- note: {line}" in (out / "report" / "report.md").read_text().splitlines()
    if importlib.util.find_spec("tvm") is not None:
        skipped = stage["backend_candidates"]["tvm"]["skipped"]
        assert "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross" in skipped


def test_coral_says_the_edge_tpu_is_unused_in_json_and_manifest(tmp_path, teacher_path):
    """The Coral's own toolchain (edgetpu_compiler, TFLite) is its first preference; edgec
    cannot produce it, so its CPU runs the stage, and --json says so in ``notes``."""
    out = tmp_path / "coral"
    result = compile_cli(
        str(teacher_path), "-t", "coral-dev-board", "--students", "none", "--precision",
        "fp32", "-o", str(out), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (note,) = json.loads(result.stdout)["notes"]
    (stage,) = manifest_of(out)["stages"]
    assert stage["backend_fallback"]["wanted"] == "edgetpu"
    assert "edgetpu_compiler" in stage["backend_fallback"]["reason"]
    assert note == stage["backend_fallback"]["note"]
    assert note.startswith("coral-dev-board: stage teacher built with onnxruntime for the CPU")
    assert note.endswith("the Google Edge TPU is not used")


def test_an_explicit_backend_is_no_fallback(tmp_path, teacher_path):
    """--backend onnxruntime is the user's choice: nothing is recorded or printed."""
    out = tmp_path / "ort"
    result = compile_cli(
        str(teacher_path), "-t", "jetson-nano", "--backend", "onnxruntime", "--students", "none",
        "-o", str(out), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["notes"] == []
    assert "backend_fallback" not in manifest_of(out)["stages"][0]


@needs_tvm
def test_explicit_tvm_without_the_cross_compiler_exits_2_naming_the_packages(
    tmp_path, teacher_path, no_cross_compiler
):
    """--backend tvm for the Pi with no aarch64 cross compiler: one sentence naming both
    packages the link needs, exit 2, no bundle."""
    out = tmp_path / "pi"
    result = compile_cli(
        str(teacher_path), "-t", "raspberry-pi-4", "--backend", "tvm", "--students", "none",
        "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Backend 'tvm' cannot build for raspberry-pi-4 here")
    assert "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross" in last
    assert not out.exists()


def _pi_refused_and_nano_fallback(tmp_path, teacher_path, *extra: str) -> tuple[str, dict]:
    """Compile for the Pi with an explicit ``--backend tvm`` (must be exit 2, nothing written)
    and for the Nano under auto (must succeed); return the Pi's last stderr line and the
    Nano's stage entry."""
    out = tmp_path / "pi"
    result = compile_cli(
        str(teacher_path), "-t", "raspberry-pi-4", "--backend", "tvm", "--students", "none",
        *extra, "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert not out.exists()
    last = result.stderr.strip().splitlines()[-1]
    nano = tmp_path / "nano"
    result = compile_cli(
        str(teacher_path), "-t", "jetson-nano", "--students", "none", "-o", str(nano)
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (stage,) = manifest_of(nano)["stages"]
    return last, stage


@needs_tvm
def test_cross_compiler_without_its_c_library_is_exit_2_or_a_fallback(
    tmp_path, teacher_path, no_cross_compiler
):
    """``gcc-aarch64-linux-gnu`` installed without ``libc6-dev-arm64-cross`` (it is only a
    recommendation) finds no ``crti.o``: --backend tvm exits 2 naming the package, and auto
    on the Nano falls back to ONNX Runtime with that reason recorded."""
    fake_compiler(no_cross_compiler, 'echo "$1" | grep -q print-file-name && echo crti.o')
    last, stage = _pi_refused_and_nano_fallback(tmp_path, teacher_path)
    assert "crti.o" in last and "libc6-dev-arm64-cross" in last
    assert stage["backend"] == "onnxruntime"
    assert "crti.o" in stage["backend_candidates"]["tvm"]["skipped"]


@needs_tvm
def test_a_failing_link_is_exit_2_never_an_internal_error(
    tmp_path, teacher_path, no_cross_compiler
):
    """A cross compiler that passes the start-file check but fails the link (as a broken
    sysroot does) is exit 2 with the linker's last line and what to install, not exit 3;
    under auto the Nano's stage falls back to ONNX Runtime and records TVM's failure."""
    fake_compiler(
        no_cross_compiler,
        'case "$1" in -print-file-name*) echo /bin/sh; exit 0;; esac\n'
        'echo "ld: cannot find crti.o: No such file or directory" >&2; exit 1',
    )
    last, stage = _pi_refused_and_nano_fallback(tmp_path, teacher_path, "--precision", "fp32")
    assert "cannot find crti.o" in last and "libc6-dev-arm64-cross" in last
    assert stage["backend"] == "onnxruntime"
    assert "cannot find crti.o" in stage["backend_candidates"]["tvm"]["failed"]
    assert stage["backend_fallback"]["wanted"] == "tensorrt"


# ---------------------------------------------------------- backend facts, not backend names
@pytest.mark.parametrize(
    ("backend", "target", "on_accelerator"),
    [
        ("tvm", "jetson-nano", True),
        ("tvm", "raspberry-pi-4", False),
        ("onnxruntime", "jetson-nano", False),
        ("tensorrt", "jetson-nano", True),
        # The Edge TPU runs the .tflite only where edgetpu_compiler compiled it.
        ("edgetpu", "coral-dev-board", shutil.which("edgetpu_compiler") is not None),
    ],
)
def test_backends_say_whether_they_use_the_accelerator(backend, target, on_accelerator):
    assert get_backend(backend).uses_accelerator(load_target(target)) is on_accelerator


def test_only_tvm_measures_on_a_device_and_tunes():
    facts = {
        name: (b.measures_on_device, b.tunes, b.needs_tuning_on_cpu)
        for name in backend_names()
        for b in [get_backend(name)]
    }
    assert facts["tvm"] == (True, True, True)
    assert facts["onnxruntime"] == facts["tensorrt"] == facts["edgetpu"] == (False,) * 3


def test_the_compiler_asks_backends_instead_of_branching_on_their_names():
    """No ``name == "tvm"``-style branch is left in ``src/edgec/compiler`` (the backend's
    capabilities answer instead; dispatch is the registry's table)."""
    compiler = Path(__file__).resolve().parents[2] / "src" / "edgec" / "compiler"
    branch = re.compile(r"""(==|!=|\bin)\s*\(?["'](tvm|tensorrt|edgetpu)["']""")
    found = [
        f"{path.relative_to(compiler)}:{number}: {line.strip()}"
        for path in sorted(compiler.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if branch.search(line)
    ]
    assert found == []


def test_a_hiccup_in_one_timing_window_does_not_decide_the_backend(tmp_path, teacher_path):
    """A candidate whose first timing window caught a hiccup (a 1 s p99 on a sub-millisecond
    stage) is timed again, for real, and keeps its better pass: the choice compares backends,
    not the machine's noise."""
    from edgec.compiler.backend_choice import _second_pass
    from edgec.config import CompileConfig
    from edgec.targets.base import BuildOptions, LatencyStats

    backend, host = get_backend("onnxruntime"), load_target("host")
    artifact = backend.build(teacher_path, host, tmp_path, BuildOptions("fp32"))
    hiccup = LatencyStats(p50=0.1, p90=0.2, p99=1000.0, mean=10.0, source="measured-host", runs=50)
    record = {"onnxruntime": {"latency_ms": hiccup.to_json()}}
    config = CompileConfig(
        model=teacher_path, target="host", output=tmp_path / "b", measure_seconds=0.2
    )
    [(_, _, kept)] = _second_pass(
        [(backend, artifact, hiccup)], None, host, host, "fp32", config, record
    )
    assert kept.p99 < 100 and kept.source == "measured-host"
    assert record["onnxruntime"]["latency_ms"]["p99"] == round(kept.p99, 4)
