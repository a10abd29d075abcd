"""``edgec loadtest``: simulated devices load a running gateway; the work is in
:mod:`edgec.bundle.loadtest`."""

from __future__ import annotations

from pathlib import Path

import click

from edgec.cli import options
from edgec.cli.common import handle_errors, print_json, say
from edgec.errors import GateFailedError


@click.command("loadtest")
@click.option("--gateway", "url", required=True, metavar="URL", help="The gateway to load.")
@click.option(
    "--bundle",
    required=True,
    type=click.Path(path_type=Path),
    help="The bundle the gateway serves: what its devices send.",
)
@click.option("--devices", default=1, show_default=True, help="Simulated devices.")
@click.option("--rate", type=float, required=True, help="Frames per second, all devices.")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="How long.")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="Inputs (.npz/.npy/images); default: random inputs of the bundle's input spec.",
)
@click.option(
    "--deadline-ms",
    type=float,
    help="The deadline each frame carries; default: the bundle's (budget less the fallback "
    "margin, or the runtime's gateway timeout).",
)
@click.option(
    "--grace-ms",
    type=float,
    default=1000.0,
    show_default=True,
    help="How long past the deadline to wait for an answer before a request counts as lost.",
)
@options.json_option("Print every figure as one JSON object.")
@handle_errors
def loadtest_command(
    url: str,
    bundle: Path,
    devices: int,
    rate: float,
    seconds: float,
    data: Path | None,
    deadline_ms: float | None,
    grace_ms: float,
    as_json: bool,
) -> None:
    """Send frames from N simulated devices to a gateway at a fixed rate (open loop) and
    report what came back: sent, answered, latency percentiles, answers/s, each status
    code, late 200s and lost requests. Exits 1 when a request got no HTTP answer at all.

    \b
    Examples:
      edgec loadtest --gateway http://127.0.0.1:8080 --bundle out/rpi4 --devices 20 --rate 200
      edgec loadtest --gateway http://gw:8080 --bundle out/rpi4 --rate 50 --seconds 30 --json
    """
    from edgec.bundle.loadtest import check_load, prepare_workload, run_load

    check_load(url, devices, rate, seconds, grace_ms)  # before the bundle is read
    workload = prepare_workload(bundle, data, deadline_ms)
    report = run_load(url, workload, devices, rate, seconds, grace_ms).as_dict()
    if as_json:
        print_json(report)
    else:
        for line in describe(report):
            say(line)
    if report["lost"]:
        raise GateFailedError(
            f"{report['lost']} of {report['sent']} requests got no HTTP answer at all "
            f"({', '.join(f'{k}: {v}' for k, v in report['lost_reasons'].items())})."
        )


def describe(report: dict) -> list[str]:
    """The report as a few plain lines."""
    latency = report["latency_ms"]
    codes = ", ".join(f"{code}: {n}" for code, n in report["codes"].items()) or "none"
    percentiles = ", ".join(
        f"{name} {value:.2f}" if value is not None else f"{name} -"
        for name, value in latency.items()
    )
    return [
        f"{report['devices']} devices, {report['rate_fps']:g} frames/s for "
        f"{report['seconds']:g} s to {report['gateway']} (deadline {report['deadline_ms']:g} ms)",
        f"sent {report['sent']}, answered {report['answered']}, lost {report['lost']}, "
        f"skipped {report['skipped']}",
        f"status codes: {codes} (5xx: {report['status_5xx']})",
        f"200 latency ms: {percentiles}; late 200s: {report['late']}",
        f"answers/s {report['answers_per_s']:g} (200s/s {report['ok_per_s']:g}), "
        f"connections {report['connections']}",
    ]
