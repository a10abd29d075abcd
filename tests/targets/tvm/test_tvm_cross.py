"""Cross-compiling for a Raspberry Pi 4: an aarch64 shared object that really runs.

``edgec compile --target raspberry-pi-4 --backend tvm`` links the stage with Debian's
``aarch64-linux-gnu-gcc``. The object is checked with ``readelf`` (and ``file``), and then run:
``aarch64/run_relax_vm.c`` is cross-compiled against the aarch64 TVM runtime from the official
wheels (fetched by ``.ci/aarch64-tvm-runtime.sh``) and executed under ``qemu-aarch64`` on real
digits; its logits must match ONNX Runtime's on this machine (same tolerance as the host
build, 1e-4). Each missing piece (cross compiler, qemu, runtime) skips with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgec.errors import BadInputError
from edgec.targets import get_backend

pytest.importorskip("tvm", reason="the tvm extra is not installed: pip install 'edgec[tvm]'")

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
HARNESS = Path(__file__).parent / "aarch64" / "run_relax_vm.c"
SYSROOT = Path("/usr/aarch64-linux-gnu")
TOLERANCE = 1e-4


def _runtime_dir() -> Path:
    default = REPO / ".venv" / "aarch64-tvm-runtime"
    return Path(os.environ.get("EDGEC_AARCH64_TVM_RUNTIME", default))


@pytest.fixture
def pi_bundle(pi4_tvm_bundle) -> Path:
    """The teacher cross-compiled for the Pi with TVM (once a session)."""
    return pi4_tvm_bundle


def _artifact(bundle: Path) -> tuple[Path, dict]:
    stage = json.loads((bundle / "manifest.json").read_text())["stages"][0]
    return bundle / stage["artifact"], stage


def test_raspberry_pi_build_is_an_aarch64_shared_object(pi_bundle):
    """The artifact is an ELF shared object for AArch64, linked by the cross compiler."""
    path, stage = _artifact(pi_bundle)
    assert stage["backend"] == "tvm" and path.name == "model.tvm.so"
    header = subprocess.run(["readelf", "-h", str(path)], capture_output=True, text=True)
    assert header.returncode == 0, header.stderr
    assert "AArch64" in header.stdout and "DYN (Shared object file)" in header.stdout
    if shutil.which("file"):
        described = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True)
        assert "ARM aarch64" in described.stdout and "shared object" in described.stdout
    options = stage["backend_options"]
    assert options["linker"] == "aarch64-linux-gnu-gcc" and options["arch"] == "aarch64"
    assert options["tvm_target"]["mtriple"] == "aarch64-linux-gnu"
    assert options["tvm_target"]["mcpu"] == "cortex-a72"
    assert stage["latency_ms"]["source"] == "estimated"


def test_accuracy_of_a_cross_build_is_measured_with_its_onnx_model(pi_bundle):
    """An aarch64 object cannot run here: --data is evaluated with ONNX Runtime on the stage's
    ONNX model (the artifact's source), and the manifest says so."""
    _, stage = _artifact(pi_bundle)
    assert stage["accuracy"] > 0.95
    assert stage["accuracy_measured_with"].startswith("onnxruntime on this machine")


def test_aarch64_artifact_refuses_to_load_on_this_machine(pi_bundle):
    """Loading it here is one sentence that points at --device."""
    if os.uname().machine == "aarch64":
        pytest.skip("this machine is aarch64")
    from edgec.targets.base import Artifact

    path, stage = _artifact(pi_bundle)
    artifact = Artifact("tvm", path, "raspberry-pi-4", (path,), stage["backend_options"])
    with pytest.raises(BadInputError, match="--device rpc://"):
        get_backend("tvm").load(artifact)


def test_raspberry_pi_build_runs_under_qemu_and_matches_onnxruntime(pi_bundle, tmp_path):
    """The aarch64 object runs with the aarch64 TVM runtime under qemu-aarch64 and gives
    ONNX Runtime's logits for real digits."""
    runtime = _runtime_dir()
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("no qemu-aarch64: apt-get install qemu-user")
    if not (runtime / "libtvm_runtime.so").is_file():
        pytest.skip(f"no aarch64 TVM runtime in {runtime}: run .ci/aarch64-tvm-runtime.sh")
    import tvm_ffi

    include = Path(tvm_ffi.__file__).parent / "include"
    runner = tmp_path / "run_relax_vm"
    subprocess.run(
        [
            "aarch64-linux-gnu-gcc", "-O1", f"-I{include}", str(HARNESS), "-o", str(runner),
            f"-L{runtime}", "-Wl,--no-as-needed", "-ltvm_ffi", "-ltvm_runtime",
        ],
        check=True,
    )  # fmt: skip
    from sklearn.datasets import load_digits

    path, _ = _artifact(pi_bundle)
    session = ort.InferenceSession(str(pi_bundle / "stages" / "teacher" / "model.onnx"))
    env = {**os.environ, "LD_LIBRARY_PATH": str(runtime), "QEMU_LD_PREFIX": str(SYSROOT)}
    digits = load_digits().data[:5].reshape(-1, 1, 1, 8, 8).astype(np.float32) / 16.0
    for index, image in enumerate(digits):
        image.tofile(tmp_path / "x.f32")
        done = subprocess.run(
            ["qemu-aarch64", str(runner), str(path), str(tmp_path / "x.f32"),
             str(tmp_path / "y.f32"), "1", "1", "8", "8"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        logits = np.fromfile(tmp_path / "y.f32", dtype=np.float32)
        reference = session.run(None, {"x": image})[0].ravel()
        scale = max(1.0, float(np.abs(reference).max()))
        np.testing.assert_allclose(logits, reference, rtol=TOLERANCE, atol=TOLERANCE * scale)
        assert logits.argmax() == reference.argmax(), f"digit {index}"
