"""The ``edgec`` command line: click commands that turn flags into a config and call the API.

No logic lives here. Every command maps :class:`~edgec.errors.EdgecError` to one sentence on
stderr and its exit code (2 bad input, 1 gate failed); anything else is a bug (exit 3) and
shows a traceback only with ``-v``. One module per command group; shared options are in
:mod:`edgec.cli.options`, shared output and error handling in :mod:`edgec.cli.common`.
"""

from __future__ import annotations

import logging

import click

from edgec.cli import runtime, trust
from edgec.cli.captures import captures_command
from edgec.cli.check import check_command
from edgec.cli.compile import compile_command
from edgec.cli.inspect import inspect_command
from edgec.cli.rollout import rollout_command
from edgec.cli.targets import targets_group

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="edgec")
def main(verbose: int) -> None:
    """edgec compiles a trained ONNX model into a bundle for an edge device that meets a
    latency budget, and gates CI on that budget.

    \b
    Exit codes: 0 success, 1 budget (gate) failed or bundle does not verify, 2 bad input or
    usage, 3 internal error.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


for _command in (
    targets_group,
    compile_command,
    inspect_command,
    check_command,
    *trust.COMMANDS,
    *runtime.COMMANDS,
    captures_command,
    rollout_command,
):
    main.add_command(_command)
