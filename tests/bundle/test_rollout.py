"""``edgec rollout``: a canary share stable per device id, promote, rollback everywhere, the
devices' reports; devices fetch from a real registry and install atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from zoo_helpers import (
    TEACHER,
    compile_zoo,
    fetch_and_unpack,
    registry,
    request,
    run,
    second_teacher,
)

from edgec.bundle import install, rollout
from edgec.bundle.registry import Registry

IDS = [f"device-{i:05d}" for i in range(10_000)]
PI = {"target": "raspberry-pi-4"}


def test_canary_selection_is_stable_per_device_id_and_covers_5_percent_of_10000_ids():
    """The bucket is sha256(id)'s first 8 bytes mod 10,000; 5% of 10,000 ids is 500 +- 100,
    a device in the 5% canary is in the 10% one, and the same id always lands the same."""
    chosen = {i for i in IDS if rollout.in_canary(i, 5)}
    assert 400 <= len(chosen) <= 600, len(chosen)
    assert chosen == {i for i in IDS if rollout.in_canary(i, 5)}
    assert chosen <= {i for i in IDS if rollout.in_canary(i, 10)}
    expected = int.from_bytes(hashlib.sha256(b"device-00042").digest()[:8], "big") % 10_000
    assert rollout.bucket("device-00042") == expected
    assert not rollout.in_canary(None, 100) and all(rollout.in_canary(i, 100) for i in IDS[:50])


def versions_by_device(zoo: Path) -> dict[str, str]:
    """The version the registry hands each of the 10,000 ids for a Raspberry Pi 4."""
    served = Registry(zoo)
    return {i: served.bundle_for(PI, i)["version"] for i in IDS}


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory) -> tuple[Path, str, str]:
    """A zoo whose first compile was released to all, then recompiled (--force) as v2."""
    root = tmp_path_factory.mktemp("rollout")
    zoo = root / "zoo"
    compile_zoo(TEACHER, zoo)
    result = run("rollout", zoo, "--promote", "--json")
    assert result.exit_code == 0, result.output
    v1 = json.loads(result.output)["current"]
    compile_zoo(second_teacher(root), zoo, "--force")
    v2 = rollout.version_of(rollout.read_index(zoo))
    assert v1 != v2
    return zoo, v1, v2


@pytest.fixture
def zoo(two_versions, tmp_path) -> tuple[Path, str, str]:
    """A private copy of the two-version zoo (each test moves its releases)."""
    source, v1, v2 = two_versions
    shutil.copytree(source, tmp_path / "zoo", symlinks=True)
    return tmp_path / "zoo", v1, v2


def test_recompiling_the_zoo_keeps_serving_the_released_version(zoo):
    """--force replaced the bundles, not the releases: every device still gets v1."""
    path, v1, _ = zoo
    assert set(versions_by_device(path).values()) == {v1}


def test_canary_5_serves_the_new_version_to_5_percent_and_promote_to_all(zoo):
    path, v1, v2 = zoo
    result = run("rollout", path, "--canary", "5")
    assert result.exit_code == 0 and f"canary: {v2} to 5% of devices" in result.output
    served = versions_by_device(path)
    on_v2 = {i for i, v in served.items() if v == v2}
    assert on_v2 == {i for i in IDS if rollout.in_canary(i, 5)}
    assert 400 <= len(on_v2) <= 600 and set(served.values()) == {v1, v2}
    assert versions_by_device(path) == served  # stable across requests
    assert run("rollout", path, "--promote").exit_code == 0
    assert set(versions_by_device(path).values()) == {v2}
    state = json.loads((path / "releases.json").read_text())
    assert (state["current"], state["previous"], state["canary"]) == (v2, v1, None)


def test_rollback_after_promote_restores_the_previous_version_for_every_device_id(zoo):
    path, v1, v2 = zoo
    assert run("rollout", path, "--canary", "5").exit_code == 0
    assert run("rollout", path, "--promote").exit_code == 0
    assert set(versions_by_device(path).values()) == {v2}
    result = run("rollout", path, "--rollback")
    assert result.exit_code == 0 and f"every device gets {v1}" in result.output
    assert set(versions_by_device(path).values()) == {v1}


def test_rollback_during_a_canary_restores_the_previous_version_for_every_device_id(zoo):
    path, v1, _ = zoo
    assert run("rollout", path, "--canary", "5").exit_code == 0
    assert run("rollout", path, "--rollback").exit_code == 0
    assert set(versions_by_device(path).values()) == {v1}
    state = json.loads((path / "releases.json").read_text())
    assert state["current"] == v1 and state["canary"] is None


def test_a_canary_device_installs_the_new_version_and_goes_back_on_rollback(zoo, tmp_path):
    """Over HTTP: a device in the canary and one outside ask with X-Edgec-Device-Id, install
    what they get with the atomic install, report, and after the rollback both run v1."""
    path, v1, v2 = zoo
    inside = next(i for i in IDS if rollout.in_canary(i, 5))
    outside = next(i for i in IDS if not rollout.in_canary(i, 5))
    assert run("rollout", path, "--canary", "5").exit_code == 0
    with registry(path) as base:
        installed = {}
        for device in (inside, outside):
            status, answer = request(base + "/v1/bundle", PI, device)
            assert status == 200
            bundle = fetch_and_unpack(base, answer, tmp_path / device / "download")
            result = install.install_bundle(bundle, tmp_path / device / "install")
            installed[device] = (answer["version"], answer["channel"], result.manifest_sha256)
            figures = {"p99_ms": 4.0, "within_budget": 0.99, "drift_psi": 0.05}
            assert request(base + "/v1/report", figures, device)[0] == 200
        assert installed[inside][:2] == (v2, "canary")
        assert installed[outside][:2] == (v1, "current")
        assert installed[inside][2] != installed[outside][2]
        status = json.loads(run("rollout", path, "--status", "--json").output)
        assert status["canary"] == {"version": v2, "percent": 5.0}
        assert status["versions"][v2]["devices"] == 1 and status["versions"][v1]["devices"] == 1
        assert run("rollout", path, "--rollback").exit_code == 0
        answer = request(base + "/v1/bundle", PI, inside)[1]
        assert (answer["version"], answer["channel"]) == (v1, "current")
        bundle = fetch_and_unpack(base, answer, tmp_path / "again")
    result = install.install_bundle(bundle, tmp_path / inside / "install")
    assert result.manifest_sha256 == installed[outside][2]
    text = run("rollout", path, "--status").output
    assert f"{v2}: 1 devices, p99 median 4.000 ms" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "Give exactly one of"),
        (("--promote", "--rollback"), "Give exactly one of"),
        (("--canary", "0"), "percentage in (0, 100]"),
        (("--canary", "101"), "percentage in (0, 100]"),
    ],
)
def test_bad_rollout_flags_exit_2_and_change_nothing(zoo, args, message):
    path, *_ = zoo
    before = (path / "releases.json").read_bytes()
    result = run("rollout", path, *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert (path / "releases.json").read_bytes() == before


def test_rollout_refuses_what_it_cannot_do(tmp_path, zoo):
    path, *_ = zoo
    result = run("rollout", tmp_path / "nowhere", "--promote")
    assert result.exit_code == 2 and "is not a zoo" in result.output
    assert run("rollout", path, "--promote").exit_code == 0  # v2 to all, v1 previous
    result = run("rollout", path, "--canary", "5")
    assert result.exit_code == 2 and "already current everywhere" in result.output
    assert run("rollout", path, "--rollback").exit_code == 0
    assert run("rollout", path, "--rollback").exit_code == 0  # a swap, like edgec install


def test_a_fresh_zoo_needs_a_first_release_before_a_canary(tmp_path):
    compile_zoo(TEACHER, tmp_path / "zoo")
    result = run("rollout", tmp_path / "zoo", "--canary", "5")
    assert result.exit_code == 2 and "--promote" in result.output
    result = run("rollout", tmp_path / "zoo", "--rollback")
    assert result.exit_code == 2 and "Nothing to roll back to" in result.output
    assert not (tmp_path / "zoo" / "releases.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["zoo"]


def test_a_bundle_edited_in_the_zoo_is_not_published(zoo):
    """Publishing verifies every bundle against its manifest: an edited file refuses the
    canary (exit 2) and nothing is released."""
    path, *_ = zoo
    before = (path / "releases.json").read_bytes()
    manifest = json.loads((path / "raspberry-pi-4" / "manifest.json").read_text())
    victim = path / "raspberry-pi-4" / sorted(manifest["files"])[0]
    victim.write_bytes(victim.read_bytes() + b"#")
    result = run("rollout", path, "--canary", "5")
    assert result.exit_code == 2 and "no longer matches the zoo's index" in result.output
    assert (path / "releases.json").read_bytes() == before
    assert sorted(p.name for p in (path / "releases").iterdir()) == [
        f"{json.loads(before)['current']}.json"
    ]
    assert len(list((path / "archives").iterdir())) == 2  # v1's two, no orphan of v2
