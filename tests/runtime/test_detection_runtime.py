"""The detection runtime: the packed output, the empty/sure/hand-on rule, and the rendered
device runtime of a detection bundle (ruff-clean, with the gateway's imports)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgec.runtime import detection, render

MANIFEST = Path(__file__).with_name("detection_manifest.json")
REPO = Path(__file__).resolve().parents[2]


def test_unpack_drops_unused_slots_and_reads_the_highest_score():
    row = np.full((1, detection.packed_width(3)), -1.0, np.float32)
    row[0, 0] = 0.7
    row[0, 1:7] = [1, 2, 11, 12, 0.6, 4]
    boxes, scores, classes, top = detection.unpack(row)
    assert boxes.tolist() == [[1, 2, 11, 12]]
    assert scores.tolist() == pytest.approx([0.6]) and classes.tolist() == [4]
    assert top == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("top", "scores", "expected"),
    [
        (0.05, [], "empty"),  # nothing scores near the low threshold
        (0.3, [], "unsure"),  # something is there, NMS kept nothing: hand on
        (0.95, [0.9, 0.8], "sure"),  # every kept detection above the high threshold
        (0.95, [0.9, 0.5], "unsure"),  # one kept detection is doubtful
    ],
)
def test_decide_is_empty_below_low_and_sure_only_when_every_detection_is_above_high(
    top, scores, expected
):
    assert detection.decide(top, np.array(scores), low=0.1, high=0.7) == expected


def test_a_detection_bundle_renders_its_own_device_runtime_that_passes_ruff(tmp_path):
    """device.py comes from the detection template, detection.py is shipped, the gateway
    server is the classifier's; all of it passes the project's ruff settings."""
    manifest = json.loads(MANIFEST.read_text())
    files = render.render_files(manifest)
    assert "THRESHOLDS" in files["device.py"] and "gateway.py" in files
    assert files["detection.py"] == Path(detection.__file__).read_text()
    render.render_runtime(tmp_path, manifest)
    beside = Path(sys.executable).with_name("ruff")
    ruff = str(beside) if beside.is_file() else shutil.which("ruff")
    assert ruff, "ruff (the dev extra) is needed to check the rendered runtime"
    config = ["--config", str(REPO / "pyproject.toml"), "--no-cache"]
    target = str(tmp_path / render.RUNTIME_DIR)
    check = subprocess.run([ruff, "check", *config, target], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(
        [ruff, "format", "--check", *config, target], capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_a_classifier_bundle_does_not_ship_the_detection_runtime():
    manifest = json.loads((Path(__file__).parent / "golden" / "cascade_manifest.json").read_text())
    files = render.render_files(manifest)
    assert "detection.py" not in files and "THRESHOLDS" not in files["device.py"]
