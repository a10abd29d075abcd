"""OpenTelemetry tracing across the device and the gateway (``--trace``, ``runtime/tracing.py``).

The bottleneck model cut after its stem: the device runs the stem (a device stage) and offloads
its output to the gateway, which runs the rest. A real device runtime and a real gateway server
on loopback, each with an in-memory span exporter, or, through the CLI, ``--trace console`` on
both processes. One frame must give one trace whose spans link across the HTTP hop.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
import pytest

from edgec.bundle.launch import import_runtime
from edgec.runtime import tracing

InMemorySpanExporter = pytest.importorskip(
    "opentelemetry.sdk.trace.export.in_memory_span_exporter",
    reason="the trace extra (opentelemetry-sdk) is not installed",
).InMemorySpanExporter

pytestmark = pytest.mark.slow


def test_tracing_is_off_by_default_and_does_nothing():
    """Off: no span, no header, no context; an unknown mode is one sentence."""
    off = tracing.Tracing()
    assert not off.enabled
    assert off.start("frame") is None and off.headers(None) == {}
    assert off.extract({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None
    with off.span("x") as span:
        assert span is None
    with pytest.raises(ValueError, match="unknown trace mode"):
        tracing.Tracing("jaeger")


def _spans(exporter, names: set[str], seconds: float = 5.0) -> list:
    """The finished spans once every name in ``names`` is among them (bounded wait)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        spans = list(exporter.get_finished_spans())
        if names <= {s.name for s in spans}:
            return spans
        time.sleep(0.02)
    return list(exporter.get_finished_spans())


def test_one_offloaded_frame_is_one_trace_linked_across_the_http_hop(bottleneck_bundle):
    """Device stage -> offload request -> gateway request -> gateway queue -> gateway stage,
    all in one trace: the gateway's request span is the child of the device's offload span
    (the W3C traceparent crossed the HTTP hop), and a second frame is a second trace."""
    bundle = bottleneck_bundle.bundle
    gateway = import_runtime(bundle, "gateway")
    device = import_runtime(bundle, "device")
    on_gateway, on_device = InMemorySpanExporter(), InMemorySpanExporter()
    server = gateway.GatewayServer(
        gateway.GatewayRuntime(bundle),
        "127.0.0.1",
        0,
        trace=gateway.tracing.Tracing("off", "edgec-gateway", exporter=on_gateway),
    )
    server.start()
    try:
        runtime = device.DeviceRuntime(
            bundle,
            gateway_url=server.url,
            trace=device.tracing.Tracing("off", "edgec-device", exporter=on_device),
        )
        x = np.random.default_rng(0).random((1, 3, 224, 224)).astype(np.float32)
        with runtime:
            first = runtime.infer(x)
            device_spans = _spans(on_device, {"frame", "device.stage", "offload"})
            gateway_spans = _spans(
                on_gateway, {"gateway.request", "gateway.queue", "gateway.stage"}
            )
            second = runtime.infer(x)
    finally:
        server.shutdown()
    assert first.route == second.route == "offloaded"
    by_name = {s.name: s for s in device_spans + gateway_spans}
    frame, stage, offload = by_name["frame"], by_name["device.stage"], by_name["offload"]
    request, queued = by_name["gateway.request"], by_name["gateway.queue"]
    remote = by_name["gateway.stage"]
    trace_id = frame.context.trace_id
    assert {s.context.trace_id for s in (stage, offload, request, queued, remote)} == {trace_id}
    assert frame.parent is None
    assert stage.parent.span_id == offload.parent.span_id == frame.context.span_id
    assert request.parent.span_id == offload.context.span_id and request.parent.is_remote
    assert queued.parent.span_id == remote.parent.span_id == request.context.span_id
    assert stage.attributes["edgec.stage"] == bottleneck_bundle.manifest["partition"]["prefix"]
    assert remote.attributes["edgec.stage"] == "teacher"
    assert request.attributes["http.response.status_code"] == 200
    assert offload.attributes["edgec.outcome"] == "ok"
    # Where the milliseconds went: the gateway's spans sit inside the device's offload span
    # (up to the microseconds of converting the gateway's monotonic times to wall-clock ones).
    slack = 1_000_000  # 1 ms in ns
    assert offload.start_time <= request.start_time + slack
    assert request.start_time <= request.end_time <= offload.end_time + slack
    assert request.start_time <= queued.start_time + slack
    assert queued.start_time <= queued.end_time <= remote.start_time + slack
    assert remote.end_time <= request.end_time + slack
    frames = [s for s in on_device.get_finished_spans() if s.name == "frame"]
    assert len(frames) == 2 and frames[0].context.trace_id != frames[1].context.trace_id


def test_trace_console_on_run_and_serve_shows_the_same_trace_on_both(
    bottleneck_bundle, start_gateway, tmp_path
):
    """``edgec serve --trace console`` and ``edgec run --trace console``: one frame's trace id
    appears in the device's spans (stderr) and in the gateway's; the --json stream on stdout
    stays one JSON object per frame."""
    bundle = bottleneck_bundle.bundle
    gateway = start_gateway(bundle, "--trace", "console")
    frames = tmp_path / "frame.npy"
    np.save(frames, np.random.default_rng(1).random((1, 3, 224, 224)).astype(np.float32))
    result = subprocess.run(
        [
            *(sys.executable, "-m", "edgec", "run", str(bundle), str(frames), "--json"),
            *("--gateway", gateway.url, "--trace", "console"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1 and '"offloaded"' in result.stdout
    pattern = re.compile(r'"trace_id": "0x([0-9a-f]{32})"')
    on_device = set(pattern.findall(result.stderr))
    assert len(on_device) == 1, result.stderr[-2000:]
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not on_device & set(
        pattern.findall(gateway.log.read_text())
    ):
        time.sleep(0.05)
    assert on_device <= set(pattern.findall(gateway.log.read_text()))


def test_trace_without_opentelemetry_is_one_sentence(bottleneck_bundle, tmp_path):
    """A mode that needs OpenTelemetry, where it is missing, is refused with the package to
    install (simulated by hiding the package from a child interpreter)."""
    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from edgec.runtime import tracing\n"
        "try:\n    tracing.Tracing('console')\n"
        "except tracing.TracingUnavailable as err:\n    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "pip install opentelemetry-sdk" in out.stdout, out.stderr
