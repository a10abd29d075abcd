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
import time

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


def _exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, close the sending side, and return the whole reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def _raw(port: int, data: bytes) -> str:
    """The status line of the answer to raw bytes."""
    return _exchange(port, data).split(b"\r\n", 1)[0].decode()


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
    assert json.loads(reply)["runs_on"] == {"teacher": "CPUExecutionProvider"}
    status, reply = _post(gateway.port, good, headers)
    assert status == 200
    answer = json.loads(reply)
    assert answer["stage"] == "teacher" and abs(sum(answer["probs"]) - 1) < 1e-4
    assert gateway.process.poll() is None


def _raw_reply(port: int, data: bytes) -> tuple[str, dict]:
    """Status line and JSON body of the answer to raw bytes."""
    head, _, body = _exchange(port, data).partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), json.loads(body)


def test_other_methods_broken_request_lines_and_conflicting_lengths_are_json_errors(
    cascade_bundle, start_gateway
):
    """HEAD, OPTIONS and unknown methods: 405 JSON; a malformed request line: 400 JSON;
    conflicting duplicate Content-Length (a request-smuggling shape): 400."""
    gateway = start_gateway(cascade_bundle)
    for method in ("HEAD", "OPTIONS", "BREW"):
        line, body = _raw_reply(
            gateway.port, f"{method} /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        assert " 405 " in line and body["error"], (method, line)
    for broken in (b"HELLO\r\n\r\n", b"GET / HTTP/9\r\n\r\n", b"GET /a b c d\r\n\r\n"):
        line, body = _raw_reply(gateway.port, broken)
        assert " 400 " in line and body["error"], (broken, line)
    x = _input(cascade_bundle)
    good, headers = codec.encode_tensor(x)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k != "Content-Length")
    request = (
        f"POST {codec.PATH} HTTP/1.1\r\nHost: x\r\n{head}"
        f"Content-Length: {len(good)}\r\nContent-Length: 4\r\n\r\n"
    ).encode() + good
    line, body = _raw_reply(gateway.port, request)
    assert " 400 " in line and "Content-Length" in body["error"]
    assert _post(gateway.port, good, headers)[0] == 200


@pytest.fixture
def in_process_gateway(cascade_bundle):
    """Start the bundle's gateway server in this process with chosen settings."""
    servers = []
    gateway = import_runtime(cascade_bundle, "gateway")
    runtime = gateway.GatewayRuntime(cascade_bundle)

    def start(wrap=None, **settings):
        server = gateway.GatewayServer(
            wrap(runtime) if wrap else runtime, "127.0.0.1", 0, **settings
        )
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


def _trickle(port: int, stop: threading.Event, closed_after: list[float]) -> None:
    """Send a request one byte every 0.2 s until the server closes the connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(0.2)
        for byte in f"POST {codec.PATH} HTTP/1.1\r\nHost: x\r\nX-Pad: {'a' * 200}".encode():
            if stop.is_set():
                return
            try:
                sock.send(bytes([byte]))
                if sock.recv(1024) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
    closed_after.append(time.monotonic() - started)


def test_slow_trickling_clients_cannot_hold_healthz_metrics_or_inference(
    cascade_bundle, in_process_gateway
):
    """As many connections as the limit trickle a byte every 0.2 s: /healthz, /metrics and
    an inference are still answered at once (the oldest trickler is evicted), and every
    trickler is cut off by the whole-request deadline (1 s here), not kept by per-read
    timeouts."""
    limit = 6
    server = in_process_gateway(max_connections=limit, request_timeout_s=1.0)
    port = server.address[1]
    stop, closed_after = threading.Event(), []
    tricklers = [
        threading.Thread(target=_trickle, args=(port, stop, closed_after), daemon=True)
        for _ in range(limit)
    ]
    try:
        for thread in tricklers:
            thread.start()
        assert wait_until(lambda: server.status()["connections"] == limit, 5.0)
        started = time.monotonic()
        assert _get(port, "/healthz")[0] == 200
        assert _get(port, "/metrics")[0] in (200, 503)
        good, headers = codec.encode_tensor(_input(cascade_bundle))
        assert _post(port, good, headers)[0] == 200
        assert time.monotonic() - started < 1.0
        for thread in tricklers:
            thread.join(timeout=10)
    finally:
        stop.set()
    assert len(closed_after) == limit and max(closed_after) < 2.5, closed_after


def test_an_answer_that_finishes_after_its_deadline_is_a_504(cascade_bundle, in_process_gateway):
    """The stage takes 300 ms, the request allows 100 ms: it was taken in time (not 504 at
    dequeue), but its late answer is a 504, never a 200."""

    class Slow:
        def __init__(self, inner):
            self.inner, self.model_version = inner, inner.model_version

        def infer(self, x, deadline_ms=None):
            time.sleep(0.3)
            return self.inner.infer(x, deadline_ms)

    server = in_process_gateway(wrap=Slow, workers=1)
    x = _input(cascade_bundle)
    status, reply = _post(server.address[1], *codec.encode_tensor(x, deadline_ms=100.0))
    assert status == 504 and json.loads(reply)["error"]
    assert _post(server.address[1], *codec.encode_tensor(x, deadline_ms=5000.0))[0] == 200


def test_a_deadline_counts_from_the_requests_first_byte_not_from_when_it_was_read(
    cascade_bundle, in_process_gateway
):
    """The device's deadline runs from when it sent the request: one whose body arrives 400
    ms after its first byte, with 150 ms to live, is a 504 (it was a 200 while the clock
    started once the request was read and decoded); sent at once, the same request is a 200."""
    server = in_process_gateway()
    port = server.address[1]
    body, headers = codec.encode_tensor(_input(cascade_bundle), deadline_ms=150.0)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"POST {codec.PATH} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        time.sleep(0.4)
        sock.sendall(body)
        reply = b""
        while b"\r\n\r\n" not in reply and (chunk := sock.recv(65536)):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 504 "), reply[:200]
    assert _post(port, body, headers)[0] == 200


def test_an_answer_must_be_ready_a_reply_margin_before_its_deadline(
    cascade_bundle, in_process_gateway
):
    """With a 400 ms reply margin (a slow link), a request with 300 ms to live is a 504 at
    once although its stage takes milliseconds: its answer could not reach the device in
    time. With 5 s it is a 200; /healthz states the margin in use (configured + measured)
    and which clock starts a request; a negative margin is refused."""
    server = in_process_gateway(reply_margin_ms=400.0)
    port = server.address[1]
    x = _input(cascade_bundle)
    started = time.monotonic()
    assert _post(port, *codec.encode_tensor(x, deadline_ms=300.0))[0] == 504
    assert time.monotonic() - started < 0.3  # answered at once, not after running
    assert _post(port, *codec.encode_tensor(x, deadline_ms=5000.0))[0] == 200
    status = json.loads(_get(port, "/healthz")[1])
    assert status["reply_margin_ms"] >= 400.0
    assert status["arrival_clock"] in ("kernel", "first read")
    with pytest.raises(ValueError, match="reply margin"):
        in_process_gateway(reply_margin_ms=-1.0)
