"""Load a gateway the way a fleet of devices would: ``edgec loadtest``.

N simulated devices send offloaded frames to a gateway's ``POST /v1/infer`` at a given total
rate for a given time, open loop: frame ``k`` leaves at ``k / rate`` seconds whether or not the
earlier ones were answered (device ``k mod N`` sends it). Each device keeps one keep-alive
connection (stdlib :mod:`http.client`) and opens another only while a frame of its own is
still waiting for an answer, so a gateway that keeps up sees one connection per device.

What is sent is what the bundle's generated device runtime sends (:mod:`edgec.runtime.codec`):
the input, or a partitioned bundle's intermediate tensor computed by its own device prefix,
raw or int8-encoded as its manifest says, with the deadline header the device sends when it
offloads at once (the budget less the fallback margin; without a budget, the runtime's gateway
timeout). A real device stops waiting at that deadline; the load test waits ``grace_ms`` more,
so that it can tell an answer that came late (counted in ``late`` for a 200, and under its
status code) from no answer at all (``lost``: a reset, a refused connection or silence).

Bounded: at most :data:`MAX_FRAMES` frames and :data:`MAX_OUTSTANDING` requests in flight; a
frame due while the load generator is at that bound is counted in ``skipped``, not sent late.
Nothing here imports the compiler.
"""

from __future__ import annotations

import http.client
import math
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgec.bundle.io import read_manifest
from edgec.bundle.launch import import_runtime
from edgec.errors import BadInputError
from edgec.runtime import codec, inputs
from edgec.runtime.render import DEFAULT_GATEWAY_TIMEOUT_MS

MAX_FRAMES = 1_000_000
MAX_OUTSTANDING = 1024
MAX_SECONDS = 3600.0
POOL_FRAMES = 64  # distinct payloads prepared before the load starts
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Payload:
    """What one frame sends: the body and the headers, deadline included (no device id)."""

    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Workload:
    """The requests a bundle's devices send, prepared before the load starts.

    Attributes:
        payloads: Distinct frames, sent in turn.
        deadline_ms: The deadline header every frame carries.
        wire: ``{"shape", "dtype", "encoding"}`` of the tensor on the wire.
    """

    payloads: tuple[Payload, ...]
    deadline_ms: float
    wire: dict


def device_deadline_ms(manifest: dict) -> float:
    """The deadline a device sends when it offloads at once: the budget less the fallback
    margin, or the runtime's gateway timeout when the bundle has no budget."""
    policy = manifest.get("policy") or {}
    budget = policy.get("budget_ms")
    if budget is None:
        return DEFAULT_GATEWAY_TIMEOUT_MS
    margin = (policy.get("link") or {}).get("fallback_margin_ms", 1.0)
    return float(budget) - float(margin)


def _random_frames(spec: inputs.InputSpec, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(spec.dtype)
    frames = []
    for _ in range(count):
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            low, high = max(info.min, 0), min(info.max, 255)
            frames.append(rng.integers(low, high + 1, spec.shape).astype(dtype))
        else:
            frames.append(rng.random(spec.shape).astype(dtype))
    return frames


def _data_frames(path: Path, spec: inputs.InputSpec, count: int) -> list[np.ndarray]:
    frames = []
    try:
        for raw in inputs.iter_frames([path], spec):
            # A copy: a sample may be a view of a memory map closed once the walk ends.
            frames.append(np.array(inputs.prepare(raw, spec), copy=True))
            if len(frames) == count:
                break
    except inputs.InputFileError as err:
        raise BadInputError(str(err).rstrip(".") + ".") from None
    if not frames:
        raise BadInputError(f"--data {path} holds no frames; give a .npz with an x array.")
    return frames


def prepare_workload(
    bundle: Path,
    data: Path | None = None,
    deadline_ms: float | None = None,
    frames: int = POOL_FRAMES,
    seed: int = 0,
) -> Workload:
    """The frames a device of ``bundle`` would offload, encoded as it would send them.

    Args:
        bundle: The bundle the gateway serves.
        data: ``.npz``/``.npy`` inputs (default: random inputs of the bundle's input spec).
        deadline_ms: The deadline header (default: :func:`device_deadline_ms`).
        frames: How many distinct frames to prepare.
        seed: Seed of the random inputs.

    Raises:
        BadInputError: Not a bundle with gateway stages, unreadable data or a bad deadline.
    """
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if not any(stage.get("tier") == "gateway" for stage in manifest["stages"]):
        raise BadInputError(
            f"Bundle {bundle} has no gateway stages: its devices never offload, so there is "
            "nothing to load a gateway with."
        )
    deadline = device_deadline_ms(manifest) if deadline_ms is None else float(deadline_ms)
    if not (math.isfinite(deadline) and deadline > 0):
        raise BadInputError(f"The deadline must be a positive number of ms, got {deadline}.")
    device = import_runtime(bundle.resolve(), "device")
    spec = inputs.InputSpec.from_manifest(manifest["inputs"][0])
    xs = _data_frames(Path(data), spec, frames) if data else _random_frames(spec, frames, seed)
    encoding = device.config.WIRE["encoding"]
    if device.PREFIX_STAGE:  # a partitioned bundle sends what its device prefix computes
        try:
            prefix = device.load_stages(bundle.resolve(), [device.PREFIX_STAGE])[0]
        except device.BundleError as err:
            raise BadInputError(str(err).rstrip(".") + ".") from None
        xs = [prefix.run(x) for x in xs]
    payloads = []
    for x in xs:
        body, headers = codec.encode_tensor(x, deadline, None, encoding)
        payloads.append(Payload(body, headers))
    wire = {
        "shape": list(device.config.WIRE["shape"]),
        "dtype": device.config.WIRE["dtype"],
        "encoding": encoding,
    }
    return Workload(tuple(payloads), deadline, wire)


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


@dataclass
class LoadReport:
    """What a load test measured; :meth:`as_dict` is the ``--json`` output."""

    gateway: str
    devices: int
    rate_fps: float
    seconds: float
    deadline_ms: float
    grace_ms: float
    sent: int = 0
    skipped: int = 0
    lost: int = 0
    late: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    lost_reasons: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)  # of the 200s
    late_by_ms: list[float] = field(default_factory=list)  # how late each late 200 came
    connections: int = 0
    elapsed_s: float = 0.0

    @property
    def answered(self) -> int:
        """Requests that got an HTTP answer, whatever its status."""
        return sum(self.codes.values())

    def as_dict(self) -> dict:
        """Every figure, JSON-ready."""
        ok = self.codes.get("200", 0)
        elapsed = self.elapsed_s or float("nan")
        return {
            "gateway": self.gateway,
            "devices": self.devices,
            "rate_fps": self.rate_fps,
            "seconds": self.seconds,
            "deadline_ms": self.deadline_ms,
            "grace_ms": self.grace_ms,
            "sent": self.sent,
            "answered": self.answered,
            "ok": ok,
            "lost": self.lost,
            "late": self.late,
            "late_by_ms_max": round(max(self.late_by_ms), 3) if self.late_by_ms else None,
            "skipped": self.skipped,
            "codes": dict(sorted(self.codes.items())),
            "status_429": self.codes.get("429", 0),
            "status_504": self.codes.get("504", 0),
            "status_5xx": sum(n for code, n in self.codes.items() if code.startswith("5")),
            "lost_reasons": dict(sorted(self.lost_reasons.items())),
            "latency_ms": {f"p{q}": _percentile(self.latencies_ms, q) for q in PERCENTILES},
            "answers_per_s": round(self.answered / elapsed, 3) if self.elapsed_s else 0.0,
            "ok_per_s": round(ok / elapsed, 3) if self.elapsed_s else 0.0,
            "connections": self.connections,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _split_url(url: str) -> tuple[str, int, str]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "http" or not parts.hostname or port == -1:
        raise BadInputError(f"The gateway URL {url!r} is not http://HOST[:PORT].")
    return parts.hostname, port or 80, parts.netloc


class _Device:
    """One simulated device: its keep-alive connections (one unless frames overlap)."""

    def __init__(self, name: str, host: str, port: int, netloc: str):
        self.name = name
        self.host, self.port, self.netloc = host, port, netloc
        self.idle: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()
        self.opened = 0

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle kept-alive connection, else a new one; ``True`` when reused."""
        with self.lock:
            if self.idle:
                return self.idle.pop(), True
            self.opened += 1
        return http.client.HTTPConnection(self.host, self.port), False

    def give_back(self, connection: http.client.HTTPConnection) -> None:
        with self.lock:
            self.idle.append(connection)

    def close(self) -> None:
        with self.lock:
            for connection in self.idle:
                connection.close()
            self.idle.clear()


def _exchange(
    connection: http.client.HTTPConnection, payload: Payload, device: _Device, until: float
) -> tuple[int, bool]:
    """Send one frame and read the answer by ``until`` (monotonic); status and keep-alive."""
    if connection.sock is None:
        connection.timeout = max(until - time.monotonic(), 0.001)
        connection.connect()
        # Requests are small: send them now, not after the previous one's ACK (as the device).
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.sock.settimeout(max(until - time.monotonic(), 0.001))
    connection.putrequest("POST", codec.PATH, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", device.netloc)
    for name, value in payload.headers.items():
        connection.putheader(name, value)
    connection.putheader(codec.HEADER_DEVICE, device.name)
    connection.endheaders(payload.body)
    connection.sock.settimeout(max(until - time.monotonic(), 0.001))
    response = connection.getresponse()
    response.read()
    return response.status, not response.will_close


def _lost_reason(err: BaseException) -> str:
    if isinstance(err, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(err, ConnectionRefusedError):
        return "refused"
    if isinstance(err, ConnectionResetError | BrokenPipeError | http.client.RemoteDisconnected):
        return "reset"
    return type(err).__name__


class _Recorder:
    """Thread-safe tallies for one run."""

    def __init__(self, report: LoadReport):
        self.report = report
        self.lock = threading.Lock()
        self.outstanding = 0
        self.done = threading.Condition(self.lock)
        self.last = 0.0
        self.closed = False

    def answer(self, status: int, latency_ms: float, deadline_ms: float) -> None:
        with self.lock:
            if self.closed:
                return
            code = str(status)
            self.report.codes[code] = self.report.codes.get(code, 0) + 1
            if status == 200:
                self.report.latencies_ms.append(latency_ms)
                if latency_ms > deadline_ms:
                    self.report.late += 1
                    self.report.late_by_ms.append(latency_ms - deadline_ms)
            self._finish()

    def lose(self, reason: str) -> None:
        with self.lock:
            if self.closed:
                return
            self.report.lost += 1
            self.report.lost_reasons[reason] = self.report.lost_reasons.get(reason, 0) + 1
            self._finish()

    def _finish(self) -> None:
        self.last = time.monotonic()
        self.outstanding -= 1
        self.done.notify_all()


def _send_frame(
    device: _Device,
    payload: Payload,
    recorder: _Recorder,
    deadline_s: float,
    grace_s: float,
) -> None:
    started = time.monotonic()
    until = started + deadline_s + grace_s
    for attempt in (1, 2):
        connection, reused = device.take()
        try:
            status, keep = _exchange(connection, payload, device, until)
        except Exception as err:  # OSError, HTTPException; anything else is lost too
            connection.close()
            # A kept-alive connection the gateway closed meanwhile: retry once on a new one,
            # within the same time, as the device runtime does.
            if reused and attempt == 1 and time.monotonic() < until:
                continue
            recorder.lose(_lost_reason(err))
            return
        break
    latency_s = time.monotonic() - started
    if keep:
        device.give_back(connection)
    else:
        connection.close()
    recorder.answer(status, latency_s * 1000.0, deadline_s * 1000.0)


def check_load(
    url: str, devices: int, rate: float, seconds: float, grace_ms: float
) -> tuple[str, int, str]:
    """Check a load test's settings before anything is prepared; the URL's host, port and
    ``host:port``.

    Raises:
        BadInputError: A URL that is not ``http://HOST[:PORT]``, or a number out of range.
    """
    address = _split_url(url)
    if devices < 1:
        raise BadInputError(f"--devices must be at least 1, got {devices}.")
    if not (math.isfinite(rate) and rate > 0):
        raise BadInputError(f"--rate must be a positive number of frames per second, got {rate}.")
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
        raise BadInputError(f"--seconds must be in (0, {MAX_SECONDS:g}], got {seconds}.")
    if not (math.isfinite(grace_ms) and grace_ms >= 0):
        raise BadInputError(f"--grace-ms must be a non-negative number, got {grace_ms}.")
    if round(rate * seconds) > MAX_FRAMES:
        raise BadInputError(
            f"--rate x --seconds is {round(rate * seconds)} frames; the limit is {MAX_FRAMES}: "
            "lower either."
        )
    return address


def run_load(
    url: str,
    workload: Workload,
    devices: int,
    rate: float,
    seconds: float,
    grace_ms: float = 1000.0,
    max_outstanding: int = MAX_OUTSTANDING,
) -> LoadReport:
    """Send ``rate * seconds`` frames from ``devices`` devices, open loop, and measure.

    Raises:
        BadInputError: A bad URL or out-of-range numbers (see :func:`check_load`).
    """
    host, port, netloc = check_load(url, devices, rate, seconds, grace_ms)
    frames = max(1, round(rate * seconds))
    report = LoadReport(url, devices, rate, seconds, workload.deadline_ms, grace_ms)
    recorder = _Recorder(report)
    fleet = [_Device(f"loadtest-{i}", host, port, netloc) for i in range(devices)]
    deadline_s, grace_s = workload.deadline_ms / 1000.0, grace_ms / 1000.0
    start = time.monotonic()
    try:
        for k in range(frames):
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with recorder.lock:
                if recorder.outstanding >= max_outstanding:
                    report.skipped += 1
                    continue
                recorder.outstanding += 1
                report.sent += 1
            payload = workload.payloads[k % len(workload.payloads)]
            threading.Thread(
                target=_send_frame,
                args=(fleet[k % devices], payload, recorder, deadline_s, grace_s),
                name=f"edgec-loadtest-{k}",
                daemon=True,
            ).start()
        # Every request ends by its own time limit; wait for all of them (bounded).
        with recorder.lock:
            recorder.done.wait_for(
                lambda: recorder.outstanding == 0, timeout=deadline_s + grace_s + 5.0
            )
            # None left but by a bug; count any such request as lost, never as silence
            # unreported, and ignore whatever it records later.
            if recorder.outstanding:
                report.lost += recorder.outstanding
                report.lost_reasons["unfinished"] = recorder.outstanding
            recorder.closed = True
            report.elapsed_s = (recorder.last or time.monotonic()) - start
    finally:
        for device in fleet:
            device.close()
    report.connections = sum(device.opened for device in fleet)
    return report
