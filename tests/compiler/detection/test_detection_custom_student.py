"""``--student FILE.onnx`` for a detector: a student whose outputs are not laid out as the
teacher's detection head is refused in one sentence (exit 2, nothing written); one that is is
distilled from the teacher and joins the detection cascade as a device stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgec.cli import main

REPO = Path(__file__).resolve().parents[3]
DETECTOR = REPO / "examples" / "digits-detect" / "teacher.onnx"


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and lines[-1].endswith("."), lines
    return lines[-1]


def _swapped_outputs(path: Path) -> Path:
    """The example detector with its two outputs listed scores first (boxes second)."""
    model = onnx.load(DETECTOR)
    outputs = list(model.graph.output)
    del model.graph.output[:]
    model.graph.output.extend(reversed(outputs))
    onnx.save(model, path)
    return path


def _fewer_candidates(path: Path) -> Path:
    """A model with the detector's input and a head of 32 candidates, not 64."""
    h = onnx.helper
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 64, 64])
    boxes = h.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1, 32, 4])
    scores = h.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [1, 32, 10])
    flat = h.make_node("Reshape", ["x", "shape"], ["flat"])
    nodes = [
        flat,
        h.make_node("Slice", ["flat", "s0", "e0", "ax"], ["b"]),
        h.make_node("Slice", ["flat", "s1", "e1", "ax"], ["raw"]),
        h.make_node("Sigmoid", ["raw"], ["s"]),
    ]
    ints = onnx.numpy_helper.from_array
    inits = [
        ints(np.array([1, 32, 128], np.int64), "shape"),
        ints(np.array([0], np.int64), "s0"),
        ints(np.array([4], np.int64), "e0"),
        ints(np.array([4], np.int64), "s1"),
        ints(np.array([14], np.int64), "e1"),
        ints(np.array([2], np.int64), "ax"),
    ]
    graph = h.make_graph(nodes, "fewer", [x], [boxes, scores], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("make", [_swapped_outputs, _fewer_candidates])
def test_a_student_whose_outputs_are_not_the_teachers_detection_head_is_refused(tmp_path, make):
    """Outputs in another order, or another number of candidates: one sentence that names the
    teacher's head, exit 2, nothing written (before any data is loaded or anything trains)."""
    student = make(tmp_path / "student.onnx")
    out = tmp_path / "b"
    result = run("compile", str(DETECTOR), "--target", "raspberry-pi-4", "--students", "none",
                 "--student", f"mine={student}:trained", "-o", str(out))  # fmt: skip
    line = _one_error_line(result)
    assert "--student mine" in line and "do not match the teacher's detection head" in line
    assert "boxes [1, 64, 4] then class probabilities [1, 64, 10]" in line
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.train
def test_a_detection_student_of_your_own_is_distilled_and_joins_the_cascade(tmp_path):
    """An untrained ``--student`` with the teacher's head (here: the teacher's own
    architecture) is distilled from the teacher on digits-detect, exported with the teacher's
    names, and becomes the device stage in front of the teacher."""
    pytest.importorskip("torch", reason="students need the train extra")
    pytest.importorskip("faster_coco_eval", reason="mAP needs the detection extra")
    student = tmp_path / "mine.onnx"
    student.write_bytes(DETECTOR.read_bytes())
    out = tmp_path / "bundle"
    result = run("compile", str(DETECTOR), "--target", "raspberry-pi-4", "--data",
                 "digits-detect", "--students", "none", "--student", f"mine={student}",
                 "--distill-epochs", "4", "--budget-ms", "50", "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert [(s["name"], s["tier"]) for s in manifest["stages"]] == [
        ("mine", "device"),
        ("teacher", "gateway"),
    ]
    mine = stages["mine"]  # a stage's details are fields of its manifest entry
    assert mine["custom"]["trained"] == "distilled"
    assert mine["distillation"]["epochs_run"] == 4
    assert mine["distillation"]["export_error"] < 1e-3
    assert stages["mine"]["accuracy"] > 0.5  # four epochs from the teacher's own weights
    assert manifest["students"]["custom"][0]["name"] == "mine"
    assert "mine" in manifest["policy"]["detection"]["thresholds"]
