"""TVM tests leave no processes behind.

TVM starts helper processes (``tvm.exec.popen_worker``: MetaSchedule's builder and runner
pools, the RPC server's worker). Every process these tests start inherits a marker in its
environment; after each test module, none but this one may still carry it.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

MARKER = "EDGEC_TVM_TEST_RUN"
os.environ.setdefault(MARKER, uuid.uuid4().hex)


def marked_processes() -> dict[int, str]:
    """Processes other than this one whose environment carries this run's marker: pid ->
    command line."""
    needle = f"{MARKER}={os.environ[MARKER]}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
        except OSError:  # gone, or not ours
            continue
    return found


@pytest.fixture(scope="module", autouse=True)
def no_process_left_behind():
    """After the module's fixtures are torn down, wait up to 10 s for its processes to end;
    fail naming any still running."""
    yield
    if not Path("/proc/self/environ").is_file():
        return
    deadline = time.monotonic() + 10
    while (left := marked_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left behind: {left}"
