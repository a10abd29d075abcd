"""Crash an install or rollback at every filesystem call, one call further each time.

Run as a script by ``test_install_faults.py`` (a light process: no onnx). For each crash point
``k`` it copies a template install directory (``current`` -> B, ``previous`` -> A), forks, and
the child runs the operation with a profile hook that calls ``os._exit`` (no cleanup, no
``finally``, like SIGKILL) just before the ``k``-th filesystem call that ``install.py`` itself
makes (mkdir, open, write, fsync, chmod, rename, replace, symlink, unlink, rmdir; the library
calls in between, such as ``rmtree``'s, run whole, so every state between two of them is
covered). The parent then checks the invariant: ``current``
points at a complete bundle that verifies with the key, and so does ``previous`` if it exists;
after recovering (running the operation again) the state is the expected one with no leftovers.
It stops when the child finishes without reaching ``k`` and prints a JSON summary.

Usage: ``python crash_sweep.py WORKDIR PUBLIC_KEY A B C``.
"""

from __future__ import annotations

import io
import json
import os
import posix
import shutil
import sys
from pathlib import Path

from edgec.bundle import install, trust
from edgec.runtime.verify_bundle import manifest_digest

CRASHED = 77
_INSTALL_FILE = install.__file__
_MUTATING = {
    "mkdir",
    "open",
    "write",
    "fsync",
    "chmod",
    "fchmod",
    "rename",
    "replace",
    "symlink",
    "unlink",
    "rmdir",
}


def _crash_at(k: int):
    calls = [0]

    def hook(frame, event, arg):
        if event != "c_call" or frame.f_code.co_filename != _INSTALL_FILE:
            return
        if getattr(arg, "__name__", None) not in _MUTATING:
            return
        owner = getattr(arg, "__self__", None)
        if owner is posix or isinstance(owner, io.IOBase) or arg.__name__ == "open":
            if calls[0] == k:
                os._exit(CRASHED)
            calls[0] += 1

    return hook


def _run_crashing(k: int, operation) -> int:
    pid = os.fork()
    if pid == 0:
        sys.setprofile(_crash_at(k))
        try:
            operation()
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _link(into: Path, name: str) -> str | None:
    path = into / name
    return os.readlink(path).split("/")[1].split(".")[0] if path.is_symlink() else None


def _check(into: Path, key, allowed: set[str]) -> list[str]:
    problems = []
    for name in ("current", "previous"):
        digest = _link(into, name)
        if digest is None:
            if name == "current":
                problems.append("current is missing")
            continue
        result = trust.verify_bundle(into / name, key)
        if not result.valid:
            problems.append(f"{name} does not verify: {result.problems}")
        if name == "current" and digest not in allowed:
            problems.append(f"current is {digest[:12]}, expected one of the two versions")
    return problems


def _leftovers(into: Path) -> list[str]:
    names = [p.name for p in (into / "versions").iterdir() if p.name.startswith(".")]
    return names + [p.name for p in into.iterdir() if p.name.endswith(".tmp")]


def sweep(work: Path, key_path: Path, a: Path, b: Path, c: Path) -> dict:
    key = trust.load_public_key(key_path)
    template = work / "template"
    install.install_bundle(a, template, key)
    install.install_bundle(b, template, key)
    da, db, dc = (manifest_digest(x) for x in (a, b, c))
    operations = {
        # name: (operation on a directory, digests allowed for current, expected final links)
        "install-new": (lambda d: install.install_bundle(c, d, key), {db, dc}, (dc, db)),
        "install-previous": (lambda d: install.install_bundle(a, d, key), {db, da}, (da, db)),
        "rollback": (lambda d: install.rollback(d, key), {db, da}, (da, db)),
    }
    report = {}
    for name, (operation, allowed, expected) in operations.items():
        violations, crashes, k = [], 0, 0
        while True:
            into = work / f"{name}-{k}"
            shutil.copytree(template, into, symlinks=True)
            code = _run_crashing(k, lambda into=into, op=operation: op(into))
            problems = _check(into, key, allowed)
            if code not in (0, CRASHED):
                problems.append(f"exit code {code}")
            if code == CRASHED and name != "rollback":
                operation(into)  # recovery: the same install again completes
            if code == 0 or name != "rollback":
                state = (_link(into, "current"), _link(into, "previous"))
                if state != expected:
                    problems.append(f"final state {state} is not {expected}")
                if _leftovers(into):
                    problems.append(f"leftovers {_leftovers(into)}")
            violations += [f"{name} crash at call {k}: {p}" for p in problems]
            shutil.rmtree(into)
            if code == 0:
                break
            crashes += 1
            k += 1
        report[name] = {"crash_points": crashes, "violations": violations}
    return report


if __name__ == "__main__":
    work, key_path, *bundles = (Path(arg) for arg in sys.argv[1:])
    print(json.dumps(sweep(work, key_path, *bundles)))
