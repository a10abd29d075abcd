"""Measure (and tune) on a real device through TVM RPC: ``rpc://HOST:PORT``, ``tracker://H:P/KEY``.

The device runs TVM's RPC server (``python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090``,
runtime-only TVM is enough, ``TVM_USE_RUNTIME_LIB=1``), directly or registered with a tracker
under a key. edgec uploads the artifact, loads it there in a Relax VM and times ``main`` with
TVM's on-device ``time_evaluator``: the samples are device time without network round trips,
and the latency source is ``measured-device``.

Before TVM's connect (which retries refused connections for up to a minute) a plain socket
probe turns an unreachable address into one clear sentence within seconds. URL parsing needs no
TVM and lives in :mod:`edgec.targets.device_url` (re-exported here).
"""

from __future__ import annotations

import hashlib
import importlib
import socket
from pathlib import Path

import numpy as np

from edgec.errors import BadInputError
from edgec.targets.base import DEFAULT_MEASURE_POLICY, LatencyStats, MeasurePolicy
from edgec.targets.device_url import DeviceUrl, parse_device_url  # noqa: F401 (re-exported)
from edgec.targets.tvm._env import import_tvm

_PROBE_SECONDS = 5.0
SESSION_TIMEOUT_S = 600


def _probe(url: DeviceUrl) -> None:
    try:
        with socket.create_connection((url.host, url.port), timeout=_PROBE_SECONDS):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        what = "TVM RPC tracker" if url.scheme == "tracker" else "TVM RPC server"
        raise BadInputError(
            f"Cannot reach the {what} at {url} ({reason}); start one on the device with "
            "`python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090`."
        ) from None


def connect(url: DeviceUrl, session_timeout: float = SESSION_TIMEOUT_S):
    """Open an RPC session on the device.

    Raises:
        BadInputError: Nothing answers at the URL, it is not a TVM RPC endpoint, or the tracker
            has no device under the key.
    """
    import_tvm()
    from tvm import rpc

    _probe(url)
    try:
        if url.scheme == "rpc":
            return rpc.connect(url.host, url.port, session_timeout=session_timeout)
        tracker = rpc.connect_tracker(url.host, url.port)
        keys = _tracker_keys(tracker)
        if url.key not in keys:
            known = ", ".join(sorted(keys)) or "none"
            raise BadInputError(
                f"The tracker at {url.host}:{url.port} has no device with key '{url.key}' "
                f"(registered keys: {known})."
            )
        return tracker.request(url.key, priority=1, session_timeout=session_timeout)
    except BadInputError:
        raise
    except Exception as err:  # TVM raises RuntimeError / TVMError / socket errors
        raise BadInputError(
            f"The device at {url} did not open a TVM RPC session: {_last_line(err)}."
        ) from None


def _tracker_keys(tracker) -> set[str]:
    summary = tracker.summary()
    return {str(key) for key in summary.get("queue_info", {})}


def _last_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__).rstrip(".")


def random_feeds(input_specs: list[dict], seed: int = 0) -> list[np.ndarray]:
    """Random arrays for ``[{"name", "shape", "dtype"}, ...]`` in order."""
    rng = np.random.default_rng(seed)
    feeds = []
    for spec in input_specs:
        dtype = np.dtype(spec["dtype"])
        shape = [int(d) for d in spec["shape"]]
        if np.issubdtype(dtype, np.integer):
            feeds.append(rng.integers(0, 8, size=shape).astype(dtype))
        elif dtype == np.bool_:
            feeds.append(rng.integers(0, 2, size=shape).astype(bool))
        else:
            feeds.append(rng.standard_normal(shape).astype(dtype))
    return feeds


def measure_remote(
    artifact_path: Path,
    input_specs: list[dict],
    url: DeviceUrl,
    device: str = "cpu",
    policy: MeasurePolicy | None = None,
) -> LatencyStats:
    """Upload ``artifact_path`` to the device, load it in a VM there and time ``main``.

    One untimed estimate sizes the run: as many timed runs as fit ``policy.min_seconds`` (at
    least ``min_runs``, at most ``max_runs``), never past ``policy.max_seconds``.

    Raises:
        BadInputError: The device is unreachable, or cannot load or run the artifact.
    """
    policy = policy or DEFAULT_MEASURE_POLICY
    tvm = import_tvm()
    vm_module = importlib.import_module("tvm.runtime.vm")  # not loaded by ``import tvm``
    session = connect(url)
    digest = hashlib.sha256(artifact_path.read_bytes()).hexdigest()[:16]
    remote_name = f"edgec-{digest}.so"
    try:
        session.upload(str(artifact_path), remote_name)
        library = session.load_module(remote_name)
        dev = session.cuda(0) if device == "cuda" else session.cpu(0)
        vm = vm_module.VirtualMachine(library, dev)
        args = [tvm.runtime.tensor(a, dev) for a in random_feeds(input_specs)]
        vm.save_function("main", "edgec_timed_main", *args)
        estimate = vm.time_evaluator("edgec_timed_main", dev, number=1, repeat=3)()
        per_run = max(float(np.median(estimate.results)), 1e-7)
        runs = int(min(policy.max_runs, max(policy.min_runs, policy.min_seconds / per_run)))
        runs = max(3, min(runs, int(policy.max_seconds / per_run)))
        timed = vm.time_evaluator("edgec_timed_main", dev, number=1, repeat=runs)()
    except BadInputError:
        raise
    except Exception as err:
        raise BadInputError(
            f"The device at {url} could not run {artifact_path.name}: {_last_line(err)} "
            "(was it built for the device's architecture?)"
        ) from None
    samples_ms = np.asarray(timed.results, dtype=np.float64) * 1000.0
    return LatencyStats.from_samples(samples_ms, "measured-device")


def metaschedule_runner(url: DeviceUrl, number: int = 3, repeat: int = 1):
    """A MetaSchedule runner that measures candidates on the device at ``url``.

    Trackers use MetaSchedule's own ``RPCRunner``; a direct ``rpc://`` server gets the same
    runner with a session factory that connects to it instead of asking a tracker.
    """
    import_tvm()
    from tvm.s_tir import meta_schedule as ms

    _probe(url)
    config = ms.runner.RPCConfig(
        tracker_host=url.host,
        tracker_port=url.port,
        tracker_key=url.key or "edgec-direct",
        session_timeout_sec=120,
    )
    evaluator = ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=0)
    return ms.runner.RPCRunner(
        rpc_config=config,
        evaluator_config=evaluator,
        f_create_session=None if url.scheme == "tracker" else direct_session,
        f_alloc_argument=alloc_arguments_from_host,
    )


def alloc_arguments_from_host(session, device, args_info, alloc_repeat: int) -> list:
    """MetaSchedule argument allocation that fills tensors with data sent from here.

    MetaSchedule's default asks the device for ``tvm.contrib.random.random_fill_for_measure``,
    which the runtime-only TVM on a device does not have; copying random data over RPC needs
    nothing on the device but the runtime.
    """
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    rng = np.random.default_rng(0)

    def fill(tensor) -> None:
        dtype = np.dtype(str(tensor.dtype))
        shape = tuple(int(d) for d in tensor.shape)
        if np.issubdtype(dtype, np.floating):
            data = rng.uniform(-1.0, 1.0, size=shape)
        else:
            data = rng.integers(0, 2 if dtype == np.bool_ else 8, size=shape)
        tensor.copyfrom(np.ascontiguousarray(data.astype(dtype)))

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def direct_session(rpc_config):
    """MetaSchedule session factory for a direct server (the config's tracker fields hold it)."""
    from tvm import rpc

    return rpc.connect(
        rpc_config.tracker_host,
        int(rpc_config.tracker_port),
        session_timeout=rpc_config.session_timeout_sec,
    )
