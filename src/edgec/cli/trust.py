"""Trust commands: ``keygen``, ``sign``, ``verify`` and ``install`` (with ``--rollback``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgec.cli import options
from edgec.cli.common import handle_errors, out, print_json, say
from edgec.errors import EXIT_GATE_FAILED


@click.command("keygen")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
@handle_errors
def keygen_command(directory: Path, force: bool) -> None:
    """Create an ed25519 key pair: DIRECTORY/edgec.key (private, 0600) and edgec.pub."""
    from edgec.bundle import trust

    private, public = trust.generate_keys(directory, force)
    kid = trust.key_id(trust.load_public_key(public))
    say(f"private key: {private} (keep it secret)\npublic key:  {public}\nkey id: {kid}")


@click.command("sign")
@options.bundle_argument()
@options.private_key_option()
@handle_errors
def sign_command(bundle: Path, key: Path) -> None:
    """Sign BUNDLE's manifest (its files must match it) into BUNDLE/manifest.sig."""
    from edgec.bundle import trust

    say(f"signed: {trust.sign_bundle(bundle, key)}")


@click.command("verify")
@options.bundle_argument()
@options.public_key_option("Public key (edgec.pub); without it only file integrity is checked.")
@options.json_option()
@handle_errors
def verify_command(bundle: Path, key: Path | None, as_json: bool) -> None:
    """Exit 0 when BUNDLE verifies (signature, every file, no extra file), else 1 with why."""
    from rich.markup import escape

    from edgec.bundle import trust

    result = trust.verify_bundle(bundle, key)
    if as_json:
        print_json(result.to_json())
        if not result.valid:
            sys.exit(EXIT_GATE_FAILED)
        return
    trust.require_valid(result)
    out.print(f"[green]OK[/green] {escape(result.summary)}")


@click.command("install")
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option(
    "--into",
    type=click.Path(path_type=Path),
    required=True,
    help="Install directory (holds current, previous and versions/).",
)
@options.public_key_option(
    "Public key (edgec.pub); when given, only bundles it signed are installed."
)
@click.option("--rollback", is_flag=True, help="Make the previous version current again.")
@options.json_option()
@handle_errors
def install_command(
    bundle: Path | None, into: Path, key: Path | None, rollback: bool, as_json: bool
) -> None:
    """Verify BUNDLE, copy it into INTO/versions/<hash> and switch INTO/current atomically.

    \b
    Examples:
      edgec install out/rpi4 --into /opt/models --key edgec.pub
      edgec install --rollback --into /opt/models
    """
    from edgec.bundle import install as installer
    from edgec.errors import BadInputError

    if rollback == (bundle is not None):
        raise BadInputError("Give either a BUNDLE to install or --rollback, not both or neither.")
    if rollback:
        result = installer.rollback(into, key)
    else:
        result = installer.install_bundle(bundle, into, key)
    if as_json:
        print_json(result.to_json())
    else:
        say(result.summary)


COMMANDS = (keygen_command, sign_command, verify_command, install_command)
