"""``edgec run/serve --key``: the bundle is verified by edgec's own verifier before anything in
it runs or any file it points to is read; whatever is wrong is exit 1 naming the file.

Each case is a reproduction of an attack that got through when the bundle verified itself with
the ``runtime/verify_bundle.py`` it carries.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgec.bundle import trust
from edgec.cli import main
from edgec.data import load_dataset

pytestmark = pytest.mark.slow


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("frames") / "val.npy"
    np.save(path, load_dataset("digits").x_val[:4])
    return path


@pytest.fixture
def signed(teacher_bundle, tmp_path) -> tuple[Path, Path]:
    """A private signed copy of the teacher bundle and its public key."""
    private, public = trust.generate_keys(tmp_path / "keys")
    bundle = tmp_path / "signed"
    shutil.copytree(teacher_bundle, bundle)
    trust.sign_bundle(bundle, private)
    return bundle, public


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``roots`` with its size and mtime: a write anywhere changes it."""
    files = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                path = Path(dirpath, name)
                info = path.lstat()
                files[str(path)] = (info.st_size, info.st_mtime_ns)
    return files


def assert_does_not_verify(result, *names: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "does not verify" in result.stderr, result.stderr
    for name in names:
        assert name in result.stderr, result.stderr


def test_run_with_key_refuses_a_bundle_whose_own_verifier_says_yes(signed, frames):
    """`return {}` at the top of the bundle's verify_bundle(), not re-signed: refused (it used
    to print answers, because the bundle's own verifier was asked)."""
    bundle, public = signed
    verifier = bundle / "runtime" / "verify_bundle.py"
    text = verifier.read_text()
    head = text.index("    root = Path(bundle)\n")
    verifier.write_text(text[:head] + "    return {}\n" + text[head:])
    result = run("run", bundle, frames, "--key", public, "--json")
    assert_does_not_verify(result, "runtime/verify_bundle.py")
    assert '"prediction"' not in result.stdout


def test_serve_with_key_refuses_a_bundle_whose_own_verifier_says_yes(cascade_bundle, tmp_path):
    """The same tampered verifier in a bundle with gateway stages: `serve --key` exits 1
    instead of listening."""
    private, public = trust.generate_keys(tmp_path / "keys")
    bundle = tmp_path / "signed"
    shutil.copytree(cascade_bundle, bundle)
    trust.sign_bundle(bundle, private)
    verifier = bundle / "runtime" / "verify_bundle.py"
    verifier.write_text(
        verifier.read_text().replace("    root = Path(bundle)\n", "    return {}\n", 1)
    )
    result = run("serve", bundle, "--port", "0", "--key", public)
    assert_does_not_verify(result, "runtime/verify_bundle.py")
    assert "listening" not in result.stdout


def test_code_appended_to_the_runtime_package_does_not_run_before_the_key_check(
    signed, frames, tmp_path
):
    """A line appended to runtime/__init__.py that writes a file: refused, nothing written."""
    bundle, public = signed
    marker = tmp_path / "pwned"
    init = bundle / "runtime" / "__init__.py"
    init.write_text(init.read_text() + f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    result = run("run", bundle, frames, "--key", public)
    assert_does_not_verify(result, "runtime/__init__.py")
    assert not marker.exists()


@pytest.mark.parametrize("with_key", [True, False])
def test_a_symlinked_runtime_file_is_refused_not_followed(signed, frames, with_key):
    """runtime/codec.py -> /etc/passwd: exit 1 with a key, exit 2 without; never exit 3 from
    compiling the file it points to."""
    bundle, public = signed
    codec = bundle / "runtime" / "codec.py"
    codec.unlink()
    codec.symlink_to("/etc/passwd")
    result = run("run", bundle, frames, *(["--key", public] if with_key else []))
    if with_key:
        assert_does_not_verify(result, "runtime/codec.py", "symbolic link")
    else:
        assert result.exit_code == 2, result.output
        assert "runtime/codec.py" in result.stderr and "symbolic link" in result.stderr


def _flip_manifest_byte(bundle: Path) -> None:
    path = bundle / "manifest.json"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _change_tier(bundle: Path) -> None:
    path = bundle / "manifest.json"
    path.write_text(path.read_text().replace('"tier": "device"', '"tier": "gateway"', 1))


def _truncate_device(bundle: Path) -> None:
    path = bundle / "runtime" / "device.py"
    path.write_bytes(path.read_bytes()[:100])


def _delete_scoring(bundle: Path) -> None:
    (bundle / "runtime" / "scoring.py").unlink()


@pytest.mark.parametrize(
    ("tamper", "name"),
    [
        (_flip_manifest_byte, "manifest.json"),
        (_change_tier, "manifest.json"),
        (_truncate_device, "runtime/device.py"),
        (_delete_scoring, "runtime/scoring.py"),
    ],
    ids=["manifest-byte-flip", "changed-tier", "truncated-runtime-file", "deleted-runtime-file"],
)
@pytest.mark.parametrize("command", ["run", "serve"])
def test_anything_wrong_with_a_keyed_bundle_is_exit_1_with_no_side_effect(
    signed, frames, tmp_path, monkeypatch, tamper, name, command
):
    """Never exit 2 from acting on an unverified manifest, never exit 3; no file is written
    (in the bundle or the working directory)."""
    bundle, public = signed
    tamper(bundle)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = snapshot(bundle, work)
    args = [frames] if command == "run" else ["--port", "0"]
    result = run(command, bundle, *args, "--key", public)
    assert_does_not_verify(result, name)
    assert snapshot(bundle, work) == before


def test_a_runtime_file_swapped_after_verification_is_refused_at_import(signed):
    """Between the check and the import a file changes: the import checks each source against
    the verified manifest as it reads it, so the swapped file never runs."""
    from edgec.bundle import launch
    from edgec.errors import VerificationError

    bundle, public = signed
    root, _, verified = launch.open_bundle(bundle, public)
    scoring = root / "runtime" / "scoring.py"
    scoring.write_text(scoring.read_text() + "\nraise SystemExit('swapped code ran')\n")
    with pytest.raises(VerificationError, match=r"runtime/scoring\.py: changed after"):
        launch.import_runtime(root, "device", verified)
