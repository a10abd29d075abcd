"""Capture: the spool keeps its caps under a long stream, and its export compiles.

Frames go through a real digits bundle (the ``teacher_bundle`` fixture) with
``edgec run --capture``, the generated runtime on its own (``python -B -m runtime.device
--capture``) or the runtime class; ``edgec captures --export`` then writes the ``.npz`` that
``edgec compile --data`` takes (``--unlabeled`` does not exist yet: ``--data`` accepts ``x``
without ``y``).
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from runtime_helpers import TEACHER

from edgec.bundle.launch import import_runtime
from edgec.cli import main
from edgec.data import load_dataset
from edgec.runtime import capture


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _spool(tmp_path, **caps) -> capture.CaptureSpool:
    spec = {"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32"}
    return capture.CaptureSpool(tmp_path / "spool", spec, 0.9, **caps)


def test_the_spool_drops_the_oldest_frames_beyond_its_count_and_byte_caps(tmp_path):
    """Count cap: the newest 5 of 30 are kept; byte cap: at most 4 KiB; drops are counted in
    the index; a frame larger than the byte cap alone is dropped at once."""
    spool = _spool(tmp_path, max_frames=5)
    for i in range(30):
        spool.add(np.full((1, 1, 8, 8), i, np.float32), {"reason": "low-confidence"})
    index = capture.read_index(spool.directory)
    assert index["frames"] == list(range(25, 30))
    assert (index["captured"], index["dropped"]) == (30, 25)
    assert len(list(spool.directory.glob("frame-*.npy"))) == 5
    small = _spool(tmp_path / "b", max_mb=4 / 1024)
    for _ in range(30):
        small.add(np.zeros((1, 1, 8, 8), np.float32), {"reason": "low-confidence"})
    on_disk = sum(p.stat().st_size for p in small.directory.glob("frame-*"))
    assert on_disk == small.bytes <= 4096 and small.dropped == 30 - len(small.kept)
    huge = _spool(tmp_path / "c", max_mb=1 / 1024)
    assert huge.add(np.zeros((1, 3, 64, 64), np.float32), {}) == 1 and huge.kept == []


def test_a_spool_is_continued_and_a_foreign_directory_is_refused(tmp_path):
    """Reopening keeps the frames and counts; a non-empty directory without an index is not
    taken over (its files are left alone)."""
    spool = _spool(tmp_path)
    spool.add(np.zeros((1, 1, 8, 8), np.float32), {})
    again = _spool(tmp_path)
    again.add(np.zeros((1, 1, 8, 8), np.float32), {})
    assert capture.read_index(again.directory)["frames"] == [0, 1]
    assert again.captured == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(capture.CaptureError, match="not empty"):
        capture.CaptureSpool(tmp_path / "other", {"name": "x", "shape": [1], "dtype": "f"}, 0.5)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_a_frame_is_kept_when_unsure_or_overruled():
    """Overruled (the gateway's prediction differs from the device's) wins; otherwise a
    confidence under the threshold; a confident, agreed frame is not kept."""
    assert capture.reason_for(0.99, 0.9, 3, 5) == "overruled"
    assert capture.reason_for(0.5, 0.9, 3, 3) == "low-confidence"
    assert capture.reason_for(0.5, 0.9, None, None) == "low-confidence"
    assert capture.reason_for(0.95, 0.9, 3, 3) is None
    assert capture.reason_for(0.1, None, None, None) is None


def _long_stream(n: int = 2000) -> np.ndarray:
    """``n`` frames: the validation split, then inverted digits (unsure), repeated."""
    x_val = load_dataset("digits").x_val
    both = np.concatenate([x_val, 1.0 - x_val]).astype(np.float32)
    return np.resize(both, (n, *x_val.shape[1:]))


def test_capture_keeps_its_caps_under_a_long_stream_and_the_export_compiles(
    teacher_bundle, tmp_path
):
    """2,000 frames through `edgec run --capture` with 50 frames / 1 MB: 50 kept (the newest),
    the rest counted as dropped in the index and the metric; `edgec captures --export` writes
    x only, in the bundle's input layout, and `edgec compile --data` takes it."""
    frames = tmp_path / "frames.npy"
    np.save(frames, _long_stream())
    spool = tmp_path / "spool"
    result = run(
        "run", str(teacher_bundle), str(frames), "--json",
        "--capture", str(spool), "--capture-max-frames", "50", "--capture-max-mb", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    index = capture.read_index(spool)
    assert len(index["frames"]) == 50 and index["bytes"] <= 1024 * 1024
    assert index["captured"] > 50 and index["dropped"] == index["captured"] - 50
    assert len(list(spool.glob("frame-*.npy"))) == len(list(spool.glob("frame-*.json"))) == 50
    sidecar = json.loads(next(spool.glob("frame-*.json")).read_text())
    assert sidecar["reason"] == "low-confidence" and sidecar["stage"] == "teacher"
    assert sidecar["confidence"] < index["threshold"]
    assert {"time", "prediction", "gateway_prediction", "route"} <= set(sidecar)
    manifest = json.loads((teacher_bundle / "manifest.json").read_text())
    assert index["threshold"] == manifest["monitoring"]["capture"]["threshold"]

    export = tmp_path / "next.npz"
    summary = run("captures", str(spool), "--export", str(export), "--json")
    assert summary.exit_code == 0, summary.output
    assert json.loads(summary.stdout)["dropped"] == index["dropped"]
    with np.load(export) as data:
        assert data.files == ["x"]
        assert data["x"].shape == (50, 1, 8, 8) and data["x"].dtype == np.float32
    compiled = run(
        "compile", str(TEACHER), "--target", "host", "--data", str(export),
        "--students", "none", "--measure-seconds", "0.1", "-o", str(tmp_path / "again"),
    )  # fmt: skip
    assert compiled.exit_code == 0, compiled.output
    again = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert again["data"]["name"] == "next.npz" and again["data"]["labels"] is False


def test_the_runtime_counts_captures_and_drops_in_its_metrics(teacher_bundle, tmp_path):
    """The device runtime's metrics: frames spooled by reason, and drops."""
    device = import_runtime(teacher_bundle.resolve(), "device")
    logger = device.observability.json_logger("edgec.test.capture", logging.WARNING)
    runtime = device.DeviceRuntime(
        teacher_bundle, logger=logger, capture_dir=tmp_path / "spool", capture_max_frames=10
    )
    for x in _long_stream(600):
        runtime.infer(x[None])
    _, body, _ = runtime.metrics.exposition()
    text = body.decode()
    kept = float(re.search(r'edgec_capture_frames_total{reason="low-confidence"} (\S+)', text)[1])
    dropped = float(re.search(r"^edgec_capture_dropped_total (\S+)$", text, re.M)[1])
    assert kept == runtime.capture.captured and dropped == kept - 10 > 0


def test_the_generated_runtime_captures_on_its_own(teacher_bundle, tmp_path):
    """`python -B -m runtime.device --capture DIR` from the bundle, without edgec."""
    frames = tmp_path / "frames.npy"
    np.save(frames, _long_stream(300))
    spool = tmp_path / "spool"
    result = subprocess.run(
        [sys.executable, "-B", "-m", "runtime.device", str(frames), "--quiet",
         "--capture", str(spool), "--capture-max-frames", "7"],
        cwd=teacher_bundle, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(capture.read_index(spool)["frames"]) == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["captures", "{tmp}/missing"], "does not exist"),
        (["captures", "{tmp}/foreign"], "not a capture directory"),
        (["captures", "{tmp}/empty", "--export", "{tmp}/out.npz"], "holds no frames"),
        (["captures", "{tmp}/empty", "--export", "{tmp}/out.txt"], "to a .npz file"),
    ],
)
def test_bad_capture_directories_and_outputs_are_one_sentence(tmp_path, args, message):
    """Exit 2, one sentence, no traceback, no output file left behind."""
    (tmp_path / "foreign").mkdir()
    _spool(tmp_path / "e").directory.rename(tmp_path / "empty")
    result = run(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not list(tmp_path.glob("out.*")) and not list(tmp_path.glob(".out*"))


def test_run_refuses_a_capture_directory_it_does_not_own(teacher_bundle, tmp_path):
    """`edgec run --capture` into a non-empty directory that is not a spool: exit 2."""
    frames = tmp_path / "frames.npy"
    np.save(frames, _long_stream(3))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    result = run("run", str(teacher_bundle), str(frames), "--capture", str(tmp_path / "photos"))
    assert result.exit_code == 2, result.output
    assert "Cannot capture frames" in result.output and "Traceback" not in result.output


def test_frames_the_gateway_overruled_are_captured(cascade_bundle, start_gateway, tmp_path):
    """Through a real gateway: each offloaded frame whose gateway prediction differs from the
    last device stage's is spooled as `overruled` with both predictions, and no other is."""
    gateway = start_gateway(cascade_bundle)
    device = import_runtime(cascade_bundle.resolve(), "device")
    logger = device.observability.json_logger("edgec.test.overruled", logging.WARNING)
    spool = tmp_path / "spool"
    runtime = device.DeviceRuntime(
        cascade_bundle, gateway_url=gateway.url, logger=logger, capture_dir=spool
    )
    x_val = load_dataset("digits").x_val
    frames = np.concatenate([x_val, 1.0 - x_val]).astype(np.float32)  # inverted: unsure
    with runtime:
        answers = [runtime.infer(x[None]) for x in frames]
    offloaded = [a for a in answers if a.route == "offloaded"]
    assert offloaded, "no frame reached the gateway"
    assert all(a.device_prediction is not None for a in offloaded)
    assert all(a.device_prediction is None for a in answers if a.route != "offloaded")
    disagree = sum(a.device_prediction != a.gateway_prediction for a in offloaded)
    records = [json.loads(p.read_text()) for p in spool.glob("frame-*.json")]
    overruled = [r for r in records if r["reason"] == "overruled"]
    assert len(overruled) == disagree > 0
    assert all(r["gateway_prediction"] != r["device_prediction"] for r in overruled)
    assert all(r["stage"] == "teacher" and r["route"] == "offloaded" for r in overruled)


def test_a_spool_that_fails_mid_stream_stops_capturing_and_every_frame_is_answered(
    teacher_bundle, tmp_path
):
    """The spool directory vanishes mid-stream (a removed card, a full disk): capturing stops
    with one `capture-failed` log line and the runtime keeps answering."""
    device = import_runtime(teacher_bundle.resolve(), "device")
    logs = io.StringIO()
    logger = device.observability.json_logger("edgec.test.capfail", logging.WARNING, logs)
    spool = tmp_path / "spool"
    runtime = device.DeviceRuntime(teacher_bundle, logger=logger, capture_dir=spool)
    frames = _long_stream(200)
    answers = [runtime.infer(x[None]) for x in frames[:100]]
    assert runtime.capture.captured > 0
    shutil.rmtree(spool)
    answers += [runtime.infer(x[None]) for x in frames[100:]]
    assert len(answers) == 200 and all(a.prediction >= 0 for a in answers)
    assert runtime.capture is None
    events = [json.loads(line)["event"] for line in logs.getvalue().splitlines()]
    assert events.count("capture-failed") == 1
