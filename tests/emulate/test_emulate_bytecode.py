"""The emulated device's bytecode: what a first run compiles from the cache's sources stays
in the cache (next to them), what it compiles from the bundle does not, and nothing is left
in a temporary directory.

A real Python (this one) writes the bytecode, as the sysroot's does under qemu: through
``PYTHONPYCACHEPREFIX``, into the prefix :func:`edgec.emulate.bytecode.kept` gives.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edgec.emulate import bytecode, run


def _import_with_prefix(prefix: Path, paths: list[Path], modules: list[str]) -> None:
    env = {
        **os.environ,
        "PYTHONPYCACHEPREFIX": str(prefix),
        "PYTHONPATH": os.pathsep.join(map(str, paths)),
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    code = f"import {', '.join(modules)}"
    subprocess.run([sys.executable, "-s", "-c", code], env=env, check=True, timeout=60)


def test_a_first_run_keeps_the_caches_bytecode_and_drops_the_bundles(tmp_path):
    cache, bundle = tmp_path / "cache" / "site", tmp_path / "bundle"
    (cache / "wheelpkg").mkdir(parents=True)
    (cache / "wheelpkg" / "__init__.py").write_text("VALUE = 1\n")
    (bundle / "runtime").mkdir(parents=True)
    (bundle / "runtime" / "__init__.py").write_text("")
    (bundle / "runtime" / "device.py").write_text("import wheelpkg\n")
    assert bytecode.pending([cache]) == [cache]
    with bytecode.kept([cache]) as prefix:
        _import_with_prefix(prefix, [bundle, cache], ["runtime.device"])
        assert list(prefix.rglob("device.*.pyc"))  # the run did write the bundle's
    kept = list((cache / "wheelpkg" / "__pycache__").glob("__init__.*.pyc"))
    assert len(kept) == 1 and kept[0].name.startswith("__init__.cpython-")
    assert not list(bundle.rglob("__pycache__")) and not list(bundle.rglob("*.pyc"))
    assert not prefix.exists()
    assert bytecode.pending([cache]) == []


def test_a_failed_run_keeps_nothing(tmp_path):
    """A run that fails (an exception in the block) marks nothing: the next run compiles."""
    cache = tmp_path / "site"
    (cache / "mod").mkdir(parents=True)
    (cache / "mod" / "__init__.py").write_text("")
    try:
        with bytecode.kept([cache]) as prefix:
            _import_with_prefix(prefix, [cache], ["mod"])
            raise RuntimeError("the runtime failed")
    except RuntimeError:
        pass
    assert not prefix.exists() and not list(cache.rglob("*.pyc"))
    assert bytecode.pending([cache]) == [cache]


def test_only_a_run_over_an_uncompiled_cache_writes_bytecode(tmp_path):
    """-B (and PYTHONDONTWRITEBYTECODE) on every run but the one that keeps bytecode."""
    argv = run.command("qemu-aarch64", tmp_path, [Path("x.npy")], ["--json"])
    assert "-B" in argv
    assert "-B" not in run.command(
        "qemu-aarch64", tmp_path, [Path("x.npy")], [], write_bytecode=True
    )
    assert run.environment(tmp_path, [])["PYTHONDONTWRITEBYTECODE"] == "1"


def test_bytecode_already_kept_stays_and_what_is_missing_is_added(tmp_path):
    """A later run over a marked cache adds the bytecode of modules it imports first and
    leaves what an earlier run kept as it is."""
    cache = tmp_path / "site"
    for name in ("old", "new"):
        (cache / name).mkdir(parents=True)
        (cache / name / "__init__.py").write_text("")
    with bytecode.kept([cache]) as prefix:
        _import_with_prefix(prefix, [cache], ["old"])
    (kept,) = (cache / "old" / "__pycache__").glob("*.pyc")
    kept.write_bytes(b"earlier run")  # a stand-in: only its bytes are checked
    with bytecode.kept([cache]) as prefix:
        _import_with_prefix(prefix, [cache], ["old", "new"])
    assert kept.read_bytes() == b"earlier run"
    assert len(list((cache / "new" / "__pycache__").glob("__init__.*.pyc"))) == 1
