"""Serve a bundle's gateway stages on Ray Serve: what ``edgec serve --engine ray`` calls.

The application that runs is the bundle's own ``runtime/deploy/serve_app.py`` (generated, it
needs only the bundle and Ray), deployed the way ``serve run`` deploys it: imported here as the
package ``runtime`` with the bundle directory as the job's working directory, so the replicas
import the same files from their copy of it. With a public key the bundle is verified first by
edgec's own verifier, the runtime's modules are checked against the verified manifest as they
are imported, and each stages replica verifies its copy again before it loads a stage.

Without ``address`` a local Ray instance is started for the gateway (and stopped with it); with
one, the application is deployed on that cluster and deleted from it on SIGTERM or SIGINT, the
cluster itself left running.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from edgec.bundle.launch import open_bundle
from edgec.errors import BadInputError, MissingDependencyError, VerificationError
from edgec.runtime import verify_bundle as _verify
from edgec.runtime.render import RUNTIME_DIR

APP_NAME = "edgec-gateway"
APP_MODULE = "deploy.serve_app"
# The package name the replicas import the bundle's runtime under (as `serve run` would).
PACKAGE = RUNTIME_DIR
# A local instance started for the gateway stays small: its object store only carries
# requests and answers.
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024
DELETE_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0


def parse_replicas(text: str) -> int | str:
    """``--replicas``: a number >= 1, or ``auto``.

    Raises:
        BadInputError: Anything else.
    """
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise BadInputError(f"--replicas must be a number >= 1 or auto, got {text!r}.")
    return value


def _require_ray() -> ModuleType:
    try:
        import ray
        from ray import serve  # noqa: F401 - Ray without its serve extra lacks this
    except ImportError:
        raise MissingDependencyError(
            "--engine ray needs Ray Serve, which is not installed: pip install 'edgec[serve]'."
        ) from None
    return ray


def _import_app(root: Path, verified: dict | None) -> ModuleType:
    """The bundle's Ray Serve application module, imported as ``runtime.deploy.serve_app``."""
    source = root / RUNTIME_DIR / "deploy" / "serve_app.py"
    if not source.is_file():
        raise BadInputError(
            f"Bundle {root} has no Ray Serve application ({RUNTIME_DIR}/deploy/serve_app.py); "
            "recompile it with this edgec."
        )
    if PACKAGE in sys.modules:
        loaded = Path(getattr(sys.modules[PACKAGE], "__file__", "") or "").parent
        if loaded != root / RUNTIME_DIR:
            raise BadInputError("Another bundle's runtime is loaded in this process.")
    try:
        # The package and its modules, checked against the verified manifest as they load.
        _verify.import_verified(root, "gateway", PACKAGE, verified)
    except _verify.BundleVerificationError as err:
        raise VerificationError(
            f"Refusing to serve {root}: it does not verify: {'; '.join(err.problems)}."
        ) from None
    if verified is not None:
        rel = f"{RUNTIME_DIR}/deploy/serve_app.py"
        expected = (verified.get("files") or {}).get(rel)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        if digest != (expected.get("sha256") if isinstance(expected, dict) else expected):
            raise VerificationError(f"Refusing to serve {root}: {rel} differs from its manifest.")
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        return importlib.import_module(f"{PACKAGE}.{APP_MODULE}")
    finally:
        sys.dont_write_bytecode = writes_bytecode


def _check_reachable(address: str) -> None:
    """Refuse at once a cluster address nothing listens on (Ray would retry for minutes).

    Raises:
        BadInputError: Not ``[ray://]HOST:PORT``, or no connection within CONNECT_TIMEOUT_S.
    """
    if address == "auto":  # Ray finds the cluster started on this machine itself
        return
    host, _, port_text = address.removeprefix("ray://").rpartition(":")
    if not host or not port_text.isdigit():
        raise BadInputError(
            f"--address {address!r} is not HOST:PORT (ray start's address) or ray://HOST:PORT."
        )
    try:
        socket.create_connection((host.strip("[]"), int(port_text)), CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise BadInputError(
            f"Cannot reach the Ray cluster at {address}: {err.strerror or err}; start it "
            "(ray start --head) or check the address."
        ) from None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def serve_bundle_ray(
    bundle: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    replicas: int | str = 1,
    address: str | None = None,
    max_batch: int | None = None,
    batch_wait_ms: float | None = None,
    queue_size: int | None = None,
    public_key: Path | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve the bundle's gateway stages as a Ray Serve application until SIGTERM or SIGINT.

    Args:
        bundle: The bundle directory.
        host: Address Ray Serve's HTTP proxy listens on.
        port: Its port (0: a free one, picked here).
        replicas: Stages replicas, or ``auto`` (Ray Serve's autoscaling on ongoing requests).
        address: The Ray cluster (``ray start``'s address, or ``ray://host:10001``); ``None``
            starts a local instance.
        max_batch: Most requests one stages call runs together (1: no batching; None: the
            bundle's).
        batch_wait_ms: Longest a request waits for a batch to fill (None: the bundle's).
        queue_size: Requests that may wait for the stages; beyond that, 429.
        public_key: Verify the bundle against this key (here and in every replica).
        announce: Where the "listening on" line goes.

    Raises:
        BadInputError: Ray is missing, a bad bundle or option, an unreachable cluster, or the
            application does not start.
        VerificationError: A public key is given and the bundle does not verify.
    """
    ray = _require_ray()
    from ray import serve

    root, manifest, verified = open_bundle(bundle, public_key)
    if not any(stage.get("tier") == "gateway" for stage in manifest["stages"]):
        raise BadInputError(
            f"Bundle {bundle} has no gateway stages (its target has no gateway, or it has no "
            "students): there is nothing to serve; run it with `edgec run`."
        )
    app_module = _import_app(root, verified)
    port = _free_port(host) if port == 0 else port
    if _port_taken(host, port):
        raise BadInputError(f"Cannot listen on {host}:{port}: the port is taken.")
    args: dict = {"replicas": replicas, "proxy": f"{host}:{port}"}
    # None: the bundle's own batching settings (the application reads them).
    if max_batch is not None:
        args["max_batch"] = max_batch
    if batch_wait_ms is not None:
        args["batch_wait_ms"] = batch_wait_ms
    if queue_size is not None:
        args["queue_size"] = queue_size
    if public_key is not None:
        # Read here (the builder runs in this process); the replicas get its bytes.
        args["public_key"] = str(Path(public_key).resolve())
    try:
        app = app_module.build(args)
    except ValueError as err:
        raise BadInputError(f"{str(err)[:1].upper()}{str(err)[1:]}.") from None
    runtime_env = {"working_dir": str(root), "env_vars": {"PYTHONDONTWRITEBYTECODE": "1"}}
    local = address is None
    if not local:
        _check_reachable(address)
    try:
        ray.init(
            address="local" if local else address,
            runtime_env=runtime_env,
            include_dashboard=False if local else None,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES if local else None,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except (ConnectionError, ValueError, RuntimeError) as err:
        where = "start a local Ray instance" if local else f"reach the Ray cluster at {address}"
        raise BadInputError(f"Cannot {where}: {_first_line(err)}.") from None
    stop = threading.Event()
    try:
        try:
            serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
        except ray.exceptions.RayError as err:
            # Seen on a machine whose cores were busy: Serve killed its HTTP proxy actor
            # before it started (ActorDiedError). Not a bug in the bundle; Ray's to retry.
            raise BadInputError(
                f"Ray Serve's HTTP proxy did not start: {_first_line(err)} (a busy machine can "
                "make it time out: try again, and see Ray's logs)."
            ) from None
        if _proxy_address(host, port) != (host, port):
            host, port = _proxy_address(host, port)
            app = app_module.build({**args, "proxy": f"{host}:{port}"})
        try:
            serve.run(app, name=APP_NAME, route_prefix="/")
        except (RuntimeError, ray.exceptions.RayError) as err:
            raise BadInputError(
                f"The Ray Serve application did not start: {_first_line(err)} (see Ray's logs)."
            ) from None
        _on_signals(stop)
        announce(f"edgec gateway (Ray Serve) listening on http://{host}:{port}")
        while not stop.wait(0.5):
            pass
    finally:
        if not local:
            # Leave the cluster as it was found; a cluster that no longer answers is not
            # waited for beyond DELETE_TIMEOUT_S.
            deleting = threading.Thread(target=_delete, args=(serve,), daemon=True)
            deleting.start()
            deleting.join(DELETE_TIMEOUT_S)
        # A local instance goes with everything on it (Serve included).
        ray.shutdown()


def _first_line(err: Exception) -> str:
    """The first line of an error's message, without its full stop (its type when empty)."""
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".") if text else type(err).__name__


def _delete(serve) -> None:
    with contextlib.suppress(Exception):
        serve.delete(APP_NAME)


def _proxy_address(host: str, port: int) -> tuple[str, int]:
    """Where the proxy listens: Serve already running on a cluster keeps its own HTTP options
    (Ray says so in a warning), so ask its controller (Serve's client, pinned version)."""
    try:
        from ray.serve.context import _get_global_client

        options = _get_global_client().http_config
        return str(options.host), int(options.port)
    except Exception:  # an older or newer Serve without it: what was asked for
        return host, port


def _on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
