"""Run a bundle with its own generated runtime: what ``edgec run`` and ``edgec serve`` call.

The code that runs is the bundle's ``runtime/`` package, imported from the bundle under a
name unique to it (so two bundles can be loaded in one process), never a copy inside edgec.
The runtime's own errors (a bundle that does not verify, a stage that cannot be loaded, an
unreadable input) become :class:`~edgec.errors.BadInputError` or
:class:`~edgec.errors.VerificationError`, one sentence each.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

from edgec.bundle.io import read_manifest
from edgec.errors import BadInputError, VerificationError
from edgec.runtime.render import RUNTIME_DIR


def import_runtime(bundle: Path, module: str) -> ModuleType:
    """Import ``module`` (``device`` or ``gateway``) of the bundle's generated runtime.

    Raises:
        BadInputError: Not a bundle, or a bundle without a generated runtime.
    """
    bundle = Path(bundle)
    read_manifest(bundle)
    package_dir = (bundle / RUNTIME_DIR).resolve()
    init = package_dir / "__init__.py"
    if not (package_dir / "device.py").is_file() or not init.is_file():
        raise BadInputError(
            f"Bundle {bundle} has no generated runtime ({RUNTIME_DIR}/device.py); recompile it "
            "with this edgec."
        )
    digest = hashlib.sha256(str(package_dir).encode()).hexdigest()[:16]
    name = f"edgec_bundle_runtime_{digest}"
    # No __pycache__ inside the bundle: it would be an unlisted file, and stale bytecode
    # next to verified sources is exactly what verification must not let run.
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(
                name, init, submodule_search_locations=[str(package_dir)]
            )
            package = importlib.util.module_from_spec(spec)
            sys.modules[name] = package
            try:
                spec.loader.exec_module(package)
            except BaseException:
                del sys.modules[name]
                raise
        return importlib.import_module(f"{name}.{module}")
    except ModuleNotFoundError as err:
        if err.name == f"{name}.{module}":
            raise BadInputError(
                f"Bundle {bundle} has no {module} runtime ({RUNTIME_DIR}/{module}.py)."
            ) from None
        raise
    finally:
        sys.dont_write_bytecode = writes_bytecode


def _bundle_error(device: ModuleType, err: Exception) -> Exception:
    text = str(err).rstrip(".") + "."
    if isinstance(err, device.BundleError) and text.startswith("Refusing to run"):
        return VerificationError(text)
    return BadInputError(text)


def _log_level() -> int:
    return logging.INFO if logging.getLogger().isEnabledFor(logging.INFO) else logging.WARNING


def run_bundle(
    bundle: Path,
    inputs: list[Path],
    gateway_url: str | None = None,
    public_key: Path | None = None,
    device_id: str | None = None,
) -> Iterator[dict]:
    """Answer every input frame with the bundle's device runtime; one dict per frame.

    Each dict has ``input``, ``prediction``, ``confidence``, ``stage``, ``latency_ms`` and
    ``route`` (how the answer came about).

    Raises:
        BadInputError: Bad bundle, inputs or gateway URL.
        VerificationError: A public key is given and the bundle does not verify.
    """
    if not inputs:
        raise BadInputError("Give at least one input: .npy/.npz arrays or images.")
    device = import_runtime(bundle, "device")
    logger = device.observability.json_logger("edgec.runtime.device", _log_level())
    try:
        runtime = device.DeviceRuntime(
            bundle,
            gateway_url=gateway_url,
            public_key=public_key,
            device_id=device_id,
            logger=logger,
        )
    except device.BundleError as err:
        raise _bundle_error(device, err) from None
    with runtime:
        try:
            for index, answer in enumerate(runtime.run_paths(inputs)):
                yield answer.to_json(index)
        except device.inputs.InputFileError as err:
            raise BadInputError(str(err).rstrip(".") + ".") from None


def serve_bundle(
    bundle: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    queue_size: int | None = None,
    workers: int | None = None,
    public_key: Path | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve the bundle's gateway stages with its generated gateway server until stopped.

    Raises:
        BadInputError: Bad bundle, no gateway stages, bad options or the port is taken.
        VerificationError: A public key is given and the bundle does not verify.
    """
    manifest = read_manifest(bundle)
    if not any(stage.get("tier") == "gateway" for stage in manifest["stages"]):
        raise BadInputError(
            f"Bundle {bundle} has no gateway stages (its target has no gateway, or it has no "
            "students): there is nothing to serve; run it with `edgec run`."
        )
    gateway = import_runtime(bundle, "gateway")
    device = import_runtime(bundle, "device")
    logger = gateway.observability.json_logger("edgec.runtime.gateway", _log_level())
    try:
        runtime = gateway.GatewayRuntime(bundle, public_key=public_key)
    except device.BundleError as err:
        raise _bundle_error(device, err) from None
    defaults = gateway.config.GATEWAY
    try:
        server = gateway.GatewayServer(
            runtime,
            host,
            port,
            defaults["queue_size"] if queue_size is None else queue_size,
            defaults["workers"] if workers is None else workers,
            logger=logger,
        )
    except ValueError as err:
        text = str(err)
        raise BadInputError(f"{text[:1].upper()}{text[1:]}.") from None
    except OSError as err:
        raise BadInputError(f"Cannot listen on {host}:{port}: {err.strerror}.") from None
    gateway.serve(server, announce)
