"""Tuning and measuring on a device through TVM RPC, against a real server on loopback.

The module starts ``python -m tvm.exec.rpc_server`` with the runtime-only TVM
(``TVM_USE_RUNTIME_LIB=1``), as a device would run it. One compile tunes a small CNN through
that server (2 trials, a tuning cache) and measures the bundle there (``measured-device``);
a second compile of the same model on this machine with ``--backend auto`` reuses the cache
(re-tunes nothing) and keeps whichever backend measured faster.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgec.cli import main

pytest.importorskip("tvm", reason="the tvm extra is not installed: pip install 'edgec[tvm]'")

pytestmark = [pytest.mark.tvm, pytest.mark.slow]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rpc_server(tmp_path_factory):
    """A TVM RPC server on loopback, runtime-only, like one on a device; its URL."""
    log = tmp_path_factory.mktemp("rpc") / "server.log"
    port = _free_port()
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "TVM_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--port-end", str(port + 50)]
    with log.open("w") as sink:
        # Its own process group: the server serves from a child (a TVM popen worker), which
        # must end with it.
        server = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        bound = None
        while bound is None:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the TVM RPC server did not start:\n{log.read_text()}")
            bound = re.search(r"bind to 127\.0\.0\.1:(\d+)", log.read_text())
            time.sleep(0.2)
        yield f"rpc://127.0.0.1:{bound.group(1)}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory) -> Path:
    from tvm_models import small_cnn

    path = tmp_path_factory.mktemp("model") / "small.onnx"
    onnx.save(small_cnn(), path)
    return path


@pytest.fixture(scope="module")
def tuned_on_device(rpc_server, small_cnn, tmp_path_factory):
    """Compile with 2 trials tuned through the RPC server; measure there."""
    root = tmp_path_factory.mktemp("tuned")
    out, cache = root / "bundle", root / "cache"
    common = ["--students", "none", "--precision", "fp32", "--measure-seconds", "1"]
    result = run(
        "compile", str(small_cnn), "-t", "host", "-o", str(out), "--json", *common,
        "--device", rpc_server, "--tune-trials", "2", "--tuning-cache", str(cache),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, cache, common


def test_bundle_is_measured_on_the_device(tuned_on_device, rpc_server):
    """--device: the stage is built with TVM and its latency comes from the device."""
    out, _, _ = tuned_on_device
    stage = json.loads((out / "manifest.json").read_text())["stages"][0]
    assert stage["backend"] == "tvm"
    latency = stage["latency_ms"]
    assert latency["source"] == "measured-device" and latency["runs"] >= 3
    assert 0 < latency["p50"] <= latency["p99"]


def test_tuning_ran_through_the_server_and_is_in_the_bundle(tuned_on_device, rpc_server):
    """MetaSchedule measured its 2 candidates on the device; the database ships in the bundle."""
    out, cache, _ = tuned_on_device
    manifest = json.loads((out / "manifest.json").read_text())
    tuning = manifest["stages"][0]["backend_options"]["tuning"]
    assert tuning["trials_requested"] == 2 and tuning["trials_run"] == 2
    assert tuning["errors"] == 0 and tuning["measured_on"] == rpc_server
    records = out / "stages" / "teacher" / "tuning" / "database_tuning_record.json"
    assert records.is_file() and len(records.read_text().splitlines()) >= 1
    assert "stages/teacher/tuning/database_tuning_record.json" in manifest["files"]
    assert (cache / "edgec-tuning.json").is_file()


def test_second_compile_reuses_the_cache_and_auto_keeps_the_faster(tuned_on_device, small_cnn):
    """Same model and target: nothing is re-tuned; auto measures ORT and TVM here, ships the
    faster one and records the other's latency."""
    first, cache, common = tuned_on_device
    out = first.parent / "auto"
    result = run(
        "compile", str(small_cnn), "-t", "host", "-o", str(out), "--json", *common,
        "--backend", "auto", "--tune-trials", "2", "--tuning-cache", str(cache),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stage = json.loads((out / "manifest.json").read_text())["stages"][0]
    candidates = stage["backend_candidates"]
    # LiteRT is a host candidate too where ai-edge-litert is installed.
    assert {"onnxruntime", "tvm"} <= set(candidates) <= {"onnxruntime", "tvm", "litert"}
    first_tuning = json.loads((first / "manifest.json").read_text())["stages"][0]
    tuned_first = first_tuning["backend_options"]["tuning"]["tasks_tuned"]
    tuning = candidates["tvm"]["tuning"]
    assert tuning["trials_run"] == 0 and tuning["tasks_tuned"] == 0
    assert tuning["tasks_from_cache"] == tuned_first > 0
    p99 = {name: c["latency_ms"]["p99"] for name, c in candidates.items()}
    assert all(c["latency_ms"]["source"] == "measured-host" for c in candidates.values())
    assert stage["backend"] == min(p99, key=p99.get)
    assert candidates[stage["backend"]]["chosen"] is True
    files = {"tvm": "model.tvm.so", "onnxruntime": "model.ort.onnx", "litert": "model.tflite"}
    for loser in set(candidates) - {stage["backend"]}:
        assert not (out / "stages" / "teacher" / files[loser]).exists()


def test_auto_without_tuning_does_not_build_untuned_tvm(small_cnn, tmp_path):
    """An untuned CPU build cannot beat ONNX Runtime here: auto records why it skipped it."""
    out = tmp_path / "b"
    result = run(
        "compile", str(small_cnn), "-t", "host", "-o", str(out), "--students", "none",
        "--precision", "fp32", "--measure-seconds", "0.3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stage = json.loads((out / "manifest.json").read_text())["stages"][0]
    assert stage["backend"] in ("onnxruntime", "litert")  # whichever was faster; never tvm
    assert "--tune-trials" in stage["backend_candidates"]["tvm"]["skipped"]


def test_unreachable_device_is_one_sentence(small_cnn, tmp_path):
    """Nothing listening at --device: exit 2, how to start a server, no bundle."""
    out = tmp_path / "b"
    result = run(
        "compile", str(small_cnn), "-t", "host", "-o", str(out), "--students", "none",
        "--precision", "fp32", "--device", f"rpc://127.0.0.1:{_free_port()}",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: Cannot reach the TVM RPC server"), lines
    assert "tvm.exec.rpc_server" in lines[-1] and "Traceback" not in result.output
    assert not out.exists()


def test_measuring_a_bundle_artifact_directly(tuned_on_device, rpc_server):
    """The backend API measures an existing bundle's artifact on the device again."""
    from edgec.targets import get_backend
    from edgec.targets.base import Artifact, MeasurePolicy

    out, _, _ = tuned_on_device
    stage = json.loads((out / "manifest.json").read_text())["stages"][0]
    artifact = Artifact("tvm", out / stage["artifact"], "host", (), stage["backend_options"])
    stats = get_backend("tvm").measure(artifact, rpc_server, MeasurePolicy(min_seconds=0.1))
    assert stats.source == "measured-device" and np.isfinite(stats.p99)
