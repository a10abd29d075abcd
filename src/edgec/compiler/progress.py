"""Progress reporting for long steps: a rich status line per step, on stderr.

Steps print ``✓ name (1.2 s)`` when done. ``quiet`` silences everything (``--json`` keeps
stdout clean regardless, because progress goes to stderr).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console


class Reporter:
    """Reports steps of a long operation.

    Attributes:
        console: Where progress goes (stderr).
        quiet: Print nothing.
    """

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.console = console or Console(stderr=True, soft_wrap=True)  # never hard-wrapped
        self.quiet = quiet
        self._status = None
        self._step = ""
        self._last_line = 0.0

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Show a spinner while the block runs, then a check mark and its duration."""
        started = time.perf_counter()
        if self.quiet:
            yield
            return
        with self.console.status(f"{name}…", spinner="dots") as status:
            self._status, self._step = status, name
            try:
                yield
            finally:
                self._status = None
        elapsed = time.perf_counter() - started
        self.console.print(f"[green]✓[/green] {name} [dim]({elapsed:.1f} s)[/dim]")

    def update(self, text: str) -> None:
        """Show live progress of the current step (e.g. tuning trials) next to its spinner.

        Without a terminal (CI logs) the spinner is not drawn, so progress is printed as a
        line instead, at most every 10 seconds.
        """
        if self._status is None:
            return
        if self.console.is_terminal:
            self._status.update(f"{self._step}… [dim]{text}[/dim]")
        elif time.perf_counter() - self._last_line >= 10.0:
            self._last_line = time.perf_counter()
            self.console.print(f"  [dim]{text}[/dim]", highlight=False)

    def note(self, text: str) -> None:
        """Print an informational line."""
        if not self.quiet:
            self.console.print(f"  [dim]{text}[/dim]")
