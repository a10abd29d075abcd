"""``edgec serve ZOO --tier registry``: devices get the bundle that fits them, over real HTTP on
loopback, and install it with the atomic install."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from zoo_helpers import TEACHER, compile_zoo, fetch_and_unpack, registry, request, run

from edgec.bundle import install, rollout, trust
from edgec.bundle.registry import MAX_BODY
from edgec.runtime.verify_bundle import manifest_digest

DESCRIPTORS = Path(trust.__file__).parents[1] / "targets" / "descriptors"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[Path, Path]:
    """A signed zoo (raspberry-pi-4, coral-dev-board) and its public key."""
    root = tmp_path_factory.mktemp("registry")
    private, public = trust.generate_keys(root / "keys")
    compile_zoo(TEACHER, root / "zoo", "--sign-key", private)
    return root / "zoo", public


def descriptor(shipped: str, **changes) -> bytes:
    """A shipped descriptor's YAML with fields changed (``section__field=value``)."""
    data = yaml.safe_load((DESCRIPTORS / f"{shipped}.yaml").read_text())
    for path, value in changes.items():
        section, _, field = path.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    return yaml.safe_dump(data).encode()


def test_a_device_registering_as_raspberry_pi_4_gets_the_rpi4_bundle_and_installs_it(zoo, tmp_path):
    """The whole path: register by name, fetch the content-addressed archive, verify the
    signature the registry sent, install atomically, and the installed bundle is rpi4's."""
    zoo_dir, public = zoo
    index = json.loads((zoo_dir / "index.json").read_text())
    with registry(zoo_dir) as base:
        status, answer = request(base + "/v1/bundle", {"target": "raspberry-pi-4"}, "pi-0001")
        assert status == 200, answer
        assert answer["target"] == "raspberry-pi-4" and answer["channel"] == "current"
        assert answer["manifest_sha256"] == index["targets"]["raspberry-pi-4"]["manifest_sha256"]
        assert answer["archive_url"] == f"/v1/archive/{answer['archive_sha256']}"
        bundle = fetch_and_unpack(base, answer, tmp_path / "download")
    assert manifest_digest(bundle) == answer["manifest_sha256"]
    sig = (bundle / "manifest.sig").read_bytes()
    assert answer["signature"] == base64.b64encode(sig).decode()
    result = install.install_bundle(bundle, tmp_path / "device", public)
    assert result.action == "installed" and result.manifest_sha256 == answer["manifest_sha256"]
    manifest = json.loads((tmp_path / "device" / "current" / "manifest.json").read_text())
    assert manifest["target"]["name"] == "raspberry-pi-4"


def test_a_descriptor_gets_the_zoo_target_with_its_arch_accelerator_and_no_more_ram(zoo):
    """An unknown 8 GB Cortex-A72 board without accelerator fits the 4 GB Pi 4 bundle; the
    shipped Coral descriptor (by name) gets the Coral bundle; a board with too little RAM or an
    accelerator kind the zoo has no bundle for gets a JSON 404."""
    zoo_dir, _ = zoo
    with registry(zoo_dir) as base:
        url = base + "/v1/bundle"
        pi8 = descriptor("raspberry-pi-4", name="my-board", memory__ram_gb=8)
        assert request(url, pi8)[1]["target"] == "raspberry-pi-4"
        coral = (DESCRIPTORS / "coral-dev-board.yaml").read_bytes()
        assert request(url, coral)[1]["target"] == "coral-dev-board"
        as_json = json.dumps(yaml.safe_load(pi8)).encode()
        assert request(url, as_json)[1]["target"] == "raspberry-pi-4"
        small = descriptor("raspberry-pi-4", name="tiny", memory__ram_gb=2)
        status, answer = request(url, small)
        assert status == 404 and "No bundle in the zoo fits" in answer["error"]
        jetson = descriptor("jetson-nano", name="other-nano")
        status, answer = request(url, jetson)
        assert status == 404 and "a gpu" in answer["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/bundle", b"{not json: [", 400, "neither JSON nor YAML"),
        ("/v1/bundle", b"- a list", 400, "must be a JSON or YAML mapping"),
        ("/v1/bundle", {"target": "jetson-nano"}, 404, "no bundle for target 'jetson-nano'"),
        ("/v1/bundle", {"cpu": {"arch": "aarch64"}}, 400, "memory.ram_gb"),
        ("/v1/bundle", b"x" * (MAX_BODY + 1), 413, "at most"),
        ("/v1/report", {"p99_ms": 3.0}, 400, "needs the device id"),
        ("/v1/nothing", {"target": "raspberry-pi-4"}, 404, "No such endpoint"),
        ("/v1/archive/" + "0" * 64, None, 404, "No archive"),
        ("/v1/bundle", None, 405, "GET is not allowed"),
        ("/v1/archive/../../index.json", None, 404, "No such endpoint"),
    ],
)
def test_bad_requests_get_a_json_error_and_the_registry_keeps_serving(
    zoo, path, body, status, message
):
    zoo_dir, _ = zoo
    with registry(zoo_dir) as base:
        got, answer = request(base + path, body)
        assert got == status and message in answer["error"], answer
        assert request(base + "/v1/bundle", {"target": "raspberry-pi-4"})[0] == 200


def test_reports_are_stored_with_the_version_the_device_runs(zoo, tmp_path):
    zoo_dir, _ = zoo
    with registry(zoo_dir) as base:
        current = request(base + "/healthz")[1]["current"]
        figures = {"p99_ms": 4.5, "within_budget": 0.98, "drift_psi": {"confidence": 0.3}}
        status, answer = request(base + "/v1/report", figures, "pi-0042")
        assert status == 200 and answer == {
            "recorded": True,
            "version": current,
            "channel": "current",
        }
        status, answer = request(base + "/v1/report", {"within_budget": 1.5}, "pi-0042")
        assert status == 400 and "within_budget" in answer["error"]
    summary = rollout.status(zoo_dir)["versions"][current]
    assert summary["devices"] >= 1 and summary["p99_ms_max"] >= 4.5
    assert summary["drift_psi_max"] >= 0.3


def test_edgec_serve_tier_registry_serves_until_sigterm(zoo, tmp_path):
    """The real command: it announces its address, answers, and stops cleanly on SIGTERM."""
    zoo_dir, _ = zoo
    env = {**os.environ, "PYTHONPATH": str(Path(trust.__file__).parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgec", "serve", str(zoo_dir), "--tier", "registry", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"registry for {zoo_dir} on http://127.0.0.1:"), line
        base = line.split(" on ")[1].split()[0]
        assert request(base + "/v1/bundle", {"target": "coral-dev-board"})[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_registry_refuses_a_directory_that_is_not_a_zoo_and_gateway_options(zoo, tmp_path):
    result = run("serve", tmp_path, "--tier", "registry", "--port", "0")
    assert result.exit_code == 2 and "is not a zoo" in result.output
    zoo_dir, _ = zoo
    result = run("serve", zoo_dir, "--tier", "registry", "--workers", "2")
    assert result.exit_code == 2 and "apply to --tier gateway only" in result.output
