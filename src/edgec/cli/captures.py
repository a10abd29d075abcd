"""``edgec captures``: what ``edgec run --capture`` spooled, and its export for the next compile."""

from __future__ import annotations

from pathlib import Path

import click

from edgec.cli import options
from edgec.cli.common import handle_errors, print_json


@click.command("captures")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--export",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the frames to FILE.npz (array x, no labels), the layout --data takes.",
)
@options.json_option()
@handle_errors
def captures_command(directory: Path, output: Path | None, as_json: bool) -> None:
    """Summarise the frames `edgec run --capture DIRECTORY` kept; export them with --export.

    \b
    Examples:
      edgec captures spool/
      edgec captures spool/ --export next.npz
    """
    from edgec.bundle.captures import export_captures, read_captures

    found = export_captures(directory, output) if output else read_captures(directory)
    summary = found.summary()
    if output:
        summary["exported"] = str(output)
    if as_json:
        print_json(summary)
        return
    reasons = ", ".join(f"{n} {r}" for r, n in summary["reasons"].items())
    click.echo(
        f"{summary['frames']} frames {summary['shape'][1:]} {summary['dtype']} ({reasons}); "
        f"{summary['captured']} captured, {summary['dropped']} dropped to keep the caps"
    )
    if output:
        click.echo(f"wrote {output}: compile with --data {output}")
