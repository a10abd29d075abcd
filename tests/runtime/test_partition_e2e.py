"""End to end: a partitioned teacher, served by the generated gateway on loopback.

``edgec compile --partition s`` on the bottleneck model (a cheap stem that shrinks the input
24x in bytes, then heavy convolutions) for the loopback target cuts after the stem. The
generated device runtime then runs the stem, sends its output int8-encoded (the encoding the
planner prefers for that cut on a 50 Mbps link), and the generated gateway finishes. Its
answers must be what the two halves give through the same encoding, computed here with ONNX
Runtime directly. With students in front (digits), the partitioned teacher is the
cascade's last stage and the live run must keep the planner's accuracy and offload rate.
"""

from __future__ import annotations

import http.client
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from runtime_helpers import TEACHER, write_loopback_target

from edgec.bundle.launch import import_runtime
from edgec.compiler import compile_model
from edgec.config import CompileConfig
from edgec.data import load_dataset
from edgec.runtime import codec

pytestmark = pytest.mark.slow


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_a_cut_after_the_stem_gives_two_stages_and_a_small_request(bottleneck_bundle):
    manifest = bottleneck_bundle.manifest
    stages = [(s["name"], s["tier"], s["role"]) for s in manifest["stages"]]
    assert stages == [("teacher-prefix", "device", "prefix"), ("teacher", "gateway", "teacher")]
    partition = manifest["partition"]
    assert (partition["cut"], partition["tensor"], partition["encoding"]) == ("s", "s", "int8")
    assert partition["shape"] == [1, 8, 56, 56]
    # Int8 codes of the stem's output: 1/6 of the input's elements, 1/24 of its bytes.
    raw_input = codec.request_size([1, 3, 224, 224], "float32")
    assert partition["request_bytes"] < raw_input / 20
    assert manifest["policy"]["payload_bytes"] == partition["request_bytes"]
    assert manifest["policy"]["bandwidth_saved"] > 0.95
    root = bottleneck_bundle.bundle
    prefix = onnx.load(root / "stages" / "teacher-prefix" / "model.onnx")
    suffix = onnx.load(root / "stages" / "teacher" / "model.onnx")
    assert [o.name for o in prefix.graph.output] == ["s"]
    assert [i.name for i in suffix.graph.input] == ["s"]
    assert bottleneck_bundle.to_json()["partition"]["cut"] == "s"


def test_the_stream_gives_what_the_two_halves_give_through_the_link(
    bottleneck_bundle, start_gateway
):
    root = bottleneck_bundle.bundle
    frames = np.random.default_rng(3).standard_normal((5, 1, 3, 224, 224)).astype(np.float32)
    prefix = _session(root / "stages" / "teacher-prefix" / "model.onnx")
    suffix = _session(root / "stages" / "teacher" / "model.onnx")
    expected = []
    for x in frames:
        middle = prefix.run(None, {"x": x})[0]
        received = codec.decode_int8(*codec.encode_int8(middle))
        expected.append(_softmax(suffix.run(None, {"s": received})[0]))
    gateway = start_gateway(root)
    device = import_runtime(root, "device")
    runtime = device.DeviceRuntime(root, gateway_url=gateway.url, logger=logging.getLogger("t"))
    with runtime:
        answers = list(runtime.stream(iter(frames)))
    request = bottleneck_bundle.manifest["partition"]["request_bytes"]
    for answer, probs in zip(answers, expected, strict=True):
        assert (answer.stage, answer.route) == ("teacher", "offloaded")
        assert answer.prediction == int(probs.argmax())
        np.testing.assert_allclose(answer.probs, probs, atol=1e-5)
        assert abs(answer.bytes_sent - request) < 40  # the real Host header differs


def test_the_gateway_refuses_the_raw_input_and_a_missing_scale(bottleneck_bundle, start_gateway):
    gateway = start_gateway(bottleneck_bundle.bundle)
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        body, headers = codec.encode_tensor(np.zeros((1, 3, 224, 224), np.float32))
        connection.request("POST", codec.PATH, body, headers)
        response = connection.getresponse()
        assert response.status in (400, 413)
        response.read()
        connection.close()
        body, headers = codec.encode_tensor(np.zeros((1, 8, 56, 56), np.float32), encoding="int8")
        del headers[codec.HEADER_SCALE]
        connection.request("POST", codec.PATH, body, headers)
        response = connection.getresponse()
        assert response.status == 400
        assert codec.HEADER_SCALE in json.loads(response.read())["error"]
    finally:
        connection.close()


def test_an_int8_scale_that_overflows_is_a_400_and_no_answer_carries_nan(
    bottleneck_bundle, start_gateway
):
    """X-Edgec-Scale: 1e38 decodes to Inf: a 400 with valid JSON (it used to be a 200 with
    "probs": [NaN, ...]), and the server answers a good request afterwards."""
    gateway = start_gateway(bottleneck_bundle.bundle)
    x = np.random.default_rng(0).random((1, 8, 56, 56)).astype(np.float32)
    body, headers = codec.encode_tensor(x, encoding="int8")
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        connection.request("POST", codec.PATH, body, {**headers, codec.HEADER_SCALE: "1e38"})
        response = connection.getresponse()
        reply = json.loads(response.read(), parse_constant=lambda name: pytest.fail(name))
        assert response.status == 400 and "overflows" in reply["error"]
        connection.request("POST", codec.PATH, body, headers)
        response = connection.getresponse()
        reply = json.loads(response.read(), parse_constant=lambda name: pytest.fail(name))
        assert response.status == 200 and len(reply["probs"]) == 10
    finally:
        connection.close()


def test_without_its_gateway_a_partitioned_pipeline_says_it_has_no_answer(bottleneck_bundle):
    root = bottleneck_bundle.bundle
    device = import_runtime(root, "device")
    closed = "http://127.0.0.1:9"  # discard port: nothing listens
    with device.DeviceRuntime(root, gateway_url=closed, logger=logging.getLogger("t")) as rt:
        answer = rt.infer(np.zeros((1, 3, 224, 224), np.float32))
    assert answer.prediction == -1
    assert answer.route.startswith("fallback-")


def test_students_then_a_partitioned_teacher_keep_the_planned_accuracy(tmp_path, start_gateway):
    """Digits: a student on the device, the teacher cut after its first pooling layer."""
    pytest.importorskip("torch")
    result = compile_model(
        CompileConfig(
            model=TEACHER,
            target=str(write_loopback_target(tmp_path)),
            output=tmp_path / "bundle",
            data="digits",
            students=(0.3,),
            distill_epochs=2,
            measure_seconds=0.2,
            accuracy_tolerance=0.0,
            partition="/pool1/MaxPool_output_0",
        )
    )
    roles = [(s["tier"], s["role"]) for s in result.manifest["stages"]]
    assert roles == [("device", "student"), ("device", "prefix"), ("gateway", "teacher")]
    policy = result.manifest["policy"]
    data = load_dataset("digits")
    gateway = start_gateway(result.bundle)
    device = import_runtime(result.bundle, "device")
    runtime = device.DeviceRuntime(
        result.bundle, gateway_url=gateway.url, logger=logging.getLogger("t")
    )
    with runtime:
        answers = list(runtime.stream(iter(x[None] for x in data.x_val)))
    accuracy = np.mean([a.prediction == y for a, y in zip(answers, data.y_val, strict=True)])
    offloaded = np.mean([a.route == "offloaded" for a in answers])
    # No budget: routing depends on confidence alone, so the live run replays the plan.
    assert accuracy == pytest.approx(policy["expected_accuracy"], abs=0.01)
    assert offloaded == pytest.approx(policy["offload_rate"], abs=0.02)
    classifiers = {s["name"] for s in result.manifest["stages"] if s["role"] != "prefix"}
    assert {a.stage for a in answers} <= classifiers


def test_edgec_run_with_a_dead_gateway_and_no_answer_warns_once_and_exits_1(
    bottleneck_bundle, tmp_path
):
    """Every frame needs the gateway and it is down: one warning on stderr (not one per
    frame), a line per frame saying there is no answer, and exit 1 (it used to be 0)."""
    from click.testing import CliRunner

    from edgec.cli import main

    frames = tmp_path / "frames.npy"
    np.save(frames, np.zeros((3, 3, 224, 224), np.float32))
    root = bottleneck_bundle.bundle
    result = CliRunner().invoke(
        main, ["run", str(root), str(frames), "--gateway", "http://127.0.0.1:9", "--json"]
    )
    assert result.exit_code == 1, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["prediction"] for line in lines] == [-1, -1, -1]
    assert result.stderr.count("did not answer") == 1, result.stderr
    assert "No frame of 3 got an answer" in result.stderr
    text = CliRunner().invoke(
        main, ["run", str(root), str(frames), "--gateway", "http://127.0.0.1:9"]
    )
    assert text.exit_code == 1
    assert text.stdout.count("no answer") == 3 and "class -1" not in text.stdout, text.stdout


def test_the_standalone_device_runtime_with_a_dead_gateway_warns_once_and_exits_1(
    bottleneck_bundle, tmp_path
):
    """`python -B -m runtime.device` on a device without edgec: the same contract."""
    import subprocess
    import sys

    frames = tmp_path / "frames.npy"
    np.save(frames, np.zeros((3, 3, 224, 224), np.float32))
    command = [sys.executable, "-B", "-m", "runtime.device", str(frames), "--json", "--quiet"]
    result = subprocess.run(
        [*command, "--gateway", "http://127.0.0.1:9"],
        cwd=bottleneck_bundle.bundle,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr.count("warning: the gateway did not answer") == 1, result.stderr
    assert "no frame of 3 got an answer" in result.stderr
