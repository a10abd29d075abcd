"""``edgec run`` and ``edgec serve``: the bundle's own generated runtime behind the CLI.

A teacher-only bundle runs end to end (arrays, images, ``--json``); its answers equal ONNX
Runtime's on the same inputs. A cascade runs without a gateway (device stages answer) and with
one. Bad input is exit 2 with one sentence; a signed bundle that does not verify against
``--key`` is refused with exit 1.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

from edgec.bundle import trust
from edgec.bundle.io import read_manifest
from edgec.bundle.launch import import_runtime
from edgec.cli import main
from edgec.data import load_dataset

pytestmark = pytest.mark.slow
KEYS = ("input", "prediction", "confidence", "stage", "latency_ms", "route")


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def assert_bad_input(result, fragment: str, code: int = 2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), lines
    assert fragment in result.stderr, result.stderr


@pytest.fixture(scope="module")
def val_frames(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    data = load_dataset("digits")
    path = tmp_path_factory.mktemp("frames") / "val.npy"
    np.save(path, data.x_val[:60])
    return path, data.x_val[:60], data.y_val[:60]


def test_run_teacher_only_bundle_matches_onnxruntime(teacher_bundle, val_frames):
    """--json: one object per input with exactly the documented keys, the teacher's answers."""
    path, x, _ = val_frames
    result = run("run", str(teacher_bundle), str(path), "--json")
    assert result.exit_code == 0, result.output
    lines = _json_lines(result.stdout)
    assert [line["input"] for line in lines] == list(range(len(x)))
    assert all(tuple(line) == KEYS and line["stage"] == "teacher" for line in lines)
    artifact = teacher_bundle / read_manifest(teacher_bundle)["stages"][0]["artifact"]
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    expected = [int(session.run(None, {"x": x[i : i + 1]})[0].argmax()) for i in range(len(x))]
    assert [line["prediction"] for line in lines] == expected
    assert all(0 < line["confidence"] <= 1 and line["latency_ms"] > 0 for line in lines)
    # The code that ran is the bundle's generated runtime, not a copy inside edgec.
    loaded = [m for name, m in sys.modules.items() if name.startswith("edgec_bundle_runtime_")]
    assert any(Path(m.__file__).is_relative_to(teacher_bundle.resolve()) for m in loaded)
    assert not list(teacher_bundle.rglob("__pycache__"))  # nothing written into the bundle


def test_run_reads_images(teacher_bundle, tmp_path):
    """An image is resized to the model's input and answered."""
    digit = (load_dataset("digits").x_val[0, 0] * 255).astype(np.uint8)
    Image.fromarray(digit).resize((32, 32)).save(tmp_path / "digit.png")
    result = run("run", str(teacher_bundle), str(tmp_path / "digit.png"), "--json")
    assert result.exit_code == 0, result.output
    assert _json_lines(result.stdout)[0]["stage"] == "teacher"


def test_run_cascade_without_and_with_a_gateway(cascade_bundle, val_frames, start_gateway):
    """Without a gateway the device stages answer everything; with one, the unsure frames
    are answered by the teacher, and accuracy does not drop."""
    path, _, labels = val_frames
    alone = run("run", str(cascade_bundle), str(path), "--json")
    assert alone.exit_code == 0, alone.output
    alone_lines = _json_lines(alone.stdout)
    assert {line["stage"] for line in alone_lines} <= {"tiny", "small"}
    gateway = start_gateway(cascade_bundle)
    both = run("run", str(cascade_bundle), str(path), "--gateway", gateway.url, "--json")
    assert both.exit_code == 0, both.output
    both_lines = _json_lines(both.stdout)
    assert "teacher" in {line["stage"] for line in both_lines}
    right = [
        np.mean([d["prediction"] == y for d, y in zip(r, labels, strict=True)])
        for r in (alone_lines, both_lines)
    ]
    assert right[1] >= right[0]


def test_the_generated_runtime_runs_on_its_own(teacher_bundle, val_frames):
    """`python -B -m runtime.device` from the bundle directory, without the edgec CLI."""
    path, x, _ = val_frames
    result = subprocess.run(
        [sys.executable, "-B", "-m", "runtime.device", str(path), "--json", "--quiet"],
        cwd=teacher_bundle,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(_json_lines(result.stdout)) == len(x)


def test_a_signed_bundle_runs_with_its_key_and_is_refused_when_tampered(
    teacher_bundle, val_frames, tmp_path
):
    """--key: a bundle that verifies runs; one with a changed file is refused (exit 1)."""
    path = val_frames[0]
    private, public = trust.generate_keys(tmp_path / "keys")
    bundle = tmp_path / "signed"
    shutil.copytree(teacher_bundle, bundle)
    trust.sign_bundle(bundle, private)
    assert run("run", str(bundle), str(path), "--key", str(public)).exit_code == 0
    config = bundle / "runtime" / "bundle_config.py"
    config.write_text(config.read_text().replace('"max-prob"', '"margin"'))
    refused = run("run", str(bundle), str(path), "--key", str(public))
    assert_bad_input(refused, "Refusing to run", code=1)
    assert "runtime/bundle_config.py" in refused.stderr
    assert run("run", str(bundle), str(path)).exit_code == 0  # no key: not verified


def test_serve_then_sigterm_exits_cleanly(cascade_bundle, start_gateway):
    """`edgec serve` announces its URL and exits 0 on SIGTERM."""
    gateway = start_gateway(cascade_bundle, "--workers", "1")
    assert gateway.url.startswith("http://127.0.0.1:")
    assert gateway.terminate() == 0


def test_bad_input_is_one_sentence(teacher_bundle, cascade_bundle, val_frames, tmp_path):
    """Missing inputs, unknown types, not a bundle, no runtime, bad gateway URL, serving a
    bundle without gateway stages or with an empty queue, an unsupported backend and a taken
    port: exit 2."""
    path = val_frames[0]
    assert_bad_input(run("run", str(teacher_bundle), str(tmp_path / "no.npy")), "does not exist")
    (tmp_path / "a.csv").write_text("1,2")
    assert_bad_input(run("run", str(teacher_bundle), str(tmp_path / "a.csv")), "unknown type")
    assert_bad_input(run("run", str(tmp_path), str(path)), "not an edgec bundle")
    bare = tmp_path / "bare"
    shutil.copytree(teacher_bundle, bare)
    shutil.rmtree(bare / "runtime")
    assert_bad_input(run("run", str(bare), str(path)), "no generated runtime")
    assert_bad_input(
        run("run", str(cascade_bundle), str(path), "--gateway", "ftp://x"), "is not http"
    )
    assert_bad_input(run("serve", str(teacher_bundle)), "no gateway stages")
    assert_bad_input(
        run("serve", str(cascade_bundle), "--port", "0", "--queue-size", "0"), "at least 1"
    )
    odd = tmp_path / "odd"
    shutil.copytree(teacher_bundle, odd)
    config = odd / "runtime" / "bundle_config.py"
    config.write_text(config.read_text().replace('"onnxruntime"', '"tensorrt"', 1))
    assert_bad_input(run("run", str(odd), str(path)), "'tensorrt' backend")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_bad_input(run("serve", str(cascade_bundle), "--port", port), "Cannot listen")


def test_stream_prepares_the_next_frame_while_the_current_one_runs(teacher_bundle):
    """Double buffering: when answer n arrives, frame n + 1 is already being prepared on the
    prefetch thread (a sequential loop would only start it after this consumer returns)."""
    device = import_runtime(teacher_bundle, "device")
    x = load_dataset("digits").x_val[:6]
    started = [threading.Event() for _ in x]
    threads: list[str] = []

    def prepare(index: int) -> np.ndarray:
        threads.append(threading.current_thread().name)
        started[index].set()
        return x[index : index + 1]

    with device.DeviceRuntime(teacher_bundle) as runtime:
        for index, _ in enumerate(runtime.stream(range(len(x)), prepare)):
            if index + 1 < len(x):
                assert started[index + 1].wait(5.0), f"frame {index + 1} was not prefetched"
    assert all(name.startswith("edgec-prepare") for name in threads)


def test_a_dead_gateway_is_one_warning_and_the_device_answers(cascade_bundle, val_frames):
    """Every offload falls back: exit 0 (the device stages answered), one warning on stderr
    in words (it used to be silent), not one per frame."""
    path = val_frames[0]
    result = run("run", str(cascade_bundle), str(path), "--gateway", "http://127.0.0.1:9", "--json")
    assert result.exit_code == 0, result.output
    lines = _json_lines(result.stdout)
    assert len(lines) == 60 and all(line["prediction"] >= 0 for line in lines)
    assert any(line["route"].startswith("fallback-") for line in lines)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "did not answer" in warnings[0], result.stderr


def test_a_stage_that_outputs_nan_never_prints_nan_and_exits_1(
    teacher_bundle, val_frames, tmp_path
):
    """A bundle whose model gives NaN (its artifact replaced after the build by the FP32
    teacher with NaN weights; unsigned so it runs): every --json line is valid JSON with no
    answer (-1, route non-finite), and since no frame got an answer the run exits 1. Before,
    it printed "confidence": NaN and exited 0."""
    import onnx
    from onnx import numpy_helper
    from runtime_helpers import TEACHER

    bundle = tmp_path / "nan"
    shutil.copytree(teacher_bundle, bundle)
    model = onnx.load(TEACHER)
    init = max(model.graph.initializer, key=lambda i: int(np.prod(i.dims)))
    weights = np.full(tuple(init.dims), np.nan, np.float32)
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    onnx.save(model, bundle / read_manifest(bundle)["stages"][0]["artifact"])
    result = run("run", str(bundle), str(val_frames[0]), "--json")
    assert result.exit_code == 1, result.output
    lines = [
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in the output"))
        for line in result.stdout.splitlines()
    ]
    assert len(lines) == 60
    assert all(line["prediction"] == -1 and line["route"] == "non-finite" for line in lines)
    assert "No frame of 60 got an answer" in result.stderr


def test_serve_bundle_takes_a_request_timeout_and_refuses_a_non_positive_one(cascade_bundle):
    from edgec.bundle.launch import serve_bundle
    from edgec.errors import BadInputError

    with pytest.raises(BadInputError, match="request timeout must be positive"):
        serve_bundle(cascade_bundle, port=0, request_timeout_s=0.0)
