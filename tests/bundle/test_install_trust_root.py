"""The trust root ``edgec install`` puts beside ``current``: edgec's own verifier, a launcher
that verifies before it imports, and the pinned public key. A bundle cannot vouch for itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from edgec.bundle import install, trust
from edgec.compiler import compile_model
from edgec.config import CompileConfig
from edgec.errors import VerificationError

REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "examples" / "digits" / "teacher.onnx"
# Runs the launcher with edgec unimportable: a device without edgec installed.
WITHOUT_EDGEC = """
import runpy, sys
class NoEdgec:
    def find_spec(self, name, path=None, target=None):
        if name == "edgec" or name.startswith("edgec."):
            raise ImportError(f"edgec is not installed here ({name})")
sys.meta_path.insert(0, NoEdgec())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def host_bundle(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A signed teacher bundle that runs on this machine, its public key and some frames."""
    root = tmp_path_factory.mktemp("host")
    private, public = trust.generate_keys(root / "keys")
    bundle = compile_model(
        CompileConfig(
            model=TEACHER,
            target="host",
            output=root / "bundle",
            students="none",
            precision="fp32",
            sign_key=private,
            measure_seconds=0.1,
        )
    ).bundle
    frames = root / "frames.npy"
    np.save(frames, np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32))
    return bundle, public, frames


def launch(into: Path, *args: str) -> subprocess.CompletedProcess:
    script = into / "trust" / "launch.py"
    return subprocess.run(
        [sys.executable, "-B", "-c", WITHOUT_EDGEC, str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=into,
    )


def test_install_puts_the_verifier_launcher_and_key_beside_current(host_bundle, tmp_path):
    """trust/ holds edgec's own verifier (not the bundle's copy), the launcher and the key."""
    bundle, public, _ = host_bundle
    into = tmp_path / "device"
    install.install_bundle(bundle, into, public)
    source = resources.files("edgec.runtime")
    assert (into / "trust" / "verify_bundle.py").read_bytes() == (
        source / "verify_bundle.py"
    ).read_bytes()
    assert (into / "trust" / "launch.py").read_bytes() == (source / "launcher.py").read_bytes()
    assert trust.key_id(trust.load_public_key(into / "trust" / "edgec.pub")) == trust.key_id(
        trust.load_public_key(public)
    )
    assert not (into / "current" / "trust").exists()  # outside the bundle, not in it


def test_the_launcher_runs_a_verified_bundle_without_edgec(host_bundle, tmp_path):
    bundle, public, frames = host_bundle
    into = tmp_path / "device"
    install.install_bundle(bundle, into, public)
    result = launch(into, "device", str(frames), "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["input"] for line in lines] == [0, 1, 2]
    assert "warning" not in result.stderr  # the pinned key was used
    assert not list(into.rglob("__pycache__"))


@pytest.mark.parametrize("tamper", ["init-code", "verifier-says-yes"])
def test_the_launcher_refuses_a_tampered_current_before_running_any_of_it(
    host_bundle, tmp_path, tamper
):
    """Code appended to runtime/__init__.py, or the bundle's own verifier made to say yes:
    the launcher verifies with its own copy, exits 1, and the bundle's code never ran."""
    bundle, public, frames = host_bundle
    into = tmp_path / "device"
    install.install_bundle(bundle, into, public)
    current = into / "current"
    marker = tmp_path / "ran"
    if tamper == "init-code":
        init = current / "runtime" / "__init__.py"
        init.write_text(init.read_text() + f"\nopen({str(marker)!r}, 'w').write('x')\n")
        name = "runtime/__init__.py"
    else:
        verifier = current / "runtime" / "verify_bundle.py"
        verifier.write_text(
            verifier.read_text().replace("    root = Path(bundle)\n", "    return {}\n", 1)
        )
        name = "runtime/verify_bundle.py"
    result = launch(into, "device", str(frames), "--json")
    assert result.returncode == 1, result.stderr
    assert "refusing to run" in result.stderr and name in result.stderr
    assert result.stdout == "" and not marker.exists()


def test_a_pinned_key_checks_later_installs_and_the_launcher_without_key(host_bundle, tmp_path):
    """After one --key install the key is the device's trust root: an unsigned bundle is not
    installed without --key, and a bundle signed by another key does not run."""
    bundle, public, frames = host_bundle
    into = tmp_path / "device"
    install.install_bundle(bundle, into, public)
    unsigned = tmp_path / "unsigned"
    shutil.copytree(bundle, unsigned)
    (unsigned / "manifest.sig").unlink()
    with pytest.raises(VerificationError, match=r"manifest\.sig is missing"):
        install.install_bundle(unsigned, into)
    # Another key's pair, pinned by hand: the installed bundle is not signed by it.
    _, other = trust.generate_keys(tmp_path / "other")
    shutil.copy(other, into / "trust" / "edgec.pub")
    result = launch(into, "device", str(frames))
    assert result.returncode == 1 and "signed with another key" in result.stderr


def test_the_launcher_without_any_key_checks_integrity_and_says_so(host_bundle, tmp_path):
    bundle, _, frames = host_bundle
    into = tmp_path / "device"
    install.install_bundle(bundle, into)
    assert not (into / "trust" / "edgec.pub").exists()
    result = launch(into, "device", str(frames), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "only the bundle's integrity is checked" in result.stderr
    (into / "current" / "runtime" / "scoring.py").write_text("raise SystemExit(0)\n")
    result = launch(into, "device", str(frames), "--quiet")
    assert result.returncode == 1 and "runtime/scoring.py" in result.stderr
