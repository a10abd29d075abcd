"""Run a bundle with its own generated runtime: what ``edgec run`` and ``edgec serve`` call.

The code that runs is the bundle's ``runtime/`` package, imported from the bundle under a
name unique to it (so two bundles can be loaded in one process), never a copy inside edgec.
With a public key, the bundle is verified first by edgec's own verifier
(:mod:`edgec.runtime.verify_bundle` as installed with edgec), never by the copy inside the
bundle: until it verifies, nothing in it runs and no file it points to is read. The runtime's
sources are then checked against the verified manifest as they are imported, so a file swapped
after the check is refused too. Without a key nothing is verified (as documented), but a
runtime file that is a symbolic link is still refused.

The runtime's own errors (a stage that cannot be loaded, an unreadable input) become
:class:`~edgec.errors.BadInputError`, one sentence each.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

from edgec.bundle import trust
from edgec.bundle.io import read_manifest
from edgec.errors import BadInputError, GateFailedError, VerificationError
from edgec.runtime import verify_bundle as _verify
from edgec.runtime.render import RUNTIME_DIR


def open_bundle(bundle: Path, public_key: Path | None) -> tuple[Path, dict, dict | None]:
    """Resolve ``bundle`` once and, with a key, verify it with edgec's own verifier.

    Returns:
        The resolved bundle directory (load from it, not from a ``current`` link that may
        move), its manifest, and the verified manifest (``None`` without a key).

    Raises:
        BadInputError: Not a bundle, or the key file is unusable.
        VerificationError: A key is given and the bundle does not verify.
    """
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BadInputError(f"Bundle {bundle} does not exist or is not a directory.")
    root = bundle.resolve()
    if public_key is None:
        return root, read_manifest(root), None
    verified = trust.verified_manifest(root, public_key)
    return root, verified, verified


def import_runtime(bundle: Path, module: str, verified: dict | None = None) -> ModuleType:
    """Import ``module`` (``device`` or ``gateway``) of the bundle's generated runtime.

    Args:
        bundle: The bundle directory (resolved, as :func:`open_bundle` returns it).
        module: ``device`` or ``gateway``.
        verified: The manifest the bundle verified with; each source file must match it.

    Raises:
        BadInputError: Not a bundle, a bundle without a generated runtime, or a runtime file
            that is a symbolic link (without a key).
        VerificationError: A runtime file differs from the verified manifest.
    """
    bundle = Path(bundle)
    if verified is None:
        read_manifest(bundle)
    package_dir = bundle / RUNTIME_DIR
    if not package_dir.is_symlink() and not (
        (package_dir / "device.py").exists() or (package_dir / "device.py").is_symlink()
    ):
        raise BadInputError(
            f"Bundle {bundle} has no generated runtime ({RUNTIME_DIR}/device.py); recompile it "
            "with this edgec."
        )
    if verified is None:
        _refuse_links(bundle, package_dir)
    digest = hashlib.sha256(str(package_dir.absolute()).encode()).hexdigest()[:16]
    name = f"edgec_bundle_runtime_{digest}"
    # No __pycache__ inside the bundle: it would be an unlisted file, and stale bytecode
    # next to verified sources is exactly what verification must not let run.
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        return _verify.import_verified(bundle, module, name, verified)
    except _verify.BundleVerificationError as err:
        reasons = "; ".join(err.problems)
        if verified is not None:
            raise VerificationError(
                f"Refusing to run {bundle}: it does not verify: {reasons}."
            ) from None
        raise BadInputError(
            f"Bundle {bundle} cannot run: {reasons}; a bundle holds regular files only "
            "(recompile or reinstall it)."
        ) from None
    except ModuleNotFoundError as err:
        if err.name in (name, f"{name}.{module}"):
            raise BadInputError(
                f"Bundle {bundle} has no {module} runtime ({RUNTIME_DIR}/{module}.py)."
            ) from None
        raise
    finally:
        sys.dont_write_bytecode = writes_bytecode


def _refuse_links(bundle: Path, package_dir: Path) -> None:
    """Refuse a runtime with a symbolic link anywhere in it (checked without following it)."""
    links = [package_dir] if package_dir.is_symlink() else []
    for dirpath, dirnames, filenames in os.walk(package_dir):
        links += [
            Path(dirpath, n) for n in (*dirnames, *filenames) if Path(dirpath, n).is_symlink()
        ]
    if links:
        rel = links[0].relative_to(bundle).as_posix()
        raise BadInputError(
            f"Bundle {bundle} cannot run: {rel} is a symbolic link; a bundle holds regular "
            "files only (recompile or reinstall it)."
        )


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
    capture: dict | None = None,
    power_state_file: Path | None = None,
    trace: str = "off",
) -> Iterator[dict]:
    """Answer every input frame with the bundle's device runtime; one dict per frame.

    ``capture`` (``capture_dir``, ``capture_max_frames``, ``capture_max_mb``) spools the
    frames worth annotating (the runtime's ``--capture``); ``None`` captures nothing.
    ``trace`` (``off``, ``console``, ``otlp``): OpenTelemetry spans, one trace per frame.

    Each dict has ``input``, ``prediction``, ``confidence``, ``stage``, ``latency_ms`` and
    ``route`` (how the answer came about). The first frame the gateway fails to answer (down,
    refusing, erroring) prints one warning on stderr; a run in which no frame got an answer
    raises once every frame has been yielded.

    Raises:
        BadInputError: Bad bundle, inputs or gateway URL.
        VerificationError: A public key is given and the bundle does not verify.
        GateFailedError: No frame got an answer (e.g. a gateway-only bundle whose gateway is
            down).
    """
    if not inputs:
        raise BadInputError("Give at least one input: .npy/.npz arrays or images.")
    root, _, verified = open_bundle(bundle, public_key)
    device = import_runtime(root, "device", verified)
    log = device.observability.json_logger("edgec.runtime.device", _log_level())
    if capture and not hasattr(device, "capture"):
        raise BadInputError(
            f"Bundle {bundle}'s runtime cannot capture frames (it predates --capture); "
            "recompile it with this edgec."
        )
    extra = _power_state_option(device, power_state_file)
    extra.update(_trace_option(device, trace))
    try:
        # Already verified above by edgec's own verifier: the bundle's copy is not asked.
        runtime = device.DeviceRuntime(
            root,
            gateway_url=gateway_url,
            public_key=None,
            device_id=device_id,
            logger=log,
            **(capture or {}),
            **extra,
        )
    except device.BundleError as err:
        raise _bundle_error(device, err) from None
    answered = frames = 0
    warned = False
    with runtime:
        try:
            for index, answer in enumerate(runtime.run_paths(inputs)):
                frames += 1
                answered += answer.prediction >= 0
                if not warned and answer.route in _GATEWAY_FAILURES:
                    warned = True
                    # Once, in words, on stderr: stdout may be a --json stream.
                    print(
                        f"warning: the gateway {gateway_url} did not answer "
                        f"({answer.route.removeprefix('fallback-')}); frames meant for it are "
                        "answered on the device, or get no answer without a device stage.",
                        file=sys.stderr,
                    )
                yield answer.to_json(index)
        except device.inputs.InputFileError as err:
            raise BadInputError(str(err).rstrip(".") + ".") from None
    if frames and not answered:
        where = f" (the gateway {gateway_url} never answered)" if gateway_url else ""
        raise GateFailedError(
            f"No frame of {frames} got an answer{where}; check that the gateway runs "
            "(`edgec serve`) and is reachable."
        )


def _power_state_option(device: ModuleType, power_state_file: Path | None) -> dict:
    """``power_state_file`` for the bundle's runtime; a runtime generated before policy
    switching has no such option (it is passed only when given)."""
    if power_state_file is None:
        return {}
    if "power_state_file" not in inspect.signature(device.DeviceRuntime).parameters:
        raise BadInputError(
            "This bundle's runtime predates --power-state-file; recompile the bundle with this "
            "edgec to switch policies with the power state."
        )
    return {"power_state_file": power_state_file}


def _trace_option(module: ModuleType, trace: str) -> dict:
    """``trace`` for the bundle's runtime, passed only when on (a runtime generated before
    tracing has no such option)."""
    if trace == "off":
        return {}
    if not hasattr(module, "tracing"):
        raise BadInputError(
            "This bundle's runtime predates --trace; recompile the bundle with this edgec to "
            "trace it."
        )
    return {"trace": trace}


_GATEWAY_FAILURES = frozenset({"fallback-error", "fallback-down", "fallback-refused"})


def serve_bundle(
    bundle: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    queue_size: int | None = None,
    workers: int | None = None,
    public_key: Path | None = None,
    announce: Callable[[str], None] = print,
    request_timeout_s: float | None = None,
    max_batch: int | None = None,
    batch_wait_ms: float | None = None,
    trace: str = "off",
) -> None:
    """Serve the bundle's gateway stages with its generated gateway server until stopped.

    ``request_timeout_s`` is the time a whole request may take to arrive (default: the
    bundle's, 10 s); ``max_batch`` and ``batch_wait_ms`` how requests are batched (default:
    the bundle's); ``trace`` (``off``, ``console``, ``otlp``) OpenTelemetry spans per request.

    Raises:
        BadInputError: Bad bundle, no gateway stages, bad options or the port is taken.
        VerificationError: A public key is given and the bundle does not verify.
    """
    root, manifest, verified = open_bundle(bundle, public_key)
    if not any(stage.get("tier") == "gateway" for stage in manifest["stages"]):
        raise BadInputError(
            f"Bundle {bundle} has no gateway stages (its target has no gateway, or it has no "
            "students): there is nothing to serve; run it with `edgec run`."
        )
    gateway = import_runtime(root, "gateway", verified)
    device = import_runtime(root, "device", verified)
    log = gateway.observability.json_logger("edgec.runtime.gateway", _log_level())
    try:
        runtime = gateway.GatewayRuntime(root, public_key=None)
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
            logger=log,
            **({} if request_timeout_s is None else {"request_timeout_s": request_timeout_s}),
            **_batching(gateway, max_batch, batch_wait_ms),
            **_trace_option(gateway, trace),
        )
    except ValueError as err:  # bad settings, or tracing without OpenTelemetry
        text = str(err)
        raise BadInputError(f"{text[:1].upper()}{text[1:]}.") from None
    except OSError as err:
        raise BadInputError(f"Cannot listen on {host}:{port}: {err.strerror}.") from None
    gateway.serve(server, announce)


def _batching(gateway: ModuleType, max_batch: int | None, batch_wait_ms: float | None) -> dict:
    """The batching options given, for a runtime that has them (generated since batching)."""
    given = {
        k: v
        for k, v in (("max_batch", max_batch), ("batch_wait_ms", batch_wait_ms))
        if v is not None
    }
    if given and not hasattr(gateway, "batcher"):
        raise BadInputError(
            "This bundle's gateway predates --max-batch and --batch-wait-ms; recompile the "
            "bundle with this edgec to batch requests."
        )
    return given
