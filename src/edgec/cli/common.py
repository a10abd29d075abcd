"""What every command shares: the consoles, JSON output and the error-to-exit-code mapping.

Messages are never hard-wrapped: without a terminal (CI logs, pipes) a sentence stays on one
line however long it is, so logs can be searched and tests can read it whole. Tables get a
fixed width there instead of rich's 80-column default.
"""

from __future__ import annotations

import functools
import json
import logging
import sys

import click
from rich.console import Console
from rich.markup import escape

from edgec.errors import EXIT_INTERNAL, EdgecError

out = Console(width=None if sys.stdout.isatty() else 120, soft_wrap=True, highlight=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160, soft_wrap=True)


def print_json(data) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def say(text: str) -> None:
    """Print one plain message on stdout: no markup, no wrapping."""
    click.echo(text)


def warn(text: str) -> None:
    """Print one plain message on stderr: no markup, no wrapping."""
    click.echo(text, err=True)


def handle_errors(func):
    """Turn edgec errors into one line and their exit code; anything else is a bug (exit 3)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except EdgecError as error:
            # escape: messages quote user text, which may contain [brackets]
            err.print(f"[bold red]error:[/bold red] {escape(str(error))}", highlight=False)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
        except Exception as error:  # a bug: say so, keep the traceback for -v
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                err.print_exception()
            err.print(
                f"[bold red]internal error:[/bold red] {escape(type(error).__name__)}: "
                f"{escape(str(error))} (this is a bug in edgec; rerun with -v for the traceback "
                "and report it)",
                highlight=False,
            )
            sys.exit(EXIT_INTERNAL)

    return wrapper
