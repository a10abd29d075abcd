"""Runtime commands: ``run`` (a bundle's device runtime) and ``serve`` (its gateway).

Both are thin: the work is in :mod:`edgec.bundle.launch`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgec.cli import options
from edgec.cli.common import handle_errors

_VERIFY_KEY_HELP = "Public key (edgec.pub): refuse a bundle that does not verify against it."


@click.command("run")
@options.bundle_argument()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--gateway", metavar="URL", help="Gateway to offload to, e.g. http://gw:8080.")
@options.public_key_option(_VERIFY_KEY_HELP)
@click.option("--device-id", help="This device's name in logs and requests.")
@click.option(
    "--power-state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the power state, normal or low, re-read when it changes; low switches "
    "to the low-power policy (default: $EDGEC_POWER_STATE, else normal).",
)
@options.trace_option()
@options.json_option("One JSON object per input, one a line.")
@click.option(
    "--capture",
    "capture_dir",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Spool frames under the capture threshold, or overruled by the gateway, to DIR with "
    "their metadata (off by default: frames may be private). Export: edgec captures DIR.",
)
@click.option(
    "--capture-max-frames",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Most frames --capture keeps (the oldest are dropped).",
)
@click.option(
    "--capture-max-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=100.0,
    show_default=True,
    help="Most megabytes --capture keeps (the oldest are dropped).",
)
@click.option(
    "--emulate",
    is_flag=True,
    help="Run the device runtime on an emulated Raspberry Pi CPU (qemu-aarch64, Cortex-A72) "
    "with Debian's arm64 Python and the real aarch64 wheels, fetched once into "
    "~/.cache/edgec/emulate (docs/emulate.md); latencies are labelled emulated.",
)
@handle_errors
def run(
    bundle: Path,
    inputs: tuple[Path, ...],
    gateway: str | None,
    key: Path | None,
    device_id: str | None,
    power_state_file: Path | None,
    as_json: bool,
    capture_dir: Path | None,
    capture_max_frames: int,
    capture_max_mb: float,
    emulate: bool,
    trace: str,
) -> None:
    """Run INPUTS (.npy/.npz batches, images) through BUNDLE's generated device runtime.

    \b
    Examples:
      edgec run out/rpi4 frames.npy --json
      edgec run out/rpi4 photo.png --gateway http://gateway:8080
      edgec run out/rpi4 frames.npy --capture spool/ --capture-max-mb 50
      edgec run out/rpi4 frames.npy --emulate --json
    """
    if emulate:
        if trace != "off":
            # The emulated device carries edgec's pinned runtime wheels, not OpenTelemetry.
            from edgec.errors import BadInputError

            raise BadInputError("--trace runs on the host only; drop it with --emulate.")
        from edgec.emulate.run import run_emulated as launch
    else:
        from functools import partial

        from edgec.bundle.launch import run_bundle

        launch = partial(run_bundle, trace=trace)

    try:
        capture = None
        if capture_dir is not None:
            capture = {
                "capture_dir": capture_dir,
                "capture_max_frames": capture_max_frames,
                "capture_max_mb": capture_max_mb,
            }
        for item in launch(
            bundle, list(inputs), gateway, key, device_id, capture, power_state_file
        ):
            if as_json:
                click.echo(json.dumps(item))
            else:
                click.echo(_describe(item))
    except BrokenPipeError:  # the reader (e.g. `| head`) has gone: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _describe(item: dict) -> str:
    """One line per answered input; a frame nobody answered says so instead of 'class -1'."""
    if item["prediction"] < 0:
        answer = "no answer"
    else:
        answer = f"class {item['prediction']} (p={item['confidence']:.3f}) from {item['stage']}"
    timing = f" ({item['timing']})" if "timing" in item else ""
    return f"{item['input']}: {answer} in {item['latency_ms']:.3f} ms{timing} [{item['route']}]"


@click.command("serve")
@options.bundle_argument()
@click.option(
    "--tier",
    type=click.Choice(["gateway", "registry"]),
    default="gateway",
    show_default=True,
    help="The tier to serve (devices run `edgec run`); registry: BUNDLE is a zoo whose "
    "bundles devices fetch (docs/fleet.md).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port (0: any free).")
@click.option("--queue-size", type=int, help="Requests that may wait; beyond that, 429.")
@click.option("--workers", type=int, help="Inference threads.")
@click.option(
    "--request-timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    help="Longest time a whole request (line, headers and body) may take to arrive; a slow "
    "client is cut off after it (default: the bundle's, 10 s).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1, max=1024),
    help="Most waiting requests a gateway worker runs as one batch (1: no batching; default: "
    "the bundle's, 8).",
)
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(min=0, max=1000),
    help="Longest a worker waits for more requests after the first of a batch, never past a "
    "request's deadline (default: the bundle's, 2 ms; the plan budgets it).",
)
@options.trace_option()
@options.public_key_option(_VERIFY_KEY_HELP)
@click.option(
    "--engine",
    type=click.Choice(["builtin", "ray"]),
    default="builtin",
    show_default=True,
    help="Gateway engine: the bundle's own server, or its Ray Serve application (needs "
    "edgec[serve]; docs/gateway.md).",
)
@click.option(
    "--replicas",
    default="1",
    show_default=True,
    help="--engine ray: stages replicas, a number or auto (Ray Serve's autoscaling on queue "
    "depth).",
)
@click.option(
    "--address",
    metavar="ADDR",
    help="--engine ray: the Ray cluster to deploy on (ray start's address, or "
    "ray://HOST:10001); default: a local instance started for the gateway.",
)
@handle_errors
def serve(
    bundle: Path,
    tier: str,
    host: str,
    port: int,
    queue_size: int | None,
    workers: int | None,
    request_timeout_s: float | None,
    max_batch: int | None,
    batch_wait_ms: float | None,
    trace: str,
    key: Path | None,
    engine: str,
    replicas: str,
    address: str | None,
) -> None:
    """Serve BUNDLE's gateway stages with its generated gateway server, or with --engine ray
    its Ray Serve application (until SIGTERM).

    With --tier registry, BUNDLE is a zoo (`edgec compile --target a,b,c`) and devices fetch
    the bundle that fits them from it.

    \b
    Examples:
      edgec serve out/rpi4 --tier gateway --host 0.0.0.0 --port 8080
      edgec serve zoo --tier registry --port 8090
      edgec serve out/rpi4 --engine ray --replicas auto --max-batch 8 --batch-wait-ms 5
    """
    if tier == "registry":
        from edgec.bundle.registry import serve_registry
        from edgec.errors import BadInputError

        gateway_only = (queue_size, workers, key, max_batch, batch_wait_ms)
        if (
            any(value is not None for value in gateway_only)
            or trace != "off"
            or engine != "builtin"
        ):
            raise BadInputError(
                "--queue-size, --workers, --max-batch, --batch-wait-ms, --trace, --key and "
                "--engine apply to --tier gateway only; leave them out for the registry."
            )
        serve_registry(bundle, host, port, lambda line: click.echo(line), request_timeout_s)
        return
    if engine == "ray":
        if trace != "off":
            from edgec.errors import BadInputError

            raise BadInputError(
                "--trace applies to --engine builtin; the Ray Serve application has no tracing yet."
            )
        _serve_ray(
            bundle,
            host,
            port,
            queue_size,
            workers,
            request_timeout_s,
            key,
            replicas,
            address,
            max_batch,
            batch_wait_ms,
        )
        return
    if replicas != "1" or address is not None:
        from edgec.errors import BadInputError

        raise BadInputError("--replicas and --address apply to --engine ray only; add it.")
    from edgec.bundle.launch import serve_bundle

    serve_bundle(
        bundle,
        host,
        port,
        queue_size,
        workers,
        key,
        announce=lambda line: click.echo(line),
        request_timeout_s=request_timeout_s,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        trace=trace,
    )


def _serve_ray(
    bundle,
    host,
    port,
    queue_size,
    workers,
    request_timeout_s,
    key,
    replicas,
    address,
    max_batch,
    batch_wait_ms,
) -> None:
    """``serve --engine ray``: the bundle's Ray Serve application (edgec.bundle.serve_ray)."""
    from edgec.bundle.serve_ray import parse_replicas, serve_bundle_ray
    from edgec.errors import BadInputError

    if workers is not None or request_timeout_s is not None:
        raise BadInputError(
            "--workers and --request-timeout-s apply to --engine builtin; with --engine ray "
            "use --replicas (Ray Serve's proxy has its own timeouts)."
        )
    serve_bundle_ray(
        bundle,
        host,
        port,
        parse_replicas(replicas),
        address,
        max_batch,
        batch_wait_ms,
        queue_size,
        key,
        announce=lambda line: click.echo(line),
    )


COMMANDS = (run, serve)
