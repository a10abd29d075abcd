"""Bytecode for the emulated device's cached Python files, kept from the run that compiled it.

Debian's ``.deb`` files and pip's wheels hold Python sources; their install steps (Debian's
``py3compile``, pip's compile step) are what write the ``.pyc`` files, and the cache unpacks
both without running them. Without bytecode every emulated run compiled each module it
imported (the standard library's, numpy's, ONNX Runtime's...) again, under the CPU emulator:
most of a short run's time.

So the first run over a cache directory that has no bytecode yet writes its bytecode into a
temporary ``PYTHONPYCACHEPREFIX`` tree; afterwards the files compiled from the cache's own
sources are moved next to those sources (``__pycache__``, where later runs read them) and the
rest (the bundle's) is deleted with the tree. Later runs run with ``-B``: nothing is written,
and the bundle's own files are never read as bytecode.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

MARKER = ".edgec-bytecode"  # in a cache directory whose imported modules have bytecode


def pending(dirs: list[Path]) -> list[Path]:
    """The directories of ``dirs`` whose bytecode was never kept."""
    return [d for d in dirs if not (d / MARKER).is_file()]


@contextmanager
def kept(dirs: list[Path]) -> Iterator[Path]:
    """A temporary pycache prefix for one run; on leaving, the bytecode compiled from sources
    under ``dirs`` moves next to them (where none is yet) and ``dirs`` are marked."""
    prefix = Path(tempfile.mkdtemp(prefix="edgec-emulate-pyc-"))
    try:
        yield prefix
        _harvest(prefix, dirs)
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def _harvest(prefix: Path, dirs: list[Path]) -> None:
    roots = {r for d in dirs for r in (d.absolute(), d.resolve())}
    for pyc in prefix.rglob("*.pyc"):
        source_dir = Path("/") / pyc.parent.relative_to(prefix)
        if not any(source_dir == r or r in source_dir.parents for r in roots):
            continue  # not a cache file (the bundle's own): dropped with the prefix
        target = source_dir / "__pycache__" / pyc.name
        if target.exists():
            continue
        try:
            target.parent.mkdir(exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}")
            shutil.copyfile(pyc, partial)
            partial.replace(target)  # whole or absent, whatever runs beside this one
        except OSError:
            continue  # a read-only cache: bytecode only saves time
    for d in dirs:
        with suppress(OSError):
            (d / MARKER).write_text("", encoding="utf-8")
