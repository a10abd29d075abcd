"""Drift: PSI arithmetic, the compiler's reference, and the runtime's gauges and log events.

The end-to-end tests stream frames through a real digits bundle (the ``teacher_bundle``
fixture: the teacher alone, compiled for this machine): its own validation split stays under
the PSI threshold on every window, while inverted or noisy digits cross it.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from edgec.bundle.launch import import_runtime
from edgec.data import load_dataset
from edgec.runtime import drift


def _reference(conf, pred, classes=3, stages=("a", "b"), exits=(0.7, 0.3), offload=0.3):
    return drift.build_reference(conf, pred, classes, list(stages), list(exits), offload)


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift():
    """PSI(p, p) = 0; a larger shift gives a larger PSI; empty bins stay finite."""
    p = [0.25, 0.25, 0.5]
    assert drift.psi(p, p) == 0.0
    small, large = drift.psi(p, [0.3, 0.2, 0.5]), drift.psi(p, [0.6, 0.1, 0.3])
    assert 0 < small < large
    assert np.isfinite(drift.psi([1.0, 0.0], [0.0, 1.0]))


def test_the_reference_bins_the_validation_answers_with_the_runtimes_binning():
    """Confidence edges at the deciles (ties collapse), class shares with an 'other' bin, the
    planned exit and offload shares; bin_index agrees with the shares."""
    rng = np.random.default_rng(0)
    conf = rng.random(1000)
    ref = _reference(conf, rng.integers(0, 3, 1000))
    signals = ref["signals"]
    assert len(signals["confidence"]["bins"]) == 9
    assert np.allclose(signals["confidence"]["reference"], 0.1, atol=0.002)
    assert len(signals["class"]["reference"]) == 4 and signals["class"]["reference"][3] == 0
    assert signals["exit_stage"]["reference"] == [0.7, 0.3, 0.0]
    assert signals["offload"]["reference"] == [0.7, 0.3, 0.0]
    assert ref["window"] == drift.DEFAULT_WINDOW and ref["threshold"] == drift.DEFAULT_THRESHOLD
    ties = _reference(np.ones(100), np.zeros(100, dtype=int))
    assert ties["signals"]["confidence"]["bins"] == [1.0]
    assert drift.bin_index(1.0, [1.0]) == 1 and drift.bin_index(0.99, [1.0]) == 0


def test_the_monitor_reports_once_the_window_is_full_and_each_crossing_once():
    """No PSI before a full window; a signal that drifts is reported once, and once when it
    comes back; values the reference never had land in 'other'."""
    ref = _reference(np.linspace(0, 1, 100), np.arange(100) % 3)
    monitor = drift.DriftMonitor(ref, window=20)
    for i in range(19):
        assert monitor.update(0.5, i % 3, "a", False) is None
    values = monitor.update(0.5, 0, "a", False)
    assert set(values) == set(drift.SIGNALS)
    ups = []
    for _ in range(40):  # class -1 (no answer) and an unknown stage: every frame 'other'
        up, down = monitor.crossings(monitor.update(0.5, -1, "none", False))
        ups += up
        assert not down
    assert sorted(ups) == ["class", "confidence", "exit_stage", "offload"]
    downs = []
    for i in range(60):
        _, down = monitor.crossings(monitor.update(i / 60, i % 3, "a", i % 10 < 3))
        downs += down
    assert "class" in downs


@pytest.fixture(scope="module")
def device(teacher_bundle):
    """The teacher bundle's generated device module, imported as `edgec run` does."""
    return import_runtime(teacher_bundle.resolve(), "device")


def _stream(device, bundle, frames):
    """Run ``frames`` through a fresh runtime; its PSI per window, its log lines and metrics."""
    stream = io.StringIO()
    logger = device.observability.json_logger(f"edgec.test.drift.{id(stream)}", stream=stream)
    runtime = device.DeviceRuntime(bundle, logger=logger)
    worst = dict.fromkeys(drift.SIGNALS, 0.0)
    confidence = []
    for x in frames:
        answer = runtime.infer(x[None])
        confidence.append(answer.confidence)
        if runtime.drift.frames >= runtime.drift.window:
            for name, window in runtime.drift.signals.items():
                worst[name] = max(worst[name], window.psi())
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    _, body, _ = runtime.metrics.exposition()
    return worst, [e for e in events if e["event"] == "drift"], body.decode(), confidence


def _gauge(body: str, signal: str) -> float:
    match = re.search(rf'^edgec_drift_psi{{signal="{signal}"}} (\S+)$', body, re.M)
    assert match, body
    return float(match.group(1))


def test_the_validation_split_does_not_drift(device, teacher_bundle):
    """Streaming the split the reference came from: every window's PSI stays under 0.2, no
    drift event, and the gauges say so."""
    x_val = load_dataset("digits").x_val
    worst, events, body, _ = _stream(device, teacher_bundle, x_val)
    threshold = device.config.MONITORING["drift"]["threshold"]
    assert threshold == drift.DEFAULT_THRESHOLD
    assert max(worst.values()) < threshold, worst
    assert events == []
    assert all(_gauge(body, s) < threshold for s in drift.SIGNALS)


@pytest.mark.parametrize("shift", ["inverted", "noisy"])
def test_shifted_inputs_cross_the_drift_threshold(device, teacher_bundle, shift):
    """Inverted digits (1 - x) or digits with Gaussian noise (sigma 0.3): the confidence and
    class gauges cross the threshold and a `drift` event names the signal."""
    x_val = load_dataset("digits").x_val
    rng = np.random.default_rng(0)
    if shift == "inverted":
        frames = (1.0 - x_val).astype(np.float32)
    else:
        frames = np.clip(x_val + rng.normal(0, 0.3, x_val.shape), 0, 1).astype(np.float32)
    worst, events, body, _ = _stream(device, teacher_bundle, frames)
    assert worst["confidence"] > drift.DEFAULT_THRESHOLD, worst
    assert _gauge(body, "confidence") > drift.DEFAULT_THRESHOLD
    crossed = {e["signal"] for e in events}
    assert "confidence" in crossed
    assert all(e["psi"] > e["threshold"] and e["window"] == 200 for e in events)
    assert 'edgec_drift_alerts_total{signal="confidence"} 1.0' in body


def test_the_compilers_reference_is_the_runtimes_binning_of_the_validation_answers(
    device, teacher_bundle
):
    """One definition: the confidence shares the compiler stored equal the shares of the
    runtime's own answers on the validation split, binned by the bundle's drift module."""
    x_val = load_dataset("digits").x_val
    *_, confidence = _stream(device, teacher_bundle, x_val)
    spec = device.config.MONITORING["drift"]["signals"]["confidence"]
    counts = np.bincount(
        [device.drift.bin_index(c, spec["bins"]) for c in confidence],
        minlength=len(spec["reference"]),
    )
    assert np.allclose(counts / len(confidence), spec["reference"], atol=1.5 / len(confidence))
