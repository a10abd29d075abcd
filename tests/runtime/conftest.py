"""Real bundles, gateway processes and RTT-injecting proxies for the runtime tests.

Bundles are compiled once per session for a loopback target: this machine as the device
(``kind: host``, so every latency is measured) with a gateway that is this machine too, over a
link whose RTT the tests inject with :class:`delay_proxy.DelayProxy`. Every server binds
127.0.0.1 on a free port and is killed by a finalizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from delay_proxy import DelayProxy
from models import bottleneck_model
from onnx import TensorProto, helper, numpy_helper
from runtime_helpers import BUDGET_MS, RTT_MS, TEACHER, GatewayProcess, write_loopback_target

from edgec.compiler import compile_model
from edgec.config import CompileConfig


@pytest.fixture(scope="session")
def cascade_bundle(tmp_path_factory) -> Path:
    """Digits teacher + two briefly distilled students (10% and 30% of its MACs) for the
    loopback target, planned for a 40 ms budget at p99 with no accuracy given up, so that a
    good share of the frames (~10-25%) goes to the gateway."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("cascade")
    result = compile_model(
        CompileConfig(
            model=TEACHER,
            target=str(write_loopback_target(root)),
            output=root / "bundle",
            budget_ms=BUDGET_MS,
            data="digits",
            students=(0.1, 0.3),
            # Short training, students that need the teacher now and then: one epoch, which on
            # the 1,347 training digits is two passes (an epoch is at least 2,048 inputs).
            distill_epochs=1,
            measure_seconds=0.3,
            backend="onnxruntime",  # runtime tests: timings sized for ONNX Runtime
            accuracy_tolerance=0.0,
        )
    )
    tiers = [s["tier"] for s in result.manifest["stages"]]
    assert tiers == ["device", "device", "gateway"], result.manifest["students"]
    return result.bundle


@pytest.fixture(scope="session")
def digits_gateway_bundle(tmp_path_factory) -> Path:
    """The digits teacher, all on the gateway (``--partition gateway-only``): devices send
    their input, int8-encoded as the planner chose for the 50 Mbps link; its stage has a
    dynamic batch dimension. Shared by the batching and load tests."""
    root = tmp_path_factory.mktemp("digits-gateway")
    result = compile_model(
        CompileConfig(
            model=TEACHER,
            target=str(write_loopback_target(root)),
            output=root / "bundle",
            students="none",
            partition="gateway-only",
            measure_seconds=0.2,
            backend="onnxruntime",  # batches are ONNX Runtime's (auto may pick LiteRT)
        )
    )
    assert [s["tier"] for s in result.manifest["stages"]] == ["gateway"]
    assert result.manifest["partition"]["encoding"] == "int8"
    return result.bundle


@pytest.fixture(scope="session")
def teacher_bundle(tmp_path_factory) -> Path:
    """The digits teacher alone (no students), compiled for this machine."""
    root = tmp_path_factory.mktemp("teacher")
    result = compile_model(
        CompileConfig(
            model=TEACHER,
            target="host",
            output=root / "bundle",
            data="digits",
            students="none",
            measure_seconds=0.2,
            backend="onnxruntime",  # the tests read its artifact with ONNX Runtime
        )
    )
    return result.bundle


def _slow_model() -> onnx.ModelProto:
    """Three 3x3 convolutions at 64x64 (79 M MACs): a gateway stage that takes milliseconds."""
    rng = np.random.default_rng(0)
    width, size = 32, 64
    inits, nodes, prev = [], [], "x"
    for i, cin in enumerate((3, width, width)):
        w = (rng.standard_normal((width, cin, 3, 3)) * (0.3 if i == 0 else 0.08)).astype("f4")
        bias = np.zeros(width, "f4")
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes += [
            helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        prev = f"r{i}"
    fc = (rng.standard_normal((10, width)) * 0.3).astype("f4")
    inits += [numpy_helper.from_array(fc, "fw"), numpy_helper.from_array(np.zeros(10, "f4"), "fb")]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="session")
def slow_bundle(tmp_path_factory) -> Path:
    """A cascade whose gateway stage takes milliseconds: for queue and load tests."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("slow")
    onnx.save(_slow_model(), root / "slow.onnx")
    rng = np.random.default_rng(1)
    np.savez(
        root / "data.npz",
        x=rng.random((80, 3, 64, 64)).astype(np.float32),
        y=rng.integers(0, 10, 80),
    )
    result = compile_model(
        CompileConfig(
            model=root / "slow.onnx",
            target=str(write_loopback_target(root)),
            output=root / "bundle",
            data=str(root / "data.npz"),
            students=(0.1,),
            distill_epochs=1,
            measure_seconds=0.2,
            backend="onnxruntime",  # runtime tests: timings sized for ONNX Runtime
        )
    )
    assert [s["tier"] for s in result.manifest["stages"]] == ["device", "gateway"]
    return result.bundle


@pytest.fixture
def start_gateway(tmp_path):
    """Start gateway processes; every one is killed when the test ends."""
    started: list[GatewayProcess] = []

    def start(bundle: Path, *extra: str) -> GatewayProcess:
        gateway = GatewayProcess(bundle, tmp_path / f"gateway-{len(started)}.log", *extra)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.close()


@pytest.fixture
def start_proxy():
    """Start RTT-injecting proxies; every one is closed when the test ends."""
    started: list[DelayProxy] = []

    def start(port: int, rtt_ms: float = RTT_MS) -> DelayProxy:
        proxy = DelayProxy(("127.0.0.1", port), rtt_ms)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.close()


@pytest.fixture(scope="session")
def bottleneck_bundle(tmp_path_factory):
    """The bottleneck CNN cut after its stem (``s``): devices send the stem's output, int8.
    The compile result (manifest and bundle path)."""
    root = tmp_path_factory.mktemp("partition")
    onnx.save(bottleneck_model(), root / "bottleneck.onnx")
    result = compile_model(
        CompileConfig(
            model=root / "bottleneck.onnx",
            target=str(write_loopback_target(root)),
            output=root / "bundle",
            students="none",
            partition="s",
            measure_seconds=0.2,
            backend="onnxruntime",  # runtime tests: timings sized for ONNX Runtime
        )
    )
    assert result.manifest["partition"]["encoding"] == "int8"
    return result
