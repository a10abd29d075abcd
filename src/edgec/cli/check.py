"""``edgec check``: the CI gate (exit 0 within budget, 1 over it)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from edgec.cli import options
from edgec.cli.common import handle_errors, out, print_json
from edgec.errors import EXIT_GATE_FAILED


@click.command("check")
@options.bundle_argument()
@options.budget_option(
    "Latency budget in milliseconds (default: the budget BUNDLE was compiled for)."
)
@click.option(
    "--percentile",
    type=click.Choice(options.PERCENTILE_CHOICES),
    help="Latency percentile the budget applies to (default: the bundle's with its budget, "
    "else 99).",
)
@click.option("--junit", type=click.Path(path_type=Path), help="Write a JUnit XML report.")
@click.option(
    "--require-measured",
    is_flag=True,
    help="Fail when the latency is only estimated, not measured.",
)
@options.json_option()
@handle_errors
def check_command(
    bundle: Path,
    budget_ms: float | None,
    percentile: str | None,
    junit: Path | None,
    require_measured: bool,
    as_json: bool,
) -> None:
    """CI gate: exit 0 when BUNDLE meets the latency budget, 1 when it does not."""
    from edgec.compiler import check_bundle

    chosen = int(percentile) if percentile is not None else None
    result = check_bundle(bundle, budget_ms, chosen, require_measured, junit)
    if as_json:
        print_json(result.to_json())
    else:
        if result.budget_note:
            click.echo(result.budget_note)
        for index, item in enumerate(result.checks):
            mark = "[green]PASS[/green]" if item.passed else "[red]FAIL[/red]"
            style = "" if index == 0 else "[dim]"
            out.print(f"{mark} {style}{escape(item.message)}")
    if not result.passed:
        sys.exit(EXIT_GATE_FAILED)
