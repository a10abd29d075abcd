"""The litert and edgetpu backends through ``edgec compile``: the done-when compile, the
Coral's full-integer model, fallbacks, bad input, and the generated runtime's loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

pytest.importorskip("ai_edge_litert", reason="the litert extra (ai-edge-litert) is not installed")

from litert_graphs import unsupported_op_model

from edgec.cli import main
from edgec.compiler.evaluate import accuracy, predict
from edgec.data import load_dataset
from edgec.runtime.loaders import load_stage
from edgec.targets.litert.backend import integer_report
from edgec.targets.litert.runner import LiteRtRunner

REPO = Path(__file__).resolve().parents[3]
DESCRIPTORS = REPO / "src" / "edgec" / "targets" / "descriptors"
FAST = ("--students", "none", "--measure-seconds", "0.3")


def compile_cli(*args) -> object:
    return CliRunner().invoke(main, ["compile", *map(str, args)], catch_exceptions=False)


def stage_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["stages"][0]


@pytest.fixture
def pi4_int8(pi4_litert_int8_bundle) -> Path:
    """The done-when compile: digits teacher, Raspberry Pi 4, LiteRT, INT8 (once a session)."""
    return pi4_litert_int8_bundle


@pytest.mark.slow
def test_pi4_int8_ships_a_full_integer_tflite_within_a_point_of_fp32(pi4_int8):
    """Done when: a .tflite stage whose non-I/O tensors are all integer, and whose own
    accuracy on the digits validation split is within 1 point of the FP32 teacher's."""
    stage = stage_of(pi4_int8)
    assert stage["backend"] == "litert" and stage["precision"] == "int8"
    assert stage["artifact"] == "stages/teacher/model.tflite"
    tflite = pi4_int8 / stage["artifact"]
    assert integer_report(tflite.read_bytes()) == {"fully_integer": True, "float_tensors": 0}
    assert stage["backend_options"]["fully_integer"] is True
    assert stage["backend_options"]["threads"] == 4  # the Pi 4's cores
    # The .tflite itself was evaluated (LiteRT's int8 is exact on every CPU), not a stand-in.
    assert stage.get("accuracy_measured_with") is None
    data = load_dataset("digits", seed=0)
    int8 = accuracy(predict(LiteRtRunner(tflite), data.x_val), data.y_val)
    fp32 = json.loads((REPO / "examples" / "digits" / "teacher.json").read_text())
    assert int8 >= fp32["val_accuracy"] - 0.01
    assert stage["accuracy"] == pytest.approx(int8, abs=1e-6)


@pytest.mark.slow
def test_the_generated_runtime_loads_the_tflite_stage(pi4_int8):
    """The bundle's loader table runs the .tflite (ai_edge_litert) and answers as the
    compiler's runner; requirements.txt names the package."""
    stage = stage_of(pi4_int8)
    loaded = load_stage(pi4_int8, {**stage, "options": stage["backend_options"]})
    assert loaded.runs_on == "litert-cpu"
    x = load_dataset("digits", seed=0).x_val[:8]
    reference = LiteRtRunner(pi4_int8 / stage["artifact"])
    for sample in x:
        got = loaded.run(sample[None])
        want = reference.run({reference.input_names[0]: sample[None]})[0]
        assert np.array_equal(got, want)
    requirements = (pi4_int8 / "runtime" / "requirements.txt").read_text()
    assert "ai-edge-litert==2.3.0" in requirements


@pytest.mark.slow
def test_coral_ships_full_integer_tflite_with_uint8_io_and_the_edgetpu_section(tmp_path):
    """--target coral-dev-board --precision int8: the edgetpu backend's .tflite has uint8 I/O
    and integer tensors; without edgetpu_compiler on PATH the section says so, with the op
    count against Coral's documented list."""
    out = tmp_path / "coral"
    result = compile_cli(
        REPO / "examples" / "digits" / "teacher.onnx", "--target", "coral-dev-board",
        "--precision", "int8", "--data", "digits", "-o", out, *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stage = stage_of(out)
    assert stage["backend"] == "edgetpu" and "backend_fallback" not in stage
    options = stage["backend_options"]
    assert options["input_types"] == ["uint8"] and options["output_types"] == ["uint8"]
    assert options["fully_integer"] is True
    section = options["edgetpu"]
    assert section["compiled"] is False and "edgetpu_compiler" in section["reason"]
    assert section["ops_supported"] == section["ops_total"] == options["ops"]
    assert section["supported_ops_source"].startswith("https://coral.ai/docs/edgetpu/")
    assert not (out / "stages" / "teacher" / "model_edgetpu.tflite").exists()
    loaded = load_stage(out, {**stage, "options": options})
    assert loaded.runs_on == "litert-cpu"
    data = load_dataset("digits", seed=0)
    preds = [int(np.argmax(loaded.run(x[None]))) for x in data.x_val[:50]]
    assert np.mean(np.asarray(preds) == data.y_val[:50]) > 0.9


def test_forced_litert_on_an_op_it_lacks_is_one_sentence_exit_2(tmp_path):
    """--backend litert with an op the converter has no mapping for: exit 2, one line naming
    the op, no bundle left behind."""
    model = tmp_path / "erf.onnx"
    onnx.save(unsupported_op_model(), model)
    out = tmp_path / "out"
    result = compile_cli(
        model, "--target", "raspberry-pi-4", "--backend", "litert", "--precision", "fp32",
        "-o", out, *FAST,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "the ONNX op Erf" in error[0]
    assert "Traceback" not in result.output
    assert not out.exists()


def test_auto_on_host_falls_back_from_litert_with_the_reason(tmp_path):
    """Under --backend auto on this machine LiteRT is a candidate; a model it cannot convert
    ships with ONNX Runtime and the manifest records why LiteRT dropped out."""
    model = tmp_path / "erf.onnx"
    onnx.save(unsupported_op_model(), model)
    out = tmp_path / "out"
    result = compile_cli(model, "--target", "host", "--precision", "fp32", "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    stage = stage_of(out)
    assert stage["backend"] == "onnxruntime"
    assert "the ONNX op Erf" in stage["backend_candidates"]["litert"]["failed"]
    assert not any(p.suffix == ".tflite" for p in (out / "stages").rglob("*"))


def test_a_model_bigger_than_the_device_ram_is_refused(tmp_path):
    """A descriptor whose RAM is smaller than the teacher's weights: one sentence, exit 2,
    nothing written."""
    text = (DESCRIPTORS / "raspberry-pi-4.yaml").read_text()
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        text.replace("name: raspberry-pi-4", "name: tiny-board").replace(
            "ram_gb: 4", "ram_gb: 0.0001"
        )
    )
    out = tmp_path / "out"
    result = compile_cli(
        REPO / "examples" / "digits" / "teacher.onnx", "--target", tiny, "--backend",
        "litert", "-o", out, *FAST,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "does not fit tiny-board" in error and "0.0001 GB of RAM" in error
    assert not out.exists()


@pytest.mark.slow
def test_uint8_frames_feed_the_integer_model_directly(tmp_path):
    """--preprocess uint8,...: the .tflite's input is the uint8 frame itself (no float on the
    way in: the frame is the integer grid), every other tensor is integer, and the bundle's
    runtime classifies raw frames."""
    digits = load_dataset("digits", seed=0)
    x = np.concatenate([digits.x_train, digits.x_val])
    y = np.concatenate([digits.y_train, digits.y_val])
    frames = np.round(x * 16).astype(np.uint8).transpose(0, 2, 3, 1)  # NHWC, 0..16
    data = tmp_path / "frames.npz"
    np.savez(data, x=frames, y=y)
    out = tmp_path / "b"
    result = compile_cli(
        REPO / "examples" / "digits" / "teacher.onnx", "--target", "raspberry-pi-4",
        "--backend", "litert", "--precision", "int8", "--data", data, "--preprocess",
        "uint8,nhwc,gray,scale=0.0625", "-o", out, *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stage = stage_of(out)
    options = stage["backend_options"]
    assert options["input_types"] == ["uint8"] and options["fully_integer"] is True
    assert stage["accuracy"] >= 0.98
    loaded = load_stage(out, {**stage, "options": options})
    preds = [int(np.argmax(loaded.run(f[None]))) for f in frames[:100]]
    assert np.mean(np.asarray(preds) == y[:100]) >= 0.95


def test_auto_on_host_times_onnxruntime_and_litert_and_ships_the_faster(tmp_path):
    """--backend auto on this machine: both build the stage and are timed with the same
    policy; the lower p99 ships, the other's latency stays in the manifest, its file goes."""
    out = tmp_path / "out"
    result = compile_cli(
        REPO / "examples" / "digits" / "teacher.onnx", "--target", "host", "--precision",
        "fp32", "-o", out, *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stage = stage_of(out)
    candidates = stage["backend_candidates"]
    timed = {k: v["latency_ms"]["p99"] for k, v in candidates.items() if "latency_ms" in v}
    assert set(timed) == {"onnxruntime", "litert"}
    assert stage["backend"] == min(timed, key=timed.get)
    assert candidates[stage["backend"]]["chosen"] is True
    files = {"onnxruntime": "model.ort.onnx", "litert": "model.tflite"}
    loser = ({"onnxruntime", "litert"} - {stage["backend"]}).pop()
    assert not (out / "stages" / "teacher" / files[loser]).exists()
    assert (out / stage["artifact"]).is_file()
