"""``edgec rollout``: publish a zoo's version to a canary share, promote it, roll it back, or
show what the devices reported. The work is in :mod:`edgec.bundle.rollout`."""

from __future__ import annotations

from pathlib import Path

import click

from edgec.cli import options
from edgec.cli.common import handle_errors, print_json, say


@click.command("rollout")
@click.argument("zoo", type=click.Path(path_type=Path))
@click.option(
    "--canary",
    type=float,
    metavar="PERCENT",
    help="Publish the zoo's version to the devices whose id hashes into the first PERCENT % "
    "(0 < PERCENT <= 100); the others keep the current version.",
)
@click.option(
    "--promote", is_flag=True, help="Make the canary (or the zoo's version) current for all."
)
@click.option("--rollback", is_flag=True, help="Restore the previous version everywhere.")
@click.option(
    "--status", "show_status", is_flag=True, help="Show the releases and the devices' reports."
)
@options.json_option()
@handle_errors
def rollout_command(
    zoo: Path,
    canary: float | None,
    promote: bool,
    rollback: bool,
    show_status: bool,
    as_json: bool,
) -> None:
    """Move ZOO's devices between versions: a canary share first, then everyone (or back).

    \b
    Examples:
      edgec rollout zoo --canary 5
      edgec rollout zoo --status
      edgec rollout zoo --promote
      edgec rollout zoo --rollback
    """
    from edgec.bundle import rollout
    from edgec.errors import BadInputError

    actions = [canary is not None, promote, rollback, show_status]
    if sum(actions) != 1:
        raise BadInputError(
            "Give exactly one of --canary PERCENT, --promote, --rollback or --status."
        )
    if not show_status:
        rollout.read_index(zoo)  # a clear error before anything is written
    if canary is not None:
        state = rollout.start_canary(zoo, canary)
        done = f"canary: {state.canary.version} to {canary:g}% of devices"
    elif promote:
        state = rollout.promote(zoo)
        done = "promoted: every device gets " + state.current
    elif rollback:
        state = rollout.rollback(zoo)
        done = "rolled back: every device gets " + state.current
    else:
        report = rollout.status(zoo)
        print_json(report) if as_json else _print_status(report)
        return
    if as_json:
        print_json(state.to_json())
    else:
        say(done)


def _print_status(report: dict) -> None:
    canary = report["canary"]
    say(f"current: {report['current'] or '(nothing released)'}")
    say(f"previous: {report['previous'] or '-'}")
    say(f"canary: {canary['version']} to {canary['percent']:g}%" if canary else "canary: -")
    if not report["versions"]:
        say("no reports yet")
    for version, summary in report["versions"].items():
        say(
            f"{version}: {summary['devices']} devices, p99 median {_fmt(summary['p99_ms_median'])} "
            f"ms (max {_fmt(summary['p99_ms_max'])}), within budget "
            f"{_fmt(summary['within_budget_mean'], pct=True)} (min "
            f"{_fmt(summary['within_budget_min'], pct=True)}), drift PSI max "
            f"{_fmt(summary['drift_psi_max'])}"
        )


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if pct else f"{value:.3f}"
