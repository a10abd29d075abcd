"""``edgec compile`` of a detector: the task is inferred, bad detection input is refused in one
sentence (exit 2, nothing written), and the issue's command builds a detection cascade that
``edgec run --json`` answers with boxes, classes, scores, the answering stage and the route."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgec.cli import main
from edgec.compiler.detection.contract import infer_task
from edgec.data import load_dataset

REPO = Path(__file__).resolve().parents[3]
DETECTOR = REPO / "examples" / "digits-detect" / "teacher.onnx"
CLASSIFIER = REPO / "examples" / "digits" / "teacher.onnx"


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_bad_input(result, fragment: str, out_dir: Path) -> None:
    """Exit 2, one ``error:`` line that ends the output and names the problem, nothing left."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and lines[-1].endswith("."), lines
    assert fragment in lines[-1]
    assert not out_dir.exists()


def test_task_is_inferred_from_the_outputs():
    """Two outputs [1, K, 4] and [1, K, C]: detection; one [1, C]: classification."""
    assert infer_task(onnx.load(DETECTOR), "auto") == "detection"
    assert infer_task(onnx.load(CLASSIFIER), "auto") == "classification"


def test_task_detection_on_a_classifier_is_refused_in_one_sentence(tmp_path):
    out = tmp_path / "b"
    result = run("compile", str(CLASSIFIER), "--target", "raspberry-pi-4", "--task", "detection",
                 "-o", str(out))  # fmt: skip
    assert_bad_input(result, "needs two outputs, boxes [1, K, 4] and class scores", out)


def test_anchors_of_the_wrong_shape_are_refused(tmp_path):
    out = tmp_path / "b"
    anchors = tmp_path / "anchors.npy"
    np.save(anchors, np.ones((10, 4), np.float32))
    result = run("compile", str(DETECTOR), "--target", "raspberry-pi-4", "--anchors",
                 str(anchors), "--students", "none", "-o", str(out))  # fmt: skip
    assert_bad_input(result, "must hold float [64, 4] anchors", out)


def test_a_malformed_postprocess_is_refused(tmp_path):
    out = tmp_path / "b"
    result = run("compile", str(DETECTOR), "--target", "raspberry-pi-4", "--postprocess",
                 "iou=2", "-o", str(out))  # fmt: skip
    assert_bad_input(result, "iou must be in (0, 1]", out)


def test_postprocess_on_a_classifier_is_refused(tmp_path):
    out = tmp_path / "b"
    result = run("compile", str(CLASSIFIER), "--target", "raspberry-pi-4", "--postprocess",
                 "iou=0.5", "-o", str(out))  # fmt: skip
    assert_bad_input(result, "apply to detection models", out)


@pytest.mark.slow
@pytest.mark.train
def test_the_issue_command_builds_a_detection_cascade_that_run_answers(tmp_path):
    """Done-when of issue 19 (with few distillation epochs, to stay minutes): a student on the
    Pi, the teacher on the gateway, NMS in both, a plan within the 50 ms budget; ``edgec run
    --json`` prints boxes, classes, scores, stage and route per frame; empty frames the student
    is sure of never leave the device."""
    pytest.importorskip("torch", reason="students need the train extra")
    pytest.importorskip("faster_coco_eval", reason="mAP needs the detection extra")
    out = tmp_path / "bundle"
    result = run("compile", str(DETECTOR), "--target", "raspberry-pi-4", "--data",
                 "digits-detect", "--budget-ms", "50", "--distill-epochs", "2", "-o", str(out),
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [(s["name"], s["tier"]) for s in summary["stages"]] == [
        ("tiny", "device"),
        ("teacher", "gateway"),
    ]
    assert summary["gate"]["passed"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"][0]["task"] == "detection"
    policy = manifest["policy"]
    assert policy["task"] == "detection" and policy["feasible"]
    thresholds = policy["detection"]["thresholds"]["tiny"]
    assert set(thresholds) == {"low", "high"}
    teacher = next(s for s in manifest["stages"] if s["name"] == "teacher")
    assert teacher["accuracy"] > 0.5  # mAP@0.5 of the committed teacher
    assert {"device-only", "gateway-only"} <= set(policy["detection"]["baselines"])
    frames = tmp_path / "frames.npy"
    np.save(frames, load_dataset("digits-detect").x_val[:6])
    ran = run("run", str(out), str(frames), "--json")
    assert ran.exit_code == 0, ran.output
    lines = [json.loads(line) for line in ran.stdout.splitlines()]
    assert len(lines) == 6
    for line in lines:
        assert {"boxes", "classes", "scores", "stage", "route"} <= set(line)
        assert len(line["boxes"]) == len(line["classes"]) == len(line["scores"])
        if line["route"] == "local":
            assert line["stage"] == "tiny" and line["decision"] in ("empty", "sure")
        else:  # no --gateway: the student's own detections, and the route says why
            assert line["route"] in ("fallback-no-gateway", "budget")


@pytest.mark.slow
def test_a_detector_without_students_is_one_stage_that_answers_every_frame(tmp_path):
    """``--students none``: the teacher alone on the device, NMS in its graph, its mAP@0.5 in
    the manifest (the committed teacher's, as its ``teacher.json`` records it), and ``run --json``
    answers locally."""
    pytest.importorskip("faster_coco_eval", reason="mAP needs the detection extra")
    out = tmp_path / "bundle"
    result = run("compile", str(DETECTOR), "--target", "raspberry-pi-4", "--data",
                 "digits-detect", "--students", "none", "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    (stage,) = manifest["stages"]
    recorded = json.loads(DETECTOR.with_suffix(".json").read_text())["val_map50"]
    assert stage["tier"] == "device" and stage["accuracy"] == pytest.approx(recorded, abs=1e-3)
    assert manifest["outputs"][0]["shape"] == [1, 601]
    frames = tmp_path / "frames.npy"
    np.save(frames, load_dataset("digits-detect").x_val[:3])
    lines = [
        json.loads(line) for line in run("run", str(out), str(frames), "--json").stdout.splitlines()
    ]
    assert [(line["stage"], line["route"]) for line in lines] == [("teacher", "local")] * 3
    assert lines[1]["classes"] and len(lines[1]["boxes"][0]) == 4  # frame 1 holds a 4 and a 0
