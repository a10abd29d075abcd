"""Writing one benchmark's section of ``benchmarks/RESULTS.md`` between its markers.

Each benchmark owns the text between its ``<!-- name:begin -->`` and ``<!-- name:end -->``
markers; a rerun replaces that text and leaves every other section alone.
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(section: str, begin: str, end: str, results: Path = RESULTS) -> None:
    """Replace the text between ``begin`` and ``end`` with ``section``, or append it."""
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results.write_text(text)
