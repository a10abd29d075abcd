"""The TVM backend on this machine: builds that match ONNX Runtime, runtime-only loading, CUDA.

Tolerance: TVM and ONNX Runtime sum in different orders, so outputs are compared with
``atol = rtol = 1e-4`` relative to the output's scale (measured differences: ~5e-6 on the
digits teacher, ~1e-5 relative on the light models).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("tvm", reason="the tvm extra is not installed: pip install 'edgec[tvm]'")

from edgec.errors import BadInputError
from edgec.targets import BuildOptions, get_backend, load_target
from edgec.targets.base import MeasurePolicy

pytestmark = pytest.mark.tvm
TOLERANCE = 1e-4


def ort_outputs(model_path: Path, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_close(actual: np.ndarray, reference: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(reference).max()))
    np.testing.assert_allclose(actual, reference, rtol=TOLERANCE, atol=TOLERANCE * scale)


@pytest.fixture(scope="module")
def host_teacher(tmp_path_factory, teacher_path_module):
    """The digits teacher built untuned for this machine."""
    out = tmp_path_factory.mktemp("tvm-host")
    backend = get_backend("tvm")
    artifact = backend.build(teacher_path_module, load_target("host"), out, BuildOptions())
    return backend, artifact


@pytest.fixture(scope="module")
def teacher_path_module() -> Path:
    return Path(__file__).resolve().parents[3] / "examples" / "digits" / "teacher.onnx"


def test_importing_the_backend_does_not_import_tvm():
    """The registry can list and instantiate the tvm backend without paying for `import tvm`."""
    code = (
        "import sys\n"
        "from edgec.targets.registry import availability, get_backend\n"
        "backend = get_backend('tvm')\n"
        "assert availability('tvm')[0]\n"
        "assert 'tvm' not in sys.modules, 'tvm was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_host_build_of_the_teacher_matches_onnxruntime(host_teacher, teacher_path_module):
    """The untuned host build gives ONNX Runtime's logits on 20 real digits."""
    from sklearn.datasets import load_digits

    backend, artifact = host_teacher
    assert artifact.path.name == "model.tvm.so" and artifact.path.is_file()
    assert artifact.metadata["device"] == "cpu" and artifact.metadata["tuning"] is None
    assert artifact.metadata["inputs"] == [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    runner = backend.load(artifact)
    session = ort.InferenceSession(str(teacher_path_module), providers=["CPUExecutionProvider"])
    digits = load_digits().data[:20].reshape(-1, 1, 1, 8, 8).astype(np.float32) / 16.0
    for image in digits:
        assert_close(runner.run({"x": image})[0], session.run(None, {"x": image})[0])


def test_host_measurement_is_measured_host(host_teacher):
    """measure('host') times real runs here."""
    backend, artifact = host_teacher
    stats = backend.measure(artifact, "host", MeasurePolicy(min_runs=10, max_seconds=0.5))
    assert stats.source == "measured-host" and stats.runs >= 10
    assert 0 < stats.p50 <= stats.p90 <= stats.p99


@pytest.mark.slow
def test_runtime_only_tvm_loads_the_artifact(host_teacher, tmp_path):
    """With TVM_USE_RUNTIME_LIB=1 (no compiler library) the artifact loads and gives the same
    outputs: what a device without TVM's compiler does."""
    backend, artifact = host_teacher
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    expected = backend.load(artifact).run({"x": x})[0]
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from edgec.targets.tvm.runner import TvmRunner\n"
        f"runner = TvmRunner(Path({str(artifact.path)!r}), ['x'], ['logits'], threads=1)\n"
        f"y = runner.run({{'x': np.load({str(tmp_path / 'x.npy')!r})}})[0]\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
        "maps = Path('/proc/self/maps').read_text()\n"
        "assert 'libtvm_runtime' in maps, 'the runtime library is not loaded'\n"
        "assert 'libtvm_compiler' not in maps, 'the compiler library was loaded'\n"
        "try:\n"
        "    import tvm.relax  # noqa\n"
        "except Exception:\n"
        "    pass\n"
        "else:\n"
        "    sys.exit('tvm.relax imported in runtime-only mode')\n"
    )
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet"])
def test_light_model_matches_onnxruntime(name, tmp_path):
    """A real architecture from the onnx wheel (random weights) keeps ONNX Runtime's logits.

    Compared before the final Softmax (random-weight probabilities agree whatever the logits
    do). The unit tests cover squeezenet (among the cheapest to build untuned);
    benchmarks/tvm_vs_ort.py checks every light model the same way.
    """
    from models import randomized_light_model
    from tvm_models import without_final_softmax

    model_path = tmp_path / f"{name}.onnx"
    onnx.save(without_final_softmax(randomized_light_model(name)), model_path)
    backend = get_backend("tvm")
    artifact = backend.build(model_path, load_target("host"), tmp_path / "out", BuildOptions())
    spec = artifact.metadata["inputs"][0]
    feeds = {spec["name"]: np.random.default_rng(0).standard_normal(spec["shape"]).astype("f4")}
    actual = backend.load(artifact).run(feeds)
    for got, ref in zip(actual, ort_outputs(model_path, feeds), strict=True):
        assert_close(got, ref)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "sm", "machine"),
    [("jetson-nano", "sm_53", "AArch64"), ("t4-gateway", "sm_75", "X86-64")],
)
def test_cuda_builds_need_no_gpu(target, sm, machine, teacher_path_module, tmp_path):
    """CUDA builds for the Nano (aarch64 host code) and the T4 carry CUDA kernels for their sm
    and host code for their CPU; loading one here, where there is no GPU, is a clear error."""
    backend = get_backend("tvm")
    ok, why = backend.can_build(load_target(target))
    if not ok:  # the Nano's host code needs the aarch64 cross toolchain (make test installs it)
        pytest.skip(why)
    artifact = backend.build(teacher_path_module, load_target(target), tmp_path, BuildOptions())
    meta = artifact.metadata
    assert meta["device"] == "cuda" and meta["cuda_arch"] == sm
    assert meta["tvm_target"]["kind"] == "cuda" and meta["tvm_target"]["arch"] == sm
    header = subprocess.run(
        ["readelf", "-h", str(artifact.path)], capture_output=True, text=True, check=True
    ).stdout
    assert machine in header.replace("Advanced Micro Devices ", "")
    data = artifact.path.read_bytes()
    assert b'extern "C" __global__' in data, "the CUDA kernels are not in the artifact"
    assert not backend.runs_here(artifact)
    with pytest.raises(BadInputError):
        backend.load(artifact)


def test_model_with_a_dynamic_input_is_refused(tmp_path):
    """TVM builds need static shapes; a dynamic input names the --input-shape flag."""
    from tvm_models import small_cnn

    path = tmp_path / "dynamic.onnx"
    onnx.save(small_cnn(dynamic=True), path)
    with pytest.raises(BadInputError, match="--input-shape input="):
        get_backend("tvm").build(path, load_target("host"), tmp_path / "o", BuildOptions())
    assert not (tmp_path / "o" / "model.tvm.so").exists()


def test_manifest_metadata_is_json(host_teacher):
    """What the manifest stores about a TVM build is plain JSON."""
    _, artifact = host_teacher
    assert json.loads(json.dumps(artifact.metadata)) == artifact.metadata
