"""Faults under load on a two-node Ray cluster on this machine: ``edgec serve --engine ray``.

A head and a worker node are started as separate processes (``ray start --block``, one CPU
each, small object stores, a private temporary directory, loopback only), and the gateway is
deployed on them with ``--address`` and two stages replicas (one per node). While a simulated
device runs frames through the bundle's own device runtime and ``edgec loadtest``'s load
generator sends offloaded frames, a stages replica is killed (``ray.kill``) and, in the second
test, the worker node is stopped. No frame may be lost: the device answers every frame (its
fallback), and every request gets an HTTP answer. The gateway must then answer again by itself.

Every process started here is stopped by the fixtures, even when a test fails; every wait is
bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import GatewayProcess

from edgec.bundle.io import read_manifest
from edgec.bundle.launch import import_runtime
from edgec.bundle.loadtest import prepare_workload, run_load
from edgec.runtime import codec

pytestmark = pytest.mark.slow
pytest.importorskip("ray.serve", reason="the serve extra (Ray Serve) is not installed")

RAY = Path(sys.executable).with_name("ray")
NODE_START_S = 90.0
RECOVER_S = 90.0
LOAD_S = 8.0
FAULT_AFTER_S = 2.5
OBJECT_STORE = str(80 * 1024 * 1024)
# The autoscaling test keeps SCALE_OUTSTANDING requests in flight (a frame is offered every
# 1/SCALE_RATE s and sent when fewer are in flight): several times the target of one per
# replica however fast or slow the machine is, without swamping Ray's proxy (an open-loop
# rate that one replica cannot serve on an idle machine, ~50 frames/s, is more than the
# proxy serves on a busy one). It goes on in chunks of SCALE_CHUNK_S, for at most
# SCALE_UP_S, until the second replica answers.
SCALE_OUTSTANDING = 6
SCALE_RATE = 100.0
SCALE_CHUNK_S = 4.0
SCALE_UP_S = 90.0
# Kills one stages replica of the gateway on the cluster at argv[1]; prints its name.
KILL_REPLICA = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
         if "edgec-gateway#Stages#" in a["name"]]
assert names, "no stages replica found"
ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
print(names[0])
"""
# Prints the names of the gateway's stages replicas that are alive on the cluster at argv[1].
LIST_REPLICAS = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if "edgec-gateway#Stages#" in a["name"])
alive = []
for name in names:
    try:
        ray.get(ray.get_actor(name, namespace="serve").check_health.remote(), timeout=10)
        alive.append(name)
    except Exception:
        pass
print(json.dumps(alive))
"""
# Prints, twice a second, how many stages replicas of the gateway on the cluster at argv[1]
# are alive (one line each poll) until argv[2] are, or argv[3] seconds have passed: one
# connection to the cluster for the whole watch, as a new one takes seconds on a busy machine.
WATCH_REPLICAS = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    alive = 0
    for a in ray.util.list_named_actors(all_namespaces=True):
        if "edgec-gateway#Stages#" in a["name"]:
            try:
                actor = ray.get_actor(a["name"], namespace="serve")
                ray.get(actor.check_health.remote(), timeout=2)
                alive += 1
            except Exception:
                pass
    print(alive, flush=True)
    if alive >= int(sys.argv[2]):
        break
    time.sleep(0.5)
"""
# Waits until the cluster at argv[1] has argv[2] alive nodes.
WAIT_NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[3])
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]):
    assert time.monotonic() < deadline, ray.nodes()
    time.sleep(0.5)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class RayNode:
    """``ray start --block`` in its own process; :meth:`stop` ends it and all it started."""

    def __init__(self, log: Path, *args: str):
        self.log = log
        self.process = subprocess.Popen(
            [str(RAY), "start", "--block", "--disable-usage-stats", *args],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            # A test cluster on this machine: no token to share between its processes.
            env={
                **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                "RAY_AUTH_MODE": "disabled",
                # Queue depths reach Serve's autoscaler each second, not every 10 s.
                "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
                "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
            },
            start_new_session=True,  # signals meant for pytest do not reach it
        )

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (ray start --block stops its node), then SIGKILL whatever is left: a
        throwaway test cluster, and a graceful stop took the whole 30 s it was once given."""
        below = _descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        below += _descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for pid in set(below):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _script(code: str, *args: str, timeout: float = 120.0) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.fixture
def cluster(tmp_path):
    """A head (1 CPU) and a worker node (1 CPU) on loopback; yields (address, head, worker)."""
    # A short private directory: Ray's socket paths must fit in 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="edgec-ray-", dir="/tmp"))
    port = _free_port()
    from ray.util import get_node_ip_address

    address = f"{get_node_ip_address()}:{port}"  # the address Ray gives this machine's nodes
    common = (
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        f"--object-store-memory={OBJECT_STORE}",
    )
    nodes = []
    try:
        head = RayNode(
            tmp_path / "head.log",
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            *common,
        )
        nodes.append(head)
        _script(WAIT_NODES, address, "1", str(NODE_START_S), timeout=NODE_START_S + 30)
        worker = RayNode(tmp_path / "worker.log", f"--address={address}", *common)
        nodes.append(worker)
        _script(WAIT_NODES, address, "2", str(NODE_START_S), timeout=NODE_START_S + 30)
        yield address, head, worker
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def ray_gateway(cluster, cascade_bundle, tmp_path):
    """``edgec serve --engine ray --address`` on the cluster, two stages replicas."""
    address = cluster[0]
    gateway = GatewayProcess(
        cascade_bundle,
        tmp_path / "gateway.log",
        *("--engine", "ray", "--address", address, "--replicas", "2"),
    )
    try:
        yield gateway
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            gateway.process.terminate()
            gateway.process.wait(60)
        gateway.close()


class Device:
    """The bundle's own device runtime answering random frames in a thread until stopped."""

    def __init__(self, bundle: Path, url: str):
        module = import_runtime(bundle.resolve(), "device")
        logger = module.observability.json_logger("test.device", 40)
        self.runtime = module.DeviceRuntime(bundle, gateway_url=url, logger=logger)
        shape = read_manifest(bundle)["inputs"][0]["shape"]
        self.frames = np.random.default_rng(5).random((32, *shape)).astype(np.float32)
        self.answers: list = []
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        k = 0
        while not self.halt.is_set():
            self.answers.append(self.runtime.infer(self.frames[k % len(self.frames)]))
            k += 1
            time.sleep(0.01)

    def stop(self) -> list:
        self.halt.set()
        self.thread.join(30)
        self.runtime.close()
        return self.answers


def _answers_again(port: int, payload) -> bool:
    """Whether the gateway answers a frame 200 (a generous deadline) within RECOVER_S."""
    headers = {**payload.headers, codec.HEADER_DEADLINE: "5000"}
    deadline = time.monotonic() + RECOVER_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request("POST", codec.PATH, payload.body, headers)
                response = connection.getresponse()
                body = response.read()
                if response.status == 200 and "prediction" in json.loads(body):
                    return True
            finally:
                connection.close()
        time.sleep(0.5)
    return False


def _under_load(bundle: Path, url: str, fault) -> tuple[list, object]:
    """Device frames and load-generator frames for LOAD_S seconds, ``fault()`` in between."""
    workload = prepare_workload(bundle, frames=16)
    device = Device(bundle, url)
    reports: list = []
    loader = threading.Thread(
        target=lambda: reports.append(run_load(url, workload, devices=4, rate=8.0, seconds=LOAD_S))
    )
    loader.start()
    time.sleep(FAULT_AFTER_S)
    fault()
    loader.join(LOAD_S + 30)
    answers = device.stop()
    assert reports, "the load generator did not finish"
    return answers, reports[0]


def _assert_nothing_lost(answers: list, report) -> None:
    assert answers and all(a.prediction >= 0 for a in answers), {a.route for a in answers}
    assert any(a.bytes_sent > 0 for a in answers)  # the device did use the gateway
    assert report.sent > 0
    assert report.lost == 0, report.lost_reasons
    assert report.answered == report.sent


def test_a_replica_killed_mid_load_loses_no_frame_and_is_replaced(
    cluster, ray_gateway, cascade_bundle
):
    """ray.kill on a stages replica mid-load: every device frame answered (the gateway's or
    the device's own answer), every request answered; Serve starts a new replica and the
    gateway answers again without a restart."""
    address = cluster[0]
    before = json.loads(_script(LIST_REPLICAS, address))
    assert len(before) == 2
    killed: list[str] = []
    answers, report = _under_load(
        cascade_bundle, ray_gateway.url, lambda: killed.append(_script(KILL_REPLICA, address))
    )
    _assert_nothing_lost(answers, report)
    assert killed and killed[0] in before
    assert _answers_again(ray_gateway.port, prepare_workload(cascade_bundle, frames=1).payloads[0])
    deadline = time.monotonic() + RECOVER_S
    while time.monotonic() < deadline:
        now = json.loads(_script(LIST_REPLICAS, address))
        if len(now) == 2 and killed[0] not in now:
            break
        time.sleep(1.0)
    assert len(now) == 2 and killed[0] not in now, now
    assert ray_gateway.process.poll() is None


def test_a_worker_node_stopped_mid_load_loses_no_frame_and_the_gateway_recovers(
    cluster, ray_gateway, cascade_bundle
):
    """The worker node (one of the two stages replicas, perhaps the ingress) stopped
    mid-load: every device frame answered, every request answered; the gateway answers again
    from the head node by itself."""
    worker = cluster[2]
    answers, report = _under_load(cascade_bundle, ray_gateway.url, lambda: worker.stop())
    assert worker.process.poll() is not None
    _assert_nothing_lost(answers, report)
    assert _answers_again(ray_gateway.port, prepare_workload(cascade_bundle, frames=1).payloads[0])
    assert ray_gateway.process.poll() is None


def _watch_replicas(address: str) -> subprocess.Popen:
    """WATCH_REPLICAS in its own process: one line per poll, until two replicas are alive."""
    return subprocess.Popen(
        [sys.executable, "-c", WATCH_REPLICAS, address, "2", str(SCALE_UP_S + NODE_START_S)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _load_until(url: str, workload, seen: threading.Event, bound_s: float) -> list:
    """``run_load`` (SCALE_OUTSTANDING in flight) in back-to-back chunks of SCALE_CHUNK_S
    until ``seen`` is set or ``bound_s`` has passed: the load keeps on until the scale-up
    shows, and no longer. The reports of every chunk."""
    reports: list = []
    loaders = []
    end = time.monotonic() + bound_s
    while not seen.is_set() and time.monotonic() < end:
        loader = threading.Thread(
            target=lambda: reports.append(
                # A generous grace: on a saturated machine Ray's proxy alone can hold an
                # answer (a 504 included) for seconds; late is not lost.
                run_load(url, workload, devices=SCALE_OUTSTANDING, rate=SCALE_RATE,
                         seconds=SCALE_CHUNK_S, grace_ms=5000,
                         max_outstanding=SCALE_OUTSTANDING)
            )
        )  # fmt: skip
        loader.start()
        loaders.append(loader)
        seen.wait(SCALE_CHUNK_S)
    for loader in loaders:
        loader.join(SCALE_CHUNK_S + 60)
    assert len(reports) == len(loaders), "a load generator did not finish"
    return reports


def test_auto_replicas_scale_up_under_load(cluster, bottleneck_bundle, tmp_path):
    """--replicas auto starts one stages replica and adds one (up to the cluster's two CPUs)
    when requests queue up, losing no request meanwhile.

    SCALE_OUTSTANDING requests are kept in flight (a 15-30 ms stage), several times the
    target of one per replica whatever the machine's load; the load goes on until the second
    replica answers (at most SCALE_UP_S), watched by one process polling twice a second."""
    address = cluster[0]
    bundle = bottleneck_bundle.bundle
    # --max-batch 1: autoscaling aims at --max-batch requests in flight per replica, and the
    # bundle's default (8) would never queue up at this rate.
    gateway = GatewayProcess(
        bundle, tmp_path / "auto.log", "--engine", "ray", "--address", address,
        "--replicas", "auto", "--max-batch", "1",
    )  # fmt: skip
    watcher = _watch_replicas(address)
    try:
        counts: list[int] = []
        seen = threading.Event()
        first = threading.Event()

        def read_counts() -> None:
            for line in watcher.stdout:
                counts.append(int(line))
                first.set()
                if counts[-1] >= 2:
                    seen.set()
            first.set()

        reader = threading.Thread(target=read_counts, daemon=True)
        reader.start()
        assert first.wait(NODE_START_S), "the replica watcher did not start"
        assert counts[:1] == [1], counts  # one replica before the load
        workload = prepare_workload(bundle, deadline_ms=3000.0, frames=8)
        reports = _load_until(gateway.url, workload, seen, SCALE_UP_S)
        assert max(counts) == 2, (counts, [(r.sent, r.codes) for r in reports])
        for report in reports:
            assert report.sent > 0
            assert report.lost == 0, report.lost_reasons
            assert report.answered == report.sent
    finally:
        if watcher.poll() is None:
            watcher.kill()
        watcher.wait(10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            gateway.process.terminate()
            gateway.process.wait(60)
        gateway.close()
