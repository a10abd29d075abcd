"""Errors that edgec reports to its users, and the exit codes they map to.

Every failure a user can cause (bad model, unknown target, bad flags, unwritable output) is an
:class:`EdgecError` whose message is one sentence saying what was wrong and how to fix it. The
CLI prints that sentence and exits with :attr:`EdgecError.exit_code`; anything else that
escapes is a bug and exits with :data:`EXIT_INTERNAL`.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


class EdgecError(Exception):
    """A failure the user can fix; its message is shown as is, without a traceback."""

    exit_code: int = EXIT_BAD_INPUT


class BadInputError(EdgecError):
    """The model, data, target, flags or paths the user gave cannot be used."""

    exit_code = EXIT_BAD_INPUT


class MissingDependencyError(BadInputError):
    """An optional dependency (an extra) is needed for what the user asked."""


class GateFailedError(EdgecError):
    """A latency or accuracy requirement the user set is not met."""

    exit_code = EXIT_GATE_FAILED


class VerificationError(EdgecError):
    """A bundle does not verify: a bad signature, a changed, missing or unlisted file.

    Like a failed gate, the check ran and said no, so it exits with 1, not 2.
    """

    exit_code = EXIT_GATE_FAILED
