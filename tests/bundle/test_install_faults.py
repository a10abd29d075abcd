"""Fault injection: an install killed at any moment never leaves ``current`` pointing at a
partial or unverified bundle.

Two complementary tests: real ``SIGKILL`` of ``python -m edgec install`` at random times, and an
exhaustive sweep that crashes (``os._exit``, no cleanup) before every single mutating
filesystem call of an install and of a rollback.
"""

from __future__ import annotations

import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from trust_helpers import shared_signed_bundles

from edgec.bundle import install, trust
from edgec.runtime.verify_bundle import manifest_digest

HERE = Path(__file__).resolve().parent
RUNS = 50


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """Keys and three signed bundles of the example teacher (compiled once per session)."""
    return shared_signed_bundles(tmp_path_factory)


def _state(into: Path) -> tuple[str | None, str | None]:
    def digest(name):
        path = install.current_bundle(into) if name == "current" else into / name
        return manifest_digest(path) if path is not None and path.exists() else None

    return digest("current"), digest("previous")


def _leftovers(into: Path) -> list[str]:
    hidden = [p.name for p in (into / "versions").iterdir() if p.name.startswith(".")]
    return hidden + [p.name for p in into.iterdir() if p.name.endswith(".tmp")]


def _assert_consistent(into: Path, public: Path, digests: set[str]) -> None:
    current = install.current_bundle(into)
    assert current is not None and current.is_dir()
    result = trust.verify_bundle(current, public)
    assert result.valid, result.problems
    assert result.manifest_sha256 in digests
    if (into / "previous").is_symlink():
        assert trust.verify_bundle(into / "previous", public).valid


def _snapshot(into: Path) -> tuple:
    """Everything an install changes: the links, the versions, temporary links."""
    links = tuple(str(p.readlink()) if p.is_symlink() else None for p in (
        into / "current", into / "previous"))  # fmt: skip
    return links, sorted(p.name for p in (into / "versions").iterdir()), _leftovers(into)


def _timed(command: list[str], check: bool = True) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=check, capture_output=True)
    return time.perf_counter() - start


def _command(bundle: Path, into: Path, public: Path) -> list[str]:
    return [sys.executable, "-m", "edgec", "install", str(bundle), "--into", str(into),
            "--key", str(public)]  # fmt: skip


@pytest.mark.slow
def test_sigkill_at_random_times_never_breaks_current(signed, tmp_path):
    """50 real installs killed with SIGKILL at random times (most land between the process
    start and the end of the install): after each, ``current`` verifies."""
    into = tmp_path / "device"
    digests = {manifest_digest(b): b for b in signed.bundles}
    install.install_bundle(signed.bundles[0], into, signed.public)
    # Calibrate on this machine, now: the time to reach the install's first step (a run that
    # fails right there) and the time of a whole install, medians of three each.
    missing = tmp_path / "missing"
    startup = statistics.median(
        _timed(_command(missing, into, signed.public), check=False) for _ in range(3)
    )
    full = statistics.median(
        _timed(_command(signed.bundles[i], into, signed.public)) for i in (1, 2, 0)
    )
    rng = random.Random(20261127)
    outcomes: Counter[str] = Counter()
    for _ in range(RUNS):
        current, previous = _state(into)
        # The bundle that is neither current nor previous: installing it copies.
        bundle = next(b for d, b in digests.items() if d not in (current, previous))
        delay = rng.uniform(0.8 * startup, 1.2 * full)
        before = _snapshot(into)
        process = subprocess.Popen(
            _command(bundle, into, signed.public),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        code = process.wait()
        _assert_consistent(into, signed.public, set(digests))
        if code == 0:
            outcomes["completed"] += 1
        elif code == -signal.SIGKILL:
            changed = _snapshot(into) != before
            outcomes["killed mid-install" if changed else "killed before any change"] += 1
        else:
            pytest.fail(f"install exited with {code}")
    # The kills landed inside installs, not only before or after them.
    assert outcomes["killed mid-install"] > 0, outcomes
    # A clean install after all that completes and clears every leftover.
    current, previous = _state(into)
    bundle = next(b for d, b in digests.items() if d not in (current, previous))
    assert install.install_bundle(bundle, into, signed.public).action == "installed"
    assert _leftovers(into) == [] and len(list((into / "versions").iterdir())) == 2
    print(f"startup {startup:.3f} s, install {full:.3f} s, {RUNS} runs: {dict(outcomes)}")


@pytest.mark.slow
def test_crash_before_every_filesystem_call_never_breaks_current(signed, tmp_path):
    """Exhaustive: install a new version, reinstall the previous one, roll back; each crashed
    before its 1st, 2nd, ... mutating call. ``current`` always verifies and the next run
    recovers to the expected state with no leftovers."""
    shm = Path("/dev/shm")  # crash consistency does not depend on fsync: use RAM when we can
    work = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else tmp_path))
    try:
        out = subprocess.run(
            [sys.executable, str(HERE / "crash_sweep.py"), str(work), str(signed.public)]
            + [str(b) for b in signed.bundles],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=True)
    report = json.loads(out.stdout)
    for name, result in report.items():
        assert result["violations"] == [], name
    # Copying five files alone is dozens of calls; the sweep is not vacuous.
    assert report["install-new"]["crash_points"] >= 30, report
    assert report["install-previous"]["crash_points"] >= 5, report
    assert report["rollback"]["crash_points"] >= 4, report
