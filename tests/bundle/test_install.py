"""Installing bundles: verified copy named by the manifest hash, atomic switch, rollback."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from trust_helpers import shared_signed_bundles

from edgec.bundle import install, trust
from edgec.cli import main
from edgec.errors import BadInputError, VerificationError
from edgec.runtime.verify_bundle import manifest_digest


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """Keys and three signed bundles of the example teacher (compiled once per session)."""
    return shared_signed_bundles(tmp_path_factory)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def links(into: Path) -> tuple[str | None, str | None]:
    def read(name):
        link = into / name
        return os.readlink(link) if link.is_symlink() else None

    return read("current"), read("previous")


def version_of(bundle: Path) -> str:
    return f"versions/{manifest_digest(bundle)}"


def test_install_names_the_version_by_the_manifest_hash_and_points_current_at_it(signed, tmp_path):
    into = tmp_path / "device"
    a = signed.bundles[0]
    result = run("install", a, "--into", into, "--key", signed.public, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["action"] == "installed" and data["signature_checked"]
    assert data["manifest_sha256"] == manifest_digest(a)
    assert links(into) == (version_of(a), None)
    installed = into / "current"
    assert (installed / "manifest.json").read_bytes() == (a / "manifest.json").read_bytes()
    assert trust.verify_bundle(installed, signed.public).valid
    assert install.current_bundle(into) == (into / version_of(a)).resolve()


def test_second_install_keeps_the_first_as_previous_and_rollback_swaps_them(signed, tmp_path):
    into = tmp_path / "device"
    a, b, _ = signed.bundles
    install.install_bundle(a, into, signed.public)
    result = install.install_bundle(b, into, signed.public)
    assert result.action == "installed"
    assert links(into) == (version_of(b), version_of(a))
    rolled = run("install", "--rollback", "--into", into, "--key", signed.public)
    assert rolled.exit_code == 0, rolled.output
    assert "rolled-back" in rolled.output
    assert links(into) == (version_of(a), version_of(b))
    install.rollback(into, signed.public)  # and forward again
    assert links(into) == (version_of(b), version_of(a))


def test_only_current_and_previous_are_kept(signed, tmp_path):
    into = tmp_path / "device"
    for bundle in signed.bundles:
        install.install_bundle(bundle, into, signed.public)
    _, b, c = signed.bundles
    assert links(into) == (version_of(c), version_of(b))
    assert sorted(p.name for p in (into / "versions").iterdir()) == sorted(
        [manifest_digest(b), manifest_digest(c)]
    )


def test_installing_the_current_version_again_changes_nothing(signed, tmp_path):
    into = tmp_path / "device"
    a, b, _ = signed.bundles
    install.install_bundle(a, into, signed.public)
    install.install_bundle(b, into, signed.public)
    result = install.install_bundle(b, into, signed.public)
    assert result.action == "already-current"
    assert links(into) == (version_of(b), version_of(a))


def test_reinstalling_the_previous_version_reuses_its_copy(signed, tmp_path):
    into = tmp_path / "device"
    a, b, _ = signed.bundles
    install.install_bundle(a, into, signed.public)
    install.install_bundle(b, into, signed.public)
    inode = (into / version_of(a)).stat().st_ino
    install.install_bundle(a, into, signed.public)
    assert links(into) == (version_of(a), version_of(b))
    assert (into / version_of(a)).stat().st_ino == inode


def test_a_bundle_that_does_not_verify_is_not_installed(signed, tmp_path):
    into = tmp_path / "device"
    a, b, _ = signed.bundles
    install.install_bundle(a, into, signed.public)
    tampered = tmp_path / "tampered"
    shutil.copytree(b, tampered)
    (tampered / "stages" / "teacher" / "model.onnx").write_bytes(b"evil")
    result = run("install", tampered, "--into", into, "--key", signed.public)
    assert result.exit_code == 1 and "stages/teacher/model.onnx" in result.stderr
    assert links(into) == (version_of(a), None)
    assert [p.name for p in (into / "versions").iterdir()] == [manifest_digest(a)]


def test_an_unsigned_bundle_is_refused_when_a_key_is_given(signed, tmp_path):
    into = tmp_path / "device"
    with pytest.raises(VerificationError, match=r"manifest\.sig is missing"):
        install.install_bundle(signed.unsigned, into, signed.public)
    assert links(into) == (None, None)
    result = install.install_bundle(signed.unsigned, into)  # integrity only, said so
    assert not result.signature_checked and "signature not checked" in result.summary


def test_an_installed_copy_that_no_longer_verifies_is_replaced_not_reused(signed, tmp_path):
    """The current version was edited on disk: installing it again repairs it."""
    into = tmp_path / "device"
    a, b, _ = signed.bundles
    install.install_bundle(b, into, signed.public)
    install.install_bundle(a, into, signed.public)
    (into / "current" / "report" / "report.md").write_text("edited on the device\n")
    assert not trust.verify_bundle(into / "current", signed.public).valid
    result = install.install_bundle(a, into, signed.public)
    assert result.current == f"{manifest_digest(a)}.1"
    assert trust.verify_bundle(into / "current", signed.public).valid
    assert links(into)[1] == version_of(b)  # previous is not the broken copy
    assert not (into / version_of(a)).exists()  # the broken copy is gone


def test_a_copy_installed_unsigned_is_recopied_when_a_key_is_required(signed, tmp_path):
    into = tmp_path / "device"
    copy = tmp_path / "a"
    shutil.copytree(signed.bundles[0], copy)
    (copy / "manifest.sig").unlink()
    install.install_bundle(copy, into)
    result = install.install_bundle(signed.bundles[0], into, signed.public)
    assert trust.verify_bundle(into / "current", signed.public).valid
    assert result.current.endswith(".1")


def test_rollback_refuses_a_previous_version_that_no_longer_verifies(signed, tmp_path):
    into = tmp_path / "device"
    a, b, _ = signed.bundles
    install.install_bundle(a, into, signed.public)
    install.install_bundle(b, into, signed.public)
    (into / "previous" / "stages" / "teacher" / "model.onnx").write_bytes(b"rot")
    result = run("install", "--rollback", "--into", into, "--key", signed.public)
    assert result.exit_code == 1 and "stages/teacher/model.onnx" in result.stderr
    assert links(into) == (version_of(b), version_of(a))


def test_rollback_without_a_previous_version_is_bad_input(signed, tmp_path):
    into = tmp_path / "device"
    install.install_bundle(signed.bundles[0], into)
    result = run("install", "--rollback", "--into", into)
    assert result.exit_code == 2 and "Nothing to roll back to" in result.stderr
    result = run("install", "--rollback", "--into", tmp_path / "never-installed")
    assert result.exit_code == 2 and "not an install directory" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("install", "--into", "DIR"),
        ("install", "BUNDLE", "--rollback", "--into", "DIR"),
    ],
)
def test_install_needs_a_bundle_or_rollback_but_not_both(signed, tmp_path, args):
    args = [str(signed.bundles[0]) if a == "BUNDLE" else a for a in args]
    args = [str(tmp_path / "d") if a == "DIR" else a for a in args]
    result = run(*args)
    assert result.exit_code == 2 and "either a BUNDLE" in result.stderr


def test_a_current_that_is_not_a_symlink_is_left_alone(signed, tmp_path):
    into = tmp_path / "device"
    (into / "current").mkdir(parents=True)
    with pytest.raises(BadInputError, match="is not a symlink"):
        install.install_bundle(signed.bundles[0], into)
    assert (into / "current").is_dir() and not (into / "current").is_symlink()


def test_into_a_file_is_bad_input(signed, tmp_path):
    target = tmp_path / "file"
    target.write_text("")
    result = run("install", signed.bundles[0], "--into", target)
    assert result.exit_code == 2 and "is not a directory" in result.stderr


def test_a_second_installer_is_refused_while_one_holds_the_lock(signed, tmp_path):
    into = tmp_path / "device"
    install.install_bundle(signed.bundles[0], into)
    fd = os.open(into / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(BadInputError, match="Another edgec install is running"):
            install.install_bundle(signed.bundles[1], into)
    finally:
        os.close(fd)
    assert install.install_bundle(signed.bundles[1], into).action == "installed"


def test_install_does_not_import_onnx_or_onnxruntime():
    """``edgec install`` runs on devices and under fault injection: it must start fast."""
    code = (
        "import sys, edgec.cli, edgec.bundle.install, edgec.bundle.trust\n"
        "heavy = [m for m in ('onnx', 'onnxruntime', 'numpy', 'torch') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
