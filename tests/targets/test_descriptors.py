"""Target descriptors: every shipped one validates; bad ones are refused with the field named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from edgec.errors import BadInputError
from edgec.targets import load_target, shipped_target_names
from edgec.targets.descriptor import detect_host

REQUIRED = {
    "jetson-nano",
    "jetson-orin-nano",
    "raspberry-pi-4",
    "raspberry-pi-5",
    "coral-dev-board",
    "x86-gateway",
    "t4-gateway",
    "host",
}


def test_registry_has_the_required_targets():
    assert set(shipped_target_names()) >= REQUIRED


@pytest.mark.parametrize("name", sorted(REQUIRED - {"host"}))
def test_shipped_descriptor_is_valid_and_cites_sources(name):
    target = load_target(name)
    assert target.name == name
    assert all(s.startswith("https://") for s in target.sources)
    assert target.cpu.peak_gflops_fp32 > 0 and target.memory.bandwidth_gbps > 0


@pytest.mark.parametrize("name", sorted(REQUIRED - {"host"}))
def test_every_device_names_an_existing_gateway_and_link(name):
    target = load_target(name)
    if target.kind != "device":
        return
    assert target.gateway is not None
    gateway = load_target(target.gateway.target)
    assert gateway.kind == "gateway"
    assert target.gateway.link.rtt_ms > 0 and target.gateway.link.bandwidth_mbps > 0


def test_jetson_nano_toolchain_ceiling_is_tensorrt_8_2():
    assert load_target("jetson-nano").toolchain["tensorrt"].startswith("8.2")


def test_host_is_detected_from_this_machine():
    host = detect_host()
    assert host.kind == "host" and host.is_host
    assert host.cpu.cores == len(os.sched_getaffinity(0))
    flags = Path("/proc/cpuinfo").read_text()
    if "avx512_vnni" in flags:
        assert "avx512_vnni" in host.cpu.isa_features


def test_unknown_target_suggests_the_closest_names():
    with pytest.raises(BadInputError, match=r"Unknown target 'jetson-nanno'.*'jetson-nano'"):
        load_target("jetson-nanno")


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "board.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _valid(tmp_path: Path) -> dict:
    source = Path(__file__).resolve().parents[2] / "src/edgec/targets/descriptors"
    return yaml.safe_load((source / "raspberry-pi-4.yaml").read_text())


def test_user_descriptor_by_path_loads(tmp_path):
    data = _valid(tmp_path)
    data["name"] = "my-board"
    target = load_target(str(_write(tmp_path, data)))
    assert target.name == "my-board"


def test_unknown_key_names_the_file_and_field(tmp_path):
    data = _valid(tmp_path)
    data["cpu"]["cache_mb"] = 1
    path = _write(tmp_path, data)
    with pytest.raises(BadInputError, match=r"board\.yaml: field 'cpu\.cache_mb' is not a known"):
        load_target(str(path))


def test_wrong_type_names_the_field_and_what_was_expected(tmp_path):
    data = _valid(tmp_path)
    data["cpu"]["cores"] = "four"
    with pytest.raises(BadInputError, match=r"field 'cpu\.cores' is invalid: .*integer"):
        load_target(str(_write(tmp_path, data)))


def test_missing_field_is_named(tmp_path):
    data = _valid(tmp_path)
    del data["memory"]
    with pytest.raises(BadInputError, match=r"field 'memory' is required"):
        load_target(str(_write(tmp_path, data)))


def test_descriptor_that_is_not_yaml_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("cpu: [unclosed\n")
    with pytest.raises(BadInputError, match="not valid YAML"):
        load_target(str(path))
