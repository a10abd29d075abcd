"""Dynamic batching in the generated gateway (``edgec serve --max-batch --batch-wait-ms``).

The digits teacher served whole by the gateway (``--partition gateway-only``), compiled once:
its gateway stage has a dynamic batch dimension, so concurrent requests run as one batch. Real
servers on loopback, real HTTP; a thin recorder around the real gateway runtime notes the batch
sizes it is handed (it computes nothing itself).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgec.bundle.io import read_manifest
from edgec.bundle.launch import import_runtime
from edgec.bundle.loadtest import prepare_workload, run_load
from edgec.runtime import codec

pytestmark = pytest.mark.slow


@pytest.fixture
def digits_bundle(digits_gateway_bundle) -> Path:
    """The digits teacher, all on the gateway (compiled once per session, conftest)."""
    return digits_gateway_bundle


class Recorder:
    """The real gateway runtime, noting the batch size of every call."""

    def __init__(self, inner):
        self.inner, self.model_version = inner, inner.model_version
        self.sizes: list[int] = []

    def infer(self, x, deadline_ms=None):
        self.sizes.append(len(x))
        return self.inner.infer(x, deadline_ms)

    def infer_batch(self, x, deadlines_ms):
        self.sizes.append(len(x))
        return self.inner.infer_batch(x, deadlines_ms)


@pytest.fixture
def serve_in_process(digits_bundle):
    """Start the bundle's gateway in this process; returns (server, recorder)."""
    servers = []
    gateway = import_runtime(digits_bundle, "gateway")
    runtime = gateway.GatewayRuntime(digits_bundle)

    def start(**settings):
        recorder = Recorder(runtime)
        server = gateway.GatewayServer(recorder, "127.0.0.1", 0, **settings)
        server.start()
        servers.append(server)
        return server, recorder

    yield start
    for server in servers:
        server.shutdown()


# The planner int8-encodes the digits input for the loopback target's 50 Mbps link.
ENCODING = "int8"


def _post(port: int, x: np.ndarray, deadline_ms: float | None = None) -> tuple[int, dict]:
    body, headers = codec.encode_tensor(x, deadline_ms=deadline_ms, encoding=ENCODING)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", codec.PATH, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _concurrently(port: int, frames: np.ndarray) -> list[tuple[int, dict]]:
    results: list = [None] * len(frames)
    barrier = threading.Barrier(len(frames), timeout=30)

    def client(i: int) -> None:
        barrier.wait()
        results[i] = _post(port, frames[i : i + 1])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(frames))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_the_gateway_stage_takes_batch_16_with_its_per_frame_cost_measured(digits_bundle):
    """The manifest (and the report) record the batch-16 check and the measured per-frame cost
    at batch 1 and 16; the bundle's runtime runs 16 rows at once, giving each row its batch-1
    answer; the Triton config batches to match and the plan budgets the batch wait."""
    manifest = read_manifest(digits_bundle)
    batching = manifest["stages"][0]["batching"]
    assert batching["max_batch"] == 16 and batching["checked"]["same_top1"]
    assert batching["per_frame_ms"]["1"] > 0 and batching["per_frame_ms"]["16"] > 0
    assert manifest["policy"]["link"]["batch_wait_ms"] == 2.0
    gateway = import_runtime(digits_bundle, "gateway")
    runtime = gateway.GatewayRuntime(digits_bundle)
    x = np.random.default_rng(0).random((16, 1, 8, 8)).astype(np.float32)
    batched = runtime.infer_batch(x, [None] * 16)
    for i, (stage, probs) in enumerate(batched):
        alone_stage, alone = runtime.infer(x[i : i + 1])
        assert stage == alone_stage and probs.shape == (1, 10)
        np.testing.assert_allclose(probs, alone, rtol=1e-5, atol=1e-7)
    triton = (digits_bundle / "runtime/deploy/triton/teacher/config.pbtxt").read_text()
    assert "max_batch_size: 8" in triton and "max_queue_delay_microseconds: 2000" in triton
    assert "dims: [ 1, 8, 8 ]" in triton and "dims: [ 10 ]" in triton
    report = (digits_bundle / "report" / "report.md").read_text()
    assert "teacher: gateway batch up to 16 (checked against batch 1), batch 1 " in report


def test_concurrent_requests_run_as_batches_with_the_answers_they_get_alone(serve_in_process):
    """12 requests at once to one worker (max batch 16, 200 ms wait): they run in fewer calls
    than requests, every one is a 200, and each answer equals the one a non-batching gateway
    gives the same frame."""
    frames = np.random.default_rng(1).random((12, 1, 8, 8)).astype(np.float32)
    batching, recorder = serve_in_process(workers=1, max_batch=16, batch_wait_ms=200.0)
    single, single_recorder = serve_in_process(workers=1, max_batch=1)
    together = _concurrently(batching.address[1], frames)
    alone = [_post(single.address[1], frames[i : i + 1]) for i in range(len(frames))]
    assert [code for code, _ in together] == [200] * 12
    assert max(recorder.sizes) > 1 and len(recorder.sizes) < 12, recorder.sizes
    assert set(single_recorder.sizes) == {1}
    for (_, a), (_, b) in zip(together, alone, strict=True):
        assert a["stage"] == b["stage"]
        np.testing.assert_allclose(a["probs"], b["probs"], rtol=1e-5, atol=1e-7)
    assert batching.status()["max_batch"] == 16 and batching.status()["batch_wait_ms"] == 200.0


def test_a_request_is_never_held_for_a_batch_past_its_own_deadline(serve_in_process):
    """With a 900 ms batch wait, a lone request without a deadline waits for company (about
    the wait), while one with 150 ms to live leaves as soon as waiting would make it late:
    a 200 well inside its deadline, not a 504 after the wait."""
    server, _ = serve_in_process(workers=1, max_batch=16, batch_wait_ms=900.0)
    x = np.random.default_rng(2).random((1, 1, 8, 8)).astype(np.float32)
    started = time.monotonic()
    assert _post(server.address[1], x)[0] == 200
    assert time.monotonic() - started >= 0.85  # the wait applies
    started = time.monotonic()
    assert _post(server.address[1], x, deadline_ms=150.0)[0] == 200
    assert time.monotonic() - started < 0.15


def test_a_lone_request_is_not_held_for_company_while_another_worker_is_idle(serve_in_process):
    """Two workers, max batch 16, a 500 ms batch wait, requests one at a time: each is
    answered at once (the other worker is idle, so waiting could not grow the batch), not
    after the wait; batching a CPU gateway no longer costs a lone request the wait."""
    server, recorder = serve_in_process(workers=2, max_batch=16, batch_wait_ms=500.0)
    x = np.random.default_rng(3).random((1, 1, 8, 8)).astype(np.float32)
    for _ in range(3):
        started = time.monotonic()
        assert _post(server.address[1], x)[0] == 200
        assert time.monotonic() - started < 0.3  # before: >= 0.5 s each
    assert recorder.sizes == [1, 1, 1]


def test_a_batch_holds_no_more_requests_than_run_before_their_deadline(digits_bundle):
    """A gateway that has measured 10 ms per row: a request with 35 ms left (beyond the reply
    margin) may be batched with at most two others; one without a deadline, up to the max
    batch; one with no time left still runs alone (its answer decides, not the batcher)."""
    gateway = import_runtime(digits_bundle, "gateway")
    server = gateway.GatewayServer(
        gateway.GatewayRuntime(digits_bundle), "127.0.0.1", 0, workers=1, max_batch=16
    )
    try:
        server.batch_ran(0.040, 4)  # 10 ms a row
        x = np.zeros((1, 1, 8, 8), np.float32)
        now = gateway.observability.now()
        job = gateway._Job(x, now + server.margin_s() + 0.0355, "d")
        assert server._max_rows(job) == 3
        assert server._max_rows(gateway._Job(x, None, "d")) == 16
        assert server._max_rows(gateway._Job(x, now, "d")) == 1
    finally:
        server.close()


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgec", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--max-batch", "0"), "--max-batch"),
        (("--batch-wait-ms", "-1"), "--batch-wait-ms"),
        (("--tier", "registry", "--max-batch", "4"), "apply to --tier gateway only"),
    ],
)
def test_bad_batching_options_are_one_sentence_and_exit_2(digits_bundle, args, message):
    """Out-of-range batching options, or batching options for the registry, exit 2."""
    result = _serve(str(digits_bundle), "--port", "0", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_twice_the_sustainable_rate_with_batching_loses_nothing(bottleneck_bundle, start_gateway):
    """Batching on (max batch 8, 2 ms), one worker, a queue of 4: a saturating run measures
    the rate the gateway sustains, then twice that is offered. Every request gets an HTTP
    answer (lost 0); the excess is refused with 429/504, never silence, and no 200 is late."""
    bundle = bottleneck_bundle.bundle
    gateway = start_gateway(
        bundle, "--queue-size", "4", "--workers", "1", "--max-batch", "8", "--batch-wait-ms", "2"
    )
    workload = prepare_workload(bundle)
    probe = run_load(gateway.url, workload, devices=4, rate=300, seconds=1.0)
    sustainable = probe.as_dict()["ok_per_s"]
    assert probe.lost == 0 and sustainable > 0
    rate = 2 * sustainable
    report = run_load(gateway.url, workload, devices=4, rate=rate, seconds=2.0).as_dict()
    assert report["sent"] == round(rate * 2.0) and report["skipped"] == 0
    assert report["lost"] == 0, report["lost_reasons"]
    assert report["answered"] == report["sent"]
    assert set(report["codes"]) <= {"200", "429", "504"}
    assert report["status_429"] + report["status_504"] > 0
    assert report["ok"] > 0 and report["late"] == 0
