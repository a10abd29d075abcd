"""``edgec targets`` (the device registry, and which backends work here) and ``targets show``.

Whether a backend is usable is said in words, not only in colour, and every text that comes
from elsewhere (descriptions, reasons such as ``pip install 'edgec[tvm]'``) is escaped so that
rich does not read its brackets as markup.
"""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from edgec.cli import options
from edgec.cli.common import handle_errors, out, print_json, say


def describe_backends(backends: dict[str, tuple[bool, str]]) -> str:
    """One backend a line, ``tvm (usable)`` or ``tensorrt (not usable)``; the reasons follow
    the table."""
    return "\n".join(
        f"{name} (usable)" if ok else f"{name} (not usable)" for name, (ok, _) in backends.items()
    )


@click.group("targets", invoke_without_command=True)
@options.json_option()
@click.pass_context
@handle_errors
def targets_group(ctx: click.Context, as_json: bool) -> None:
    """List the device registry and which backends work on this machine."""
    if ctx.invoked_subcommand is not None:
        return
    from edgec.targets import availability, load_target, shipped_target_names

    rows = []
    for name in shipped_target_names():
        target = load_target(name)
        rows.append((target, {b: availability(b) for b in target.backends}))
    if as_json:
        print_json(
            [
                {
                    **t.summary(),
                    "description": t.description,
                    "backends": {b: {"usable": ok, "why": why} for b, (ok, why) in bs.items()},
                }
                for t, bs in rows
            ]
        )
        return
    table = Table(title="edgec targets")
    for column in ("name", "kind", "description", "backends here", "gateway"):
        table.add_column(column)
    reasons: dict[str, str] = {}
    for target, backends in rows:
        reasons.update({name: why for name, (ok, why) in backends.items() if not ok})
        gateway = target.gateway.target if target.gateway else ""
        table.add_row(
            escape(target.name),
            escape(target.kind),
            escape(target.description),
            escape(describe_backends(backends)),
            escape(gateway),
        )
    out.print(table)
    for name, why in sorted(reasons.items()):
        say(f"{name} is not usable here: {why}")


@targets_group.command("show")
@click.argument("name")
@options.json_option()
@handle_errors
def targets_show(name: str, as_json: bool) -> None:
    """Show one target's descriptor (NAME or a path to a descriptor YAML)."""
    import yaml

    from edgec.targets import load_target

    data = load_target(name).model_dump(mode="json", exclude_none=True)
    if as_json:
        print_json(data)
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
