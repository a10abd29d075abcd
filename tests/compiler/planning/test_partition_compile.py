"""``edgec compile --partition``: what the bundle gets for each kind of cut, and bad requests.

The live runs (device runtime + gateway server) are in tests/runtime/test_partition_e2e.py.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from models import bottleneck_model

from edgec.cli import main
from edgec.compiler import compile_model
from edgec.config import CompileConfig
from edgec.runtime import codec


@pytest.fixture(scope="module")
def bottleneck_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bottleneck") / "bottleneck.onnx"
    onnx.save(bottleneck_model(), path)
    return path


def _compile(model, target, output, **options):
    return compile_model(
        CompileConfig(model=model, target=target, output=output, students="none", **options)
    )


def test_gateway_only_puts_the_whole_teacher_behind_the_link(teacher_path, tmp_path):
    result = _compile(teacher_path, "raspberry-pi-4", tmp_path / "b", partition="gateway-only")
    [stage] = result.manifest["stages"]
    assert (stage["name"], stage["tier"], stage["role"]) == ("teacher", "gateway", "teacher")
    partition = result.manifest["partition"]
    assert partition["prefix"] is None and partition["tensor"] is None
    policy = result.manifest["policy"]
    assert policy["offload_rate"] == 1.0
    # The only stage is reached over the link: its round trip is in the promised latency.
    assert policy["latency_ms"]["p50"] > stage["latency_ms"]["p50"] + 10.0  # rtt 10 ms
    assert (tmp_path / "b" / "runtime" / "gateway.py").is_file()


def test_device_only_keeps_everything_on_the_device(teacher_path, tmp_path):
    result = _compile(teacher_path, "raspberry-pi-4", tmp_path / "b", partition="device-only")
    assert [s["tier"] for s in result.manifest["stages"]] == ["device"]
    assert result.manifest["partition"]["encoding"] == "none"
    assert not (tmp_path / "b" / "runtime" / "gateway.py").exists()


def test_energy_objective_picks_the_least_device_energy(bottleneck_path, tmp_path):
    result = _compile(
        bottleneck_path, "raspberry-pi-4", tmp_path / "b", partition="auto", objective="energy"
    )
    partition = result.manifest["partition"]
    feasible = [o for o in partition["options"] if o["feasible"]]
    least = min(o["device_energy_mj"] for o in feasible)
    assert partition["estimate"]["device_energy_mj"] == pytest.approx(least)
    assert partition["objective"] == "energy"


def test_a_named_cut_splits_there_and_both_halves_rebuild_the_model(bottleneck_path, tmp_path):
    result = _compile(bottleneck_path, "raspberry-pi-4", tmp_path / "b", partition="r1")
    stages = {s["name"]: s for s in result.manifest["stages"]}
    assert stages["teacher-prefix"]["tier"] == "device"
    assert stages["teacher"]["tier"] == "gateway"
    assert stages["teacher"]["precision"] == "fp32"

    def run(path, feeds):
        return ort.InferenceSession(str(path)).run(None, feeds)[0]

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    root = tmp_path / "b"
    middle = run(root / "stages" / "teacher-prefix" / "model.onnx", {"x": x})
    got = run(root / "stages" / "teacher" / "model.onnx", {"r1": middle})
    np.testing.assert_allclose(got, run(bottleneck_path, {"x": x}), rtol=1e-4, atol=1e-5)
    config = (root / "runtime" / "bundle_config.py").read_text()
    assert "WIRE = {" in config and "'r1'" in config.replace('"', "'")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--partition", "no-such-tensor"], "is not a valid cut"),
        (["--partition", "auto", "-t", "host"], "needs a target with a gateway"),
        (["--partition", "auto", "--objective", "speed"], "--objective"),
    ],
)
def test_bad_partition_requests_are_one_sentence_and_leave_nothing(
    teacher_path, tmp_path, args, message
):
    out = tmp_path / "bundle"
    target = [] if "-t" in args else ["-t", "raspberry-pi-4"]
    result = CliRunner().invoke(
        main, ["compile", str(teacher_path), *target, "-o", str(out), "--students", "none", *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()
    assert not list(tmp_path.glob(".bundle*"))


def test_compile_json_reports_the_partition(teacher_path, tmp_path):
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        main,
        [
            "compile",
            str(teacher_path),
            "-t",
            "raspberry-pi-4",
            "-o",
            str(out),
            "--students",
            "none",
            "--partition",
            "/relu2/Relu_output_0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    partition = json.loads(result.output)["partition"]
    assert partition["tensor"] == "/relu2/Relu_output_0"
    assert "options" not in partition  # every option stays in the manifest
    expected = codec.request_size(partition["shape"], "float32", encoding=partition["encoding"])
    assert partition["request_bytes"] == expected


def test_int8_wire_encoding_round_trips_within_half_a_step():
    x = np.random.default_rng(0).standard_normal((1, 8, 5, 5)).astype(np.float32) * 3
    body, headers = codec.encode_tensor(x, 10.0, "dev", encoding="int8")
    assert len(body) == x.size
    got = codec.decode_tensor(
        body,
        headers[codec.HEADER_SHAPE],
        headers[codec.HEADER_DTYPE],
        (1, 8, 5, 5),
        "float32",
        "int8",
        headers[codec.HEADER_SCALE],
        headers[codec.HEADER_ZERO_POINT],
    )
    scale = float(headers[codec.HEADER_SCALE])
    assert got.dtype == np.float32
    assert np.abs(got - x).max() <= scale / 2 + 1e-6
    assert codec.request_size([1, 8, 5, 5], "float32", encoding="int8") >= len(body)
    with pytest.raises(codec.WireFormatError, match="Zero-Point"):
        codec.decode_tensor(body, "1,8,5,5", "uint8", (1, 8, 5, 5), "float32", "int8", "0.1", "300")
    with pytest.raises(codec.WireFormatError, match="unknown encoding"):
        codec.encode_tensor(x, encoding="zip")


def test_on_this_machine_the_finalists_are_measured_and_the_best_measured_wins(
    bottleneck_path, tmp_path
):
    """Device and gateway both ``kind: host``: the best cuts by estimate, plus gateway-only and
    device-only, are timed, and the choice is the best of those measured options."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "runtime"))
    from runtime_helpers import write_loopback_target

    from edgec.compiler.planning.partition import partition_model
    from edgec.compiler.planning.partition_measure import FINALISTS

    plan = partition_model(bottleneck_path, str(write_loopback_target(tmp_path)))
    measured = [o for o in plan.options if o.source == "measured-host"]
    names = {o.cut.name for o in measured}
    assert {"gateway-only", "device-only"} <= names
    assert len(names) <= FINALISTS + 2
    assert plan.chosen.source == "measured-host"
    assert plan.chosen.total_ms == min(o.total_ms for o in measured)
    for option in measured:
        assert option.device_ms > 0 or option.cut.name == "gateway-only"
        assert option.gateway_ms > 0 or option.cut.name == "device-only"
    estimated = partition_model(bottleneck_path, "raspberry-pi-4")
    assert {o.source for o in estimated.options} == {"estimated"}  # a board is not this machine
