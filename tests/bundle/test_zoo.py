"""``edgec compile --target a,b,c``: a zoo of bundles, one per target, and its index."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from zoo_helpers import FAST, TARGETS, TEACHER, compile_zoo, run

from edgec.bundle import trust
from edgec.compiler import driver
from edgec.runtime.verify_bundle import manifest_digest


@pytest.fixture(scope="module")
def signed_zoo(tmp_path_factory) -> tuple[Path, Path]:
    """A zoo of the example teacher for two targets, signed; and the public key."""
    root = tmp_path_factory.mktemp("zoo")
    private, public = trust.generate_keys(root / "keys")
    compile_zoo(TEACHER, root / "zoo", "--sign-key", private)
    return root / "zoo", public


def test_a_target_list_builds_one_verified_bundle_per_target_and_an_index(signed_zoo):
    zoo, public = signed_zoo
    index = json.loads((zoo / "index.json").read_text())
    assert sorted(index["targets"]) == sorted(TARGETS.split(","))
    assert index["model"] == "teacher.onnx" and index["schema"] == "edgec-zoo/1"
    for name, entry in index["targets"].items():
        bundle = zoo / entry["bundle"]
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["target"]["name"] == name
        assert entry["manifest_sha256"] == manifest_digest(bundle)
        assert entry["signed"] is True and entry["created"].endswith("Z")
        assert trust.verify_bundle(bundle, public).valid
    rpi4 = index["targets"]["raspberry-pi-4"]["target"]
    assert (rpi4["arch"], rpi4["accelerator"], rpi4["ram_gb"]) == ("aarch64", None, 4)
    assert index["targets"]["coral-dev-board"]["target"]["accelerator"] == "tpu"
    leftovers = [p.name for p in zoo.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "the staging directory was not renamed into place"


def test_json_output_lists_the_index_and_every_bundle(tmp_path):
    result = run("compile", TEACHER, "--target", TARGETS, "-o", tmp_path / "zoo", *FAST, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["index"] == json.loads((tmp_path / "zoo" / "index.json").read_text())
    for name in TARGETS.split(","):
        assert data["bundles"][name]["bundle"] == str(tmp_path / "zoo" / name)
        assert data["bundles"][name]["target"]["name"] == name


def test_the_model_is_loaded_and_canonicalised_once_for_the_whole_zoo(tmp_path, monkeypatch):
    """The canonical passes run once; every target's bundle still gets the whole teacher."""
    calls = []
    real_load, real_canonicalize = driver.load_model, driver.canonicalize
    monkeypatch.setattr(driver, "load_model", lambda *a: calls.append("load") or real_load(*a))
    monkeypatch.setattr(
        driver, "canonicalize", lambda *a: calls.append("canon") or real_canonicalize(*a)
    )
    compile_zoo(TEACHER, tmp_path / "zoo")
    assert calls == ["load", "canon"]
    for target in TARGETS.split(","):
        manifest = json.loads((tmp_path / "zoo" / target / "manifest.json").read_text())
        assert [s["role"] for s in manifest["stages"]] == ["teacher"]


def test_a_single_target_still_writes_a_plain_bundle(tmp_path):
    """No comma, no zoo: the bundle is the output directory itself, as before."""
    result = run("compile", TEACHER, "--target", "raspberry-pi-4", "-o", tmp_path / "b", *FAST)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "manifest.json").is_file()
    assert not (tmp_path / "b" / "index.json").exists()


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ("raspberry-pi-4,no-such-board", "Unknown target 'no-such-board'"),
        ("raspberry-pi-4,jetson-nano,raspberry-pi-4", "appears twice"),
        ("raspberry-pi-4,,jetson-nano", "has an empty entry"),
    ],
)
def test_a_bad_target_list_exits_2_and_writes_nothing(tmp_path, targets, message):
    result = run("compile", TEACHER, "--target", targets, "-o", tmp_path / "zoo", *FAST)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert os.listdir(tmp_path) == []


def test_a_duplicate_named_once_by_name_and_once_by_path_is_refused(tmp_path):
    """The same descriptor twice (name and file) would write the same directory twice."""
    yaml_path = Path(driver.__file__).parents[1] / "targets" / "descriptors" / "jetson-nano.yaml"
    out = tmp_path / "out"
    out.mkdir()
    result = run("compile", TEACHER, "--target", f"jetson-nano,{yaml_path}", "-o", out / "z", *FAST)
    assert result.exit_code == 2 and "'jetson-nano' appears twice" in result.output
    assert os.listdir(out) == []


def test_a_zoo_refuses_an_existing_output_and_a_device_url(tmp_path):
    (tmp_path / "zoo").mkdir()
    result = run("compile", TEACHER, "--target", TARGETS, "-o", tmp_path / "zoo", *FAST)
    assert result.exit_code == 2 and "already exists" in result.output
    result = run(
        "compile", TEACHER, "--target", TARGETS, "-o", tmp_path / "z2",
        "--students", "none", "--device", "rpc://127.0.0.1:9090",
    )  # fmt: skip
    assert result.exit_code == 2 and "--device measures on one device" in result.output
    assert sorted(os.listdir(tmp_path)) == ["zoo"]


def test_a_target_failing_after_others_were_built_leaves_nothing_behind(tmp_path):
    """The second target's compile fails (INT8 forced on a board without it): the first
    target's finished bundle goes too, with the staging directory."""
    out = tmp_path / "out"
    out.mkdir()
    result = run(
        "compile", TEACHER, "--target", "raspberry-pi-4,jetson-nano", "-o", out / "zoo",
        "--students", "none", "--precision", "int8", "--data", "digits",
        "--backend", "onnxruntime", "--calib-samples", "20",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert os.listdir(out) == []


def test_a_budget_gates_every_target_and_a_miss_exits_1_with_the_zoo_kept(tmp_path):
    """As for one bundle, a failed gate is exit 1 and the bundles stay for inspection."""
    zoo = tmp_path / "zoo"
    result = run("compile", TEACHER, "--target", TARGETS, "-o", zoo, *FAST, "--budget-ms", "1e-6")
    assert result.exit_code == 1, result.output
    for name in TARGETS.split(","):
        assert f"gate failed for {name}: pipeline: p99" in result.output, result.output
    assert (zoo / "index.json").is_file()
