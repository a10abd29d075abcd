"""The generated gateway server (``edgec serve``) on loopback: load past its queue, malformed
requests, and a clean shutdown.

The load test sends bounded bursts of concurrent requests to a gateway whose stage takes
milliseconds (a 79 M MAC convolution stack) with a queue of 2 and one worker: everything past
the queue must be a 429, nothing else may fail, and once the burst is over the server's
threads, file descriptors, queue and in-flight count return to where they were.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading

import numpy as np
import pytest
from runtime_helpers import process_fds, process_threads, wait_until

from edgec.bundle.io import read_manifest
from edgec.bundle.launch import import_runtime
from edgec.runtime import codec

pytestmark = pytest.mark.slow

BURST = 40
ROUNDS = 3
QUEUE = 2


def _input(bundle) -> np.ndarray:
    spec = read_manifest(bundle)["inputs"][0]
    return np.random.default_rng(0).random(spec["shape"]).astype(spec["dtype"])


def _post(port: int, body: bytes, headers: dict, timeout: float = 30.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", codec.PATH, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _metric(port: int, name: str, labels: str = "") -> float:
    text = _get(port, "/metrics")[1].decode()
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


def _burst(port: int, body: bytes, headers: dict) -> tuple[list[int], list[str]]:
    statuses, errors = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(BURST, timeout=30)

    def client() -> None:
        try:
            barrier.wait()
            status, _ = _post(port, body, headers)
            with lock:
                statuses.append(status)
        except Exception as err:
            with lock:
                errors.append(repr(err))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(BURST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return statuses, errors


def test_load_past_the_queue_is_refused_with_429_without_errors_or_leaks(
    slow_bundle, start_gateway
):
    """Bursts of 40 concurrent requests at a queue of 2: only 200s and 429s, the queue never
    holds more than 2, and threads, descriptors and gauges return to their idle values."""
    gateway = start_gateway(slow_bundle, "--queue-size", str(QUEUE), "--workers", "1")
    body, headers = codec.encode_tensor(_input(slow_bundle))
    assert _post(gateway.port, body, headers)[0] == 200  # warm: every lazy init done
    pid = gateway.process.pid
    idle_threads, idle_fds = process_threads(pid), process_fds(pid)

    statuses, errors = [], []
    for _ in range(ROUNDS):
        got, failed = _burst(gateway.port, body, headers)
        statuses += got
        errors += failed

    assert not errors
    assert len(statuses) == BURST * ROUNDS
    assert set(statuses) <= {200, 429}
    refused, answered = statuses.count(429), statuses.count(200)
    assert refused > 0 and answered >= QUEUE
    assert _metric(gateway.port, "gateway_queue_peak") <= QUEUE
    assert _metric(gateway.port, "gateway_requests_total", 'code="429"') == refused
    assert _metric(gateway.port, "gateway_requests_total", 'code="200"') == answered + 1
    assert wait_until(lambda: process_threads(pid) <= idle_threads + 1, seconds=10)
    assert wait_until(lambda: process_fds(pid) <= idle_fds + 1, seconds=10)
    assert _metric(gateway.port, "gateway_queue_depth") == 0
    assert _metric(gateway.port, "gateway_inflight") == 0
    assert _post(gateway.port, body, headers)[0] == 200
    assert gateway.terminate() == 0  # SIGTERM: a clean shutdown


def test_device_client_backs_off_after_a_429(slow_bundle, start_gateway):
    """The generated device client turns a 429 into a 'refused' fallback and leaves the
    gateway alone for the Retry-After time."""
    gateway = start_gateway(slow_bundle, "--queue-size", "1", "--workers", "1")
    x = _input(slow_bundle)
    body, headers = codec.encode_tensor(x)
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            _post(gateway.port, body, headers)

    hammers = [threading.Thread(target=hammer, daemon=True) for _ in range(6)]
    for thread in hammers:
        thread.start()
    device = import_runtime(slow_bundle, "device")
    client = device.GatewayClient(gateway.url, "dev-1", retry_after_s=5.0)
    outcomes = []
    try:
        for _ in range(40):  # bounded: each try takes a few milliseconds
            try:
                client.infer(x, 1000.0)
                outcomes.append("ok")
            except device.OffloadError as err:
                outcomes.append(err.outcome)
                if err.outcome == "refused":
                    break
    finally:
        stop.set()
        for thread in hammers:
            thread.join(timeout=30)
        client.close()
    assert outcomes[-1] == "refused", outcomes
    assert set(outcomes) <= {"ok", "refused"}
    assert not client.available()  # Retry-After: 1 s


def _raw(port: int, data: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply.split(b"\r\n", 1)[0].decode()


def _case(body: bytes, **headers: str) -> tuple[bytes, dict]:
    return body, {k.replace("_", "-"): v for k, v in headers.items()}


def test_malformed_requests_are_400s_and_the_server_keeps_serving(cascade_bundle, start_gateway):
    """Missing or wrong headers, a body of the wrong size, NaNs, a bad deadline, an oversized
    or missing length, garbage and wrong methods: each gets its 4xx, and the server answers
    a good request afterwards."""
    gateway = start_gateway(cascade_bundle)
    x = _input(cascade_bundle)
    good, headers = codec.encode_tensor(x, deadline_ms=500.0, device_id="dev-2")
    shape, dtype = headers[codec.HEADER_SHAPE], headers[codec.HEADER_DTYPE]
    nan = np.full_like(x, np.nan).tobytes()
    cases = [
        (_case(good, X_Edgec_Dtype=dtype), 400),
        (_case(good, X_Edgec_Shape="1,1,4,4", X_Edgec_Dtype=dtype), 400),
        (_case(good, X_Edgec_Shape="one,two", X_Edgec_Dtype=dtype), 400),
        (_case(good, X_Edgec_Shape=shape, X_Edgec_Dtype="int64"), 400),
        (_case(good[:-4], X_Edgec_Shape=shape, X_Edgec_Dtype=dtype), 400),
        (_case(nan, X_Edgec_Shape=shape, X_Edgec_Dtype=dtype), 400),
        (_case(good, X_Edgec_Shape=shape, X_Edgec_Dtype=dtype, X_Edgec_Deadline_Ms="soon"), 400),
        (_case(good + good, X_Edgec_Shape=shape, X_Edgec_Dtype=dtype), 413),
    ]
    for (body, request_headers), expected in cases:
        status, reply = _post(gateway.port, body, request_headers)
        assert status == expected, (request_headers, reply)
        assert json.loads(reply)["error"]
    post = f"POST {codec.PATH} HTTP/1.1\r\nHost: x\r\n"
    assert " 411 " in _raw(gateway.port, f"{post}\r\n".encode())
    assert " 400 " in _raw(gateway.port, f"{post}Content-Length: -5\r\n\r\n".encode())
    assert " 413 " in _raw(gateway.port, f"{post}Content-Length: 99999999\r\n\r\n".encode())
    assert " 400 " in _raw(gateway.port, b"HELLO\r\n\r\n")
    assert " 405 " in _raw(gateway.port, b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _get(gateway.port, codec.PATH)[0] == 405
    assert _get(gateway.port, "/nope")[0] == 404

    status, reply = _get(gateway.port, "/healthz")
    assert status == 200 and json.loads(reply)["stages"] == ["teacher"]
    status, reply = _post(gateway.port, good, headers)
    assert status == 200
    answer = json.loads(reply)
    assert answer["stage"] == "teacher" and abs(sum(answer["probs"]) - 1) < 1e-4
    assert gateway.process.poll() is None
