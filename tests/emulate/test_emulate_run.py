"""``edgec run --emulate``: the bundle's own device runtime on an emulated Raspberry Pi 4.

The Raspberry Pi 4 build of the digits teacher (ONNX Runtime stages) runs under
``qemu-aarch64`` with Debian's arm64 Python and the real aarch64 numpy and onnxruntime wheels,
and answers every frame (an array file's and an image's) as the native ``edgec run`` does, each
line labelled ``"timing": "emulated"``. A TVM build for the Pi (an aarch64 object this machine
cannot load) runs only there, with the same answers. Without qemu, or without network on the
first run: one sentence, exit 2, nothing fetched; a bundle that does not verify against
``--key``: exit 1 before qemu starts.

The emulated runs use the real cache (``~/.cache/edgec/emulate``, or
``$EDGEC_EMULATE_CACHE``), which ``make test`` fills before the tests: reruns fetch nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgec.cli import main
from edgec.cli.runtime import _describe
from edgec.data import load_dataset
from edgec.emulate import bytecode, sysroot

pytestmark = pytest.mark.slow
KEYS = ("input", "prediction", "confidence", "stage", "latency_ms", "route")
FRAMES = 30


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def assert_bad_input(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), lines
    assert fragment in result.stderr, result.stderr


@pytest.fixture(scope="module")
def emulator() -> None:
    """qemu-aarch64 and the cached sysroot with numpy, onnxruntime and Pillow (fetched when
    missing)."""
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("no qemu-aarch64: apt-get install qemu-user (make test does)")
    try:
        sysroot.Fetcher().ensure(["numpy", "onnxruntime", "pillow"])
    except sysroot.SetupError as err:
        pytest.skip(f"the emulated device's files cannot be fetched: {err}")


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("frames") / "val.npy"
    np.save(path, load_dataset("digits").x_val[:FRAMES])
    return path


def test_emulated_run_answers_every_frame_as_the_native_run(emulator, pi_bundle, frames):
    """Same JSON keys plus timing=emulated; same prediction, stage and route on every frame,
    the 30 of an array file and an image (read by the aarch64 Pillow)."""
    digit = (load_dataset("digits").x_val[0, 0] * 255).astype(np.uint8)
    image = frames.parent / "digit.png"
    Image.fromarray(digit).save(image)
    native = run("run", str(pi_bundle), str(frames), str(image), "--json")
    assert native.exit_code == 0, native.output
    emulated = run("run", str(pi_bundle), str(frames), str(image), "--emulate", "--json")
    assert emulated.exit_code == 0, emulated.output
    want, got = _json_lines(native.stdout), _json_lines(emulated.stdout)
    assert len(got) == len(want) == FRAMES + 1
    assert all(tuple(line) == (*KEYS, "timing") for line in got)
    assert all(line["timing"] == "emulated" and line["latency_ms"] > 0 for line in got)
    assert [(g["input"], g["prediction"], g["stage"], g["route"]) for g in got] == [
        (w["input"], w["prediction"], w["stage"], w["route"]) for w in want
    ]
    # aarch64 ONNX Runtime (NEON kernels), x86 (AVX2): the same answer to float rounding.
    assert (
        max(abs(g["confidence"] - w["confidence"]) for g, w in zip(got, want, strict=True)) < 1e-4
    )
    assert not list(pi_bundle.rglob("__pycache__"))  # nothing written into the bundle
    # The cache's modules have their bytecode now: later runs compile none of them again.
    wheels = [sysroot.wheel_dir(name) for name in ("numpy", "onnxruntime", "pillow")]
    assert not bytecode.pending([sysroot.sysroot_dir(), *wheels])


def test_text_lines_label_an_emulated_latency():
    """Without --json, an emulated line says so next to its latency; a native one does not."""
    item = {"input": 3, "prediction": 7, "confidence": 0.91, "stage": "teacher"}
    item |= {"latency_ms": 150.25, "route": "local"}
    assert _describe(item) == "3: class 7 (p=0.910) from teacher in 150.250 ms [local]"
    assert _describe(item | {"timing": "emulated"}) == (
        "3: class 7 (p=0.910) from teacher in 150.250 ms (emulated) [local]"
    )


def test_without_qemu_it_is_one_sentence_and_fetches_nothing(
    pi_bundle, frames, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    monkeypatch.setenv(sysroot.CACHE_ENV, str(cache))
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu-aarch64 on it
    result = run("run", str(pi_bundle), str(frames), "--emulate", "--json")
    assert_bad_input(result, "--emulate needs qemu-aarch64 on PATH")
    assert "apt-get install qemu-user" in result.stderr
    assert result.stdout == "" and not cache.exists()


def test_without_network_on_first_use_it_is_one_sentence(
    pi_bundle, frames, tmp_path, monkeypatch, fake_qemu_path, closed_port_url
):
    """An unreachable mirror: exit 2, no output line, nothing left in the cache (qemu, a
    stand-in here, never starts)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(sysroot.CACHE_ENV, str(cache))
    monkeypatch.setenv(sysroot.MIRROR_ENV, closed_port_url("/debian"))
    monkeypatch.setenv("PATH", fake_qemu_path)
    result = run("run", str(pi_bundle), str(frames), "--emulate", "--json")
    assert_bad_input(result, "needs network access once")
    assert result.stdout == "" and "qemu must not run" not in result.stderr
    assert not cache.exists() or not any(cache.rglob("*"))


def test_a_bundle_that_does_not_verify_is_refused_before_the_emulator_starts(
    pi_bundle, frames, tmp_path, monkeypatch, fake_qemu_path
):
    """--key is checked on the host by edgec's own verifier: exit 1, nothing fetched, qemu
    (a stand-in) never started."""
    bundle = tmp_path / "signed"
    shutil.copytree(pi_bundle, bundle)
    for name in ("signer", "other"):
        assert run("keygen", str(tmp_path / name)).exit_code == 0
    assert run("sign", str(bundle), "--key", str(tmp_path / "signer" / "edgec.key")).exit_code == 0
    cache = tmp_path / "cache"
    monkeypatch.setenv(sysroot.CACHE_ENV, str(cache))
    monkeypatch.setenv("PATH", fake_qemu_path)
    other = str(tmp_path / "other" / "edgec.pub")
    result = run("run", str(bundle), str(frames), "--emulate", "--key", other)
    assert result.exit_code == 1, result.output
    assert "does not verify" in result.stderr and "qemu must not run" not in result.stderr
    assert result.stdout == "" and not cache.exists()


@pytest.mark.tvm
def test_tvm_build_for_the_pi_runs_under_emulation_only(emulator, frames, request):
    """The TVM stage is an aarch64 object: this machine's own run cannot load it, the emulated
    device (aarch64 TVM runtime wheels) answers every frame as the ONNX model does."""
    bundle = request.getfixturevalue("pi4_tvm_bundle")  # skips without TVM or cross tools
    teacher = Path(__file__).resolve().parents[2] / "examples" / "digits" / "teacher.onnx"
    assert run("run", str(bundle), str(frames)).exit_code == 2  # not on this CPU
    emulated = run("run", str(bundle), str(frames), "--emulate", "--json")
    assert emulated.exit_code == 0, emulated.output
    lines = _json_lines(emulated.stdout)
    import onnxruntime as ort

    session = ort.InferenceSession(str(teacher), providers=["CPUExecutionProvider"])
    x = np.load(frames)
    expected = [int(session.run(None, {"x": x[i : i + 1]})[0].argmax()) for i in range(FRAMES)]
    assert [line["prediction"] for line in lines] == expected
    assert all(line["timing"] == "emulated" for line in lines)


def test_full_integer_tflite_build_for_the_pi_answers_as_the_native_run(request, frames):
    """The LiteRT backend's full-integer INT8 .tflite for the Pi runs on the aarch64
    ai-edge-litert wheel (XNNPACK) under emulation and answers every frame as natively.
    Skips where this edgec has no litert backend or ai-edge-litert is not installed."""
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed")
    from edgec.errors import BadInputError
    from edgec.targets import get_backend

    try:
        get_backend("litert")
    except BadInputError:
        pytest.skip("this edgec has no litert backend")
    request.getfixturevalue("emulator")
    bundle = request.getfixturevalue("pi4_litert_int8_bundle")
    stages = json.loads((bundle / "manifest.json").read_text())["stages"]
    assert [Path(s["artifact"]).suffix for s in stages] == [".tflite"]
    native = run("run", str(bundle), str(frames), "--json")
    emulated = run("run", str(bundle), str(frames), "--emulate", "--json")
    assert native.exit_code == 0 and emulated.exit_code == 0, emulated.output
    want, got = _json_lines(native.stdout), _json_lines(emulated.stdout)
    assert len(got) == FRAMES and all(line["timing"] == "emulated" for line in got)
    assert [g["prediction"] for g in got] == [w["prediction"] for w in want]
