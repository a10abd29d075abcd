"""The bundle registry: ``edgec serve ZOO --tier registry``, a small HTTP server for a fleet.

Endpoints (JSON in, JSON out; errors are ``{"error": "..."}`` with 400, 404, 405 or 413):

- ``POST /v1/bundle``: the body is a device's capability descriptor (YAML or JSON, the schema
  of ``edgec targets show``) or ``{"target": NAME}``. The answer names the bundle that fits the
  device in the version it is assigned (:func:`edgec.bundle.rollout.assign`: the canary for the
  devices in its share, by the ``X-Edgec-Device-Id`` header, else the current version):
  ``target``, ``version``, ``channel``, ``manifest_sha256``, ``archive_url``,
  ``archive_sha256``, ``archive_bytes``, ``signature`` (base64 ``manifest.sig``, or ``null``).
- ``GET /v1/archive/<sha256>``: the bundle archive with that sha256 (``.tar.gz``, as
  ``edgec compile --archive`` writes it); the name is the content's hash, so it never changes.
- ``POST /v1/report``: a device's SLO figures, ``p99_ms``, ``within_budget`` (share of frames
  within the budget, 0..1) and ``drift_psi`` (a number, or one per signal), stored with the
  version the device is assigned, for ``edgec rollout ZOO --status``.
- ``GET /healthz``: the release state.

Which bundle fits: a target name must be one of the zoo's targets. A descriptor gets the zoo
target of the same name if there is one; otherwise the zoo target with the same CPU
architecture and the same accelerator kind (or none on both sides) whose RAM is no larger than
the device's; of several, the one with the most RAM (the closest), then the first by name.

Bodies are limited to 64 KiB and must arrive within the request timeout (default 10 s).
"""

from __future__ import annotations

import json
import re
import signal
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from edgec.bundle import rollout
from edgec.errors import BadInputError

MAX_BODY = 64 * 1024
DEVICE_ID_HEADER = "X-Edgec-Device-Id"
_DEVICE_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces
_ARCHIVE_PATH = re.compile(r"^/v1/archive/([0-9a-f]{64})$")


class RequestError(Exception):
    """A request the registry refuses, with its HTTP status."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def _parse_body(raw: bytes) -> dict:
    """A JSON or YAML mapping."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(HTTPStatus.BAD_REQUEST, "The body is not UTF-8 text.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            raise RequestError(
                HTTPStatus.BAD_REQUEST, "The body is neither JSON nor YAML."
            ) from None
    if not isinstance(data, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, "The body must be a JSON or YAML mapping.")
    return data


def _number(value, what: str, low: float = 0.0, high: float | None = None) -> float:
    """``value`` as a finite number in ``[low, high]`` (no upper bound when ``high`` is None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"'{what}' must be a number, got {value!r}.")
    if not low <= value <= (float("inf") if high is None else high) or value == float("inf"):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"'{what}' must be a finite number {bounds}, got {value!r}."
        )
    return float(value)


def choose_target(targets: dict[str, dict], request: dict) -> str:
    """The name of the target that fits ``request``, of ``targets`` (name: target summary from
    the zoo's index: ``arch``, ``accelerator``, ``ram_gb``).

    Raises:
        RequestError: A malformed request (400) or no target fits (404).
    """
    if "target" in request and "cpu" not in request:
        name = request["target"]
        if not isinstance(name, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, "'target' must be a target name.")
        if name not in targets:
            raise RequestError(
                HTTPStatus.NOT_FOUND,
                f"The zoo has no bundle for target '{name}'; it has {', '.join(sorted(targets))}.",
            )
        return name
    if isinstance(request.get("name"), str) and request["name"] in targets:
        return request["name"]
    cpu, memory = request.get("cpu"), request.get("memory")
    if not isinstance(cpu, dict) or not isinstance(cpu.get("arch"), str):
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            'A descriptor needs cpu.arch (and memory.ram_gb); or send {"target": NAME}.',
        )
    if not isinstance(memory, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, "A descriptor needs memory.ram_gb.")
    ram = _number(memory.get("ram_gb"), "memory.ram_gb")
    accelerator = request.get("accelerator")
    if accelerator is not None and not (
        isinstance(accelerator, dict) and isinstance(accelerator.get("kind"), str)
    ):
        raise RequestError(HTTPStatus.BAD_REQUEST, "'accelerator' needs a 'kind' (gpu, npu, tpu).")
    kind = accelerator["kind"] if accelerator else None
    fits = [
        (summary["ram_gb"], name)
        for name, summary in targets.items()
        if summary["arch"] == cpu["arch"]
        and summary["accelerator"] == kind
        and summary["ram_gb"] <= ram
    ]
    if not fits:
        raise RequestError(
            HTTPStatus.NOT_FOUND,
            f"No bundle in the zoo fits a {cpu['arch']} device with "
            f"{'a ' + kind if kind else 'no accelerator'} and {ram:g} GB of RAM; it has "
            f"{', '.join(sorted(targets))}.",
        )
    best_ram = max(ram_gb for ram_gb, _ in fits)
    return min(name for ram_gb, name in fits if ram_gb == best_ram)


class Registry:
    """The registry's logic over one zoo directory, independent of HTTP."""

    def __init__(self, zoo: Path):
        self.zoo = Path(zoo)
        rollout.ensure_released(self.zoo)

    def bundle_for(self, request: dict, device_id: str | None) -> dict:
        """The answer to ``POST /v1/bundle``."""
        version, channel = rollout.read_state(self.zoo).assign(device_id)
        bundles = rollout.read_release(self.zoo, version)
        name = choose_target({n: b.target for n, b in bundles.items()}, request)
        bundle = bundles[name]
        return {
            "target": name,
            "version": version,
            "channel": channel,
            "manifest_sha256": bundle.manifest_sha256,
            "archive_url": f"/v1/archive/{bundle.archive_sha256}",
            "archive_sha256": bundle.archive_sha256,
            "archive_bytes": bundle.archive_bytes,
            "signature": bundle.signature,
        }

    def archive(self, digest: str) -> Path:
        """The archive file named by ``digest``.

        Raises:
            RequestError: No such archive (404).
        """
        path = self.zoo / rollout.ARCHIVES / f"{digest}.tar.gz"
        if not path.is_file():
            raise RequestError(HTTPStatus.NOT_FOUND, f"No archive with sha256 {digest}.")
        return path

    def report(self, body: dict, device_id: str | None) -> dict:
        """Record a device's SLO report; the answer to ``POST /v1/report``."""
        device_id = device_id or body.get("device_id")
        if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"A report needs the device id (the {DEVICE_ID_HEADER} header).",
            )
        report = {"device_id": device_id, "received": rollout.report_time()}
        if "p99_ms" in body:
            report["p99_ms"] = _number(body["p99_ms"], "p99_ms")
        if "within_budget" in body:
            report["within_budget"] = _number(body["within_budget"], "within_budget", 0, 1)
        if "drift_psi" in body:
            drift = body["drift_psi"]
            if isinstance(drift, dict):  # one PSI per signal: keep them, summarise by the worst
                per_signal = {str(k): _number(v, f"drift_psi.{k}") for k, v in drift.items()}
                report["drift_psi_by_signal"] = per_signal
                report["drift_psi"] = max(per_signal.values(), default=0.0)
            else:
                report["drift_psi"] = _number(drift, "drift_psi")
        if len(report) == 2:
            raise RequestError(
                HTTPStatus.BAD_REQUEST, "A report needs p99_ms, within_budget or drift_psi."
            )
        report["version"], report["channel"] = rollout.read_state(self.zoo).assign(device_id)
        rollout.append_report(self.zoo, report)
        return {"recorded": True, "version": report["version"], "channel": report["channel"]}

    def health(self) -> dict:
        """The answer to ``GET /healthz``."""
        return {"ok": True, **rollout.read_state(self.zoo).to_json()}


def _handler(registry: Registry, request_timeout_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = request_timeout_s  # a slow client is cut off
        server_version = "edgec-registry"

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass  # quiet by default; errors go back to the client

        def _device_id(self) -> str | None:
            value = self.headers.get(DEVICE_ID_HEADER)
            if value is not None and not _DEVICE_ID.match(value):
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"{DEVICE_ID_HEADER} must be 1 to 128 printable characters without spaces.",
                )
            return value

        def _body(self) -> dict:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise RequestError(HTTPStatus.BAD_REQUEST, "The request needs a Content-Length.")
            if int(length) > MAX_BODY:
                raise RequestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"The body is {length} bytes; the registry takes at most {MAX_BODY}.",
                )
            return _parse_body(self.rfile.read(int(length)))

        def _send_json(self, status: HTTPStatus, data: dict) -> None:
            payload = (json.dumps(data) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _answer(self, work: Callable[[], dict | Path]) -> None:
            try:
                result = work()
            except RequestError as err:
                self.close_connection = True  # an unread body must not become a request
                self._send_json(err.status, {"error": str(err)})
                return
            except BadInputError as err:  # the zoo's files: the operator's problem
                self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(err)})
                return
            if isinstance(result, Path):
                self._send_file(result)
            else:
                self._send_json(HTTPStatus.OK, result)

        def _send_file(self, path: Path) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(path.stat().st_size))
            self.end_headers()
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 16):
                    self.wfile.write(chunk)

        def do_GET(self):
            match = _ARCHIVE_PATH.match(self.path)
            if match:
                self._answer(lambda: registry.archive(match.group(1)))
            elif self.path == "/healthz":
                self._answer(registry.health)
            else:
                self._answer(self._not_found)

        def do_POST(self):
            if self.path == "/v1/bundle":
                self._answer(lambda: registry.bundle_for(self._body(), self._device_id()))
            elif self.path == "/v1/report":
                self._answer(lambda: registry.report(self._body(), self._device_id()))
            else:
                self._answer(self._not_found)

        def _not_found(self):
            known = ("/v1/bundle", "/v1/report", "/healthz")
            if self.path in known or _ARCHIVE_PATH.match(self.path):
                raise RequestError(
                    HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed on {self.path}."
                )
            raise RequestError(HTTPStatus.NOT_FOUND, f"No such endpoint: {self.path}.")

    return Handler


def make_server(
    zoo: Path, host: str = "127.0.0.1", port: int = 0, request_timeout_s: float = 10.0
) -> ThreadingHTTPServer:
    """A registry server for ``zoo`` (bound, not yet serving). On a zoo with nothing released
    yet, the zoo's version is released to every device first.

    Raises:
        BadInputError: Not a zoo, or the address cannot be listened on.
    """
    registry = Registry(zoo)
    try:
        server = ThreadingHTTPServer((host, port), _handler(registry, request_timeout_s))
    except OSError as err:
        raise BadInputError(f"Cannot listen on {host}:{port}: {err.strerror}.") from None
    server.daemon_threads = True
    return server


def serve_registry(
    zoo: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    announce: Callable[[str], None] = print,
    request_timeout_s: float | None = None,
) -> None:
    """Serve ``zoo`` until SIGTERM or Ctrl-C.

    Raises:
        BadInputError: Not a zoo, or the address cannot be listened on.
    """
    server = make_server(zoo, host, port, 10.0 if request_timeout_s is None else request_timeout_s)
    bound_host, bound_port = server.server_address[:2]
    state = rollout.read_state(zoo)
    canary = state.canary
    share = f", canary {canary.version} to {canary.percent:g}%" if canary else ""
    announce(
        f"registry for {zoo} on http://{bound_host}:{bound_port} (current {state.current}{share})"
    )
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    finally:
        server.server_close()
