"""End to end: the digits validation split streamed through the bundle's generated device
runtime, with the generated gateway serving the teacher on loopback behind an injected RTT.

The first run reports accuracy, mean and p99 latency, the share of frames within budget and the
bytes sent against sending every frame, and holds them to what the planner promised in the
manifest, within stated slacks (the machine is shared and noisy: a frame that waits for a core
can miss the gateway's deadline and be answered on the device). The second run kills the
gateway mid-stream and checks that no frame is lost; the third makes the link slower than the
budget and checks that every frame is still answered, in time, on the device.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from runtime_helpers import BUDGET_MS, RTT_MS

from edgec.bundle.io import read_manifest
from edgec.bundle.launch import import_runtime
from edgec.data import load_dataset

pytestmark = pytest.mark.slow

# Slacks between the planner's promise (on the validation split) and a live run here.
ACCURACY_SLACK = 0.02  # frames whose gateway answer came too late are answered on the device
WITHIN_BUDGET_SLACK = 0.02  # the planner's p99 rule allows 1%; a busy machine adds a little
P99_SLACK = 1.25  # a fallback at the deadline lands ~1 ms past it; a loaded core adds more
OFFLOAD_SLACK = 0.05  # forwarding decisions depend on live timing, not only on confidence


def _stream(bundle, url, frames, logger=None, on_answer=None):
    device = import_runtime(bundle, "device")
    runtime = device.DeviceRuntime(bundle, gateway_url=url, device_id="dev-7", logger=logger)
    answers = []
    with runtime:
        for index, answer in enumerate(runtime.stream(iter(frames))):
            answers.append(answer)
            if on_answer is not None:
                on_answer(index)
    return device, runtime, answers


def _report(answers, labels, request_bytes: int) -> dict:
    latency = np.array([a.latency_ms for a in answers])
    sent = sum(a.bytes_sent for a in answers)
    every = request_bytes * len(answers)
    return {
        "frames": len(answers),
        "accuracy": float(
            np.mean([a.prediction == y for a, y in zip(answers, labels, strict=True)])
        ),
        "mean_ms": float(latency.mean()),
        "p99_ms": float(np.percentile(latency, 99)),
        "within_budget": float((latency <= BUDGET_MS).mean()),
        "offloaded": sum(a.bytes_sent > 0 for a in answers) / len(answers),
        "bytes_sent": sent,
        "bytes_every_frame": every,
        "bandwidth_saved": 1 - sent / every,
    }


def _request_bytes(device, url: str, x: np.ndarray) -> int:
    body, headers = device.codec.encode_tensor(x, BUDGET_MS, "dev-7")
    return device.codec.request_bytes(url.split("//", 1)[1], headers, body)


def test_stream_meets_the_planned_budget_and_accuracy(cascade_bundle, start_gateway, start_proxy):
    """Accuracy, mean and p99 latency, share within budget and offload rate match the plan."""
    policy = read_manifest(cascade_bundle)["policy"]
    data = load_dataset("digits")
    frames = [x[None] for x in data.x_val]
    gateway = start_gateway(cascade_bundle)
    proxy = start_proxy(gateway.port, RTT_MS)
    logs = io.StringIO()
    device = import_runtime(cascade_bundle, "device")
    logger = device.observability.json_logger("edgec.test.e2e", logging.INFO, stream=logs)

    device, runtime, answers = _stream(cascade_bundle, proxy.url, frames, logger)
    report = _report(answers, data.y_val, _request_bytes(device, proxy.url, frames[0]))
    planned = {k: policy[k] for k in ("expected_accuracy", "expected_latency_ms", "offload_rate")}
    print(f"\ncascade run: {json.dumps(report)}\nplanned: {json.dumps(planned)}")

    assert report["frames"] == len(frames)
    assert report["accuracy"] >= policy["expected_accuracy"] - ACCURACY_SLACK
    assert report["mean_ms"] <= BUDGET_MS
    assert report["within_budget"] >= 0.99 - WITHIN_BUDGET_SLACK
    assert report["p99_ms"] <= BUDGET_MS * P99_SLACK
    assert abs(report["offloaded"] - policy["offload_rate"]) <= OFFLOAD_SLACK
    assert report["bandwidth_saved"] >= 1 - policy["offload_rate"] - OFFLOAD_SLACK
    offloaded = [a for a in answers if a.route == "offloaded"]
    assert offloaded, "no frame reached the gateway"
    assert all(a.stage == "teacher" for a in offloaded)
    assert min(a.latency_ms for a in offloaded) >= 0.9 * RTT_MS  # the injected RTT was paid

    registry = runtime.metrics.registry
    for stage in ("tiny", "small", "teacher"):
        count = sum(a.stage == stage for a in answers)
        assert registry.get_sample_value("stage_exit_total", {"stage": stage}) == count
    assert registry.get_sample_value("offload_rate") == pytest.approx(report["offloaded"])
    assert registry.get_sample_value("offload_bytes_total") == report["bytes_sent"]
    assert registry.get_sample_value("inference_latency_seconds_count") == len(frames)
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    events = [line for line in lines if line["event"] == "inference"]
    assert len(events) == len(frames)
    assert {e["device_id"] for e in events} == {"dev-7"}
    assert all(len(e["model_version"]) == 16 and e["inference_time_ms"] > 0 for e in events)
    assert [e["stage"] for e in events] == [a.stage for a in answers]


def test_gateway_killed_mid_stream_loses_no_frame(cascade_bundle, start_gateway, start_proxy):
    """Killing the gateway a third of the way in: every frame is still answered, on the
    device from then on, and accuracy stays at the device stages' level."""
    manifest = read_manifest(cascade_bundle)
    data = load_dataset("digits")
    frames = [x[None] for x in data.x_val]
    gateway = start_gateway(cascade_bundle)
    proxy = start_proxy(gateway.port, RTT_MS)
    kill_at = len(frames) // 3

    def kill(index: int) -> None:
        if index == kill_at:
            gateway.kill()

    _, _, answers = _stream(cascade_bundle, proxy.url, frames, on_answer=kill)

    assert len(answers) == len(frames)
    before, after = answers[: kill_at + 1], answers[kill_at + 1 :]
    assert any(a.route == "offloaded" for a in before)
    assert not any(a.route == "offloaded" for a in after)
    assert any(a.route.startswith("fallback-") for a in after)
    assert all(a.stage in ("tiny", "small") for a in after)
    # A dead gateway is noticed by its refused connection, not by waiting for the deadline:
    # the device's breaker then keeps the rest local, so this is often one frame, and on a
    # loaded machine one frame can take a few RTTs; the deadline is what it must beat.
    failed = [(a.route, round(a.latency_ms, 1)) for a in after if a.route.startswith("fallback-")]
    assert all(route != "fallback-timeout" for route, _ in failed), failed
    assert max(ms for _, ms in failed) < BUDGET_MS, failed
    accuracy = np.mean([a.prediction == y for a, y in zip(answers, data.y_val, strict=True)])
    best_device = max(s["accuracy"] for s in manifest["stages"] if s["tier"] == "device")
    assert accuracy >= best_device - ACCURACY_SLACK


def test_link_slower_than_the_budget_answers_on_the_device_in_time(
    cascade_bundle, start_gateway, start_proxy
):
    """An RTT past the budget: each offload times out at the deadline and the device answers;
    no frame is dropped and none is later than the budget plus the fallback's overhead."""
    data = load_dataset("digits")
    frames = [x[None] for x in data.x_val[:120]]
    gateway = start_gateway(cascade_bundle)
    proxy = start_proxy(gateway.port, rtt_ms=3 * BUDGET_MS)

    _, runtime, answers = _stream(cascade_bundle, proxy.url, frames)

    assert len(answers) == len(frames)
    timed_out = [a for a in answers if a.route == "fallback-timeout"]
    assert timed_out, "no frame tried the gateway"
    assert not any(a.route == "offloaded" for a in answers)
    assert all(a.stage == "small" for a in timed_out)
    # Each waits for the deadline and no longer (the answer itself would take 3x the budget).
    # A thread preempted on this shared 2-core machine can add tens of ms to one frame, so the
    # tail is bounded by what separates "stopped waiting" from "waited for the answer".
    waits = sorted(round(a.latency_ms, 2) for a in timed_out)
    assert waits[0] >= 0.9 * BUDGET_MS and float(np.median(waits)) <= 1.1 * BUDGET_MS, waits
    assert float(np.percentile(waits, 90)) <= 1.25 * BUDGET_MS, waits
    assert waits[-1] < 2 * BUDGET_MS, waits
    timeouts = runtime.metrics.registry.get_sample_value(
        "offload_requests_total", {"outcome": "timeout"}
    )
    assert timeouts == len(timed_out)
