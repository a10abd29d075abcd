"""The generated runtime's choice of ONNX Runtime execution provider, and TensorRT's cache.

The selection runs on lists of available providers (TensorRT present, CUDA only, CPU only);
the fallback runs real ONNX Runtime sessions, with a TensorRT provider that fails to start
standing in for the GPU this machine lacks; the engine cache path is resolved on real files;
and a real bundle built for a GPU target (t4-gateway, ``--backend onnxruntime``) runs here
and says it uses the CPU execution provider.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import TEACHER

from edgec.compiler import compile_model
from edgec.config import CompileConfig
from edgec.runtime import loaders

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
TRT_OPTIONS = {
    "trt_fp16_enable": True,
    "trt_int8_enable": False,
    "trt_engine_cache_enable": True,
    "trt_engine_cache_path": "engines/{gpu}/{trt_version}/{stage_sha256}",
}
PLAN = [
    {"name": TRT, "options": TRT_OPTIONS},
    {"name": CUDA, "options": {}},
    {"name": CPU, "options": {}},
]


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory) -> Path:
    """The digits teacher compiled for t4-gateway with ONNX Runtime (a GPU target)."""
    root = tmp_path_factory.mktemp("t4")
    return compile_model(
        CompileConfig(
            model=TEACHER,
            target="t4-gateway",
            output=root / "bundle",
            backend="onnxruntime",
            data="digits",
            students="none",
            precision="fp32",
            measure_seconds=0.2,
        )
    ).bundle


def test_tensorrt_present_is_tried_first_then_cuda_then_cpu():
    """A Jetson/GPU build of ONNX Runtime: all three, in the plan's order, options kept."""
    chosen = loaders.select_providers(PLAN, [CPU, CUDA, TRT, "AzureExecutionProvider"])
    assert chosen == [(TRT, TRT_OPTIONS), (CUDA, {}), (CPU, {})]


def test_cuda_only_skips_tensorrt():
    """onnxruntime-gpu without TensorRT: CUDA, then CPU."""
    assert loaders.select_providers(PLAN, [CUDA, CPU]) == [(CUDA, {}), (CPU, {})]


def test_cpu_only_gets_the_cpu_provider():
    """Plain onnxruntime (this machine): the CPU provider alone; no plan means the same."""
    available = ["AzureExecutionProvider", CPU]
    assert loaders.select_providers(PLAN, available) == [(CPU, {})]
    assert loaders.select_providers(None, available) == [(CPU, {})]
    assert loaders.select_providers([{"name": TRT, "options": {}}], [CPU]) == [(CPU, {})]


def test_the_engine_cache_path_names_gpu_tensorrt_and_stage_hash(tmp_path):
    """The template is filled with the GPU's and TensorRT's names (made path-safe) and the
    artifact's SHA-256, under the cache root, and the directory is created."""
    artifact = tmp_path / "stage" / "model.ort.onnx"
    artifact.parent.mkdir()
    artifact.write_bytes(TEACHER.read_bytes())
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    root = tmp_path / "cache"
    resolved = loaders.tensorrt_options(TRT_OPTIONS, artifact, root, "Tesla T4", "10.3.0")
    expected = root / "engines" / "tesla-t4" / "10.3.0" / digest
    assert resolved["trt_engine_cache_path"] == str(expected) and expected.is_dir()
    assert resolved["trt_engine_cache_enable"] is True
    assert TRT_OPTIONS["trt_engine_cache_path"].startswith("engines/{gpu}")  # not modified
    other = loaders.tensorrt_options(
        TRT_OPTIONS, artifact, root, "NVIDIA Jetson Nano Developer Kit", "8.2.1"
    )
    assert Path(other["trt_engine_cache_path"]).relative_to(root).parts[:3] == (
        "engines",
        "nvidia-jetson-nano-developer-kit",
        "8.2.1",
    )


def test_an_unknown_gpu_or_tensorrt_turns_the_engine_cache_off(tmp_path):
    """Without the GPU's or TensorRT's identity an engine could be reused where it is not
    valid: the cache is off (the directory still exists for a calibration table)."""
    artifact = tmp_path / "model.ort.onnx"
    artifact.write_bytes(b"model")
    for gpu, version in ((None, "10.3.0"), ("Tesla T4", None)):
        resolved = loaders.tensorrt_options(TRT_OPTIONS, artifact, tmp_path / "c", gpu, version)
        assert resolved["trt_engine_cache_enable"] is False
        assert "unknown" in Path(resolved["trt_engine_cache_path"]).parts


def test_the_calibration_table_is_copied_where_tensorrt_reads_it(tmp_path):
    """ONNX Runtime's TensorRT provider reads the table from the engine cache directory."""
    artifact = tmp_path / "stage" / "model.ort.onnx"
    artifact.parent.mkdir()
    artifact.write_bytes(b"model")
    (artifact.parent / "calibration.flatbuffers").write_bytes(b"table")
    options = {**TRT_OPTIONS, "trt_int8_calibration_table_name": "calibration.flatbuffers"}
    resolved = loaders.tensorrt_options(options, artifact, tmp_path / "c", "Orin", "10.3.0")
    copied = Path(resolved["trt_engine_cache_path"]) / "calibration.flatbuffers"
    assert copied.read_bytes() == b"table"
    outside = {**TRT_OPTIONS, "trt_int8_calibration_table_name": "../../secret"}
    with pytest.raises(ValueError, match="not a plain file name"):
        loaders.tensorrt_options(outside, artifact, tmp_path / "c", "Orin", "10.3.0")


def test_tensorrt_library_versions_read_as_text():
    """getInferLibVersion() numbers: TensorRT 8's 8201 and TensorRT 10's 100300 schemes."""
    assert loaders.tensorrt_version_text(8201) == "8.2.1"
    assert loaders.tensorrt_version_text(8601) == "8.6.1"
    assert loaders.tensorrt_version_text(100300) == "10.3.0"
    assert loaders.tensorrt_version_text(101200) == "10.12.0"


def test_the_cache_root_and_device_facts_can_be_set_by_environment(monkeypatch, tmp_path):
    """$EDGEC_ENGINE_CACHE, $EDGEC_GPU and $EDGEC_TENSORRT_VERSION override discovery."""
    monkeypatch.setenv("EDGEC_ENGINE_CACHE", str(tmp_path))
    monkeypatch.setenv("EDGEC_GPU", "Orin (nvgpu)")
    monkeypatch.setenv("EDGEC_TENSORRT_VERSION", "10.3.0")
    assert loaders.engine_cache_root() == tmp_path
    assert loaders.gpu_name() == "Orin (nvgpu)"
    assert loaders.tensorrt_version() == "10.3.0"
    monkeypatch.delenv("EDGEC_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loaders.engine_cache_root() == tmp_path / "xdg" / "edgec"


def test_a_provider_that_fails_to_start_falls_back_to_the_next(gpu_bundle):
    """TensorRT failing to create the session (here: its libraries missing) moves on to the
    CPU provider; the failure is kept for the log. All failing is one StageLoadError."""
    import onnxruntime as ort

    path = gpu_bundle / "stages" / "teacher" / "model.ort.onnx"
    attempts = []

    def create(providers):
        attempts.append([name for name, _ in providers])
        if providers[0][0] == TRT:
            raise RuntimeError("EP Error\nlibnvinfer.so.10: cannot open shared object file")
        return ort.InferenceSession(str(path), providers=[name for name, _ in providers])

    session, tried = loaders.open_session([(TRT, TRT_OPTIONS), (CPU, {})], create, path)
    assert session.get_providers()[0] == CPU
    assert attempts == [[TRT, CPU], [CPU]]
    assert tried == [f"{TRT}: libnvinfer.so.10: cannot open shared object file"]

    def broken(providers):
        raise RuntimeError(f"{providers[0][0]} broke")

    with pytest.raises(loaders.StageLoadError, match=f"{TRT}: {TRT} broke; {CPU}: {CPU} broke"):
        loaders.open_session([(TRT, {}), (CPU, {})], broken, path)


def test_a_gpu_bundle_stage_loads_here_on_the_cpu_provider(gpu_bundle):
    """The stage's recorded plan (TensorRT, CUDA, CPU) meets CPU-only ONNX Runtime."""
    manifest = json.loads((gpu_bundle / "manifest.json").read_text())
    (entry,) = manifest["stages"]
    stage = loaders.load_stage(
        gpu_bundle,
        {
            "name": entry["name"],
            "backend": entry["backend"],
            "artifact": entry["artifact"],
            "options": entry["backend_options"],
        },
    )
    assert stage.runs_on == CPU and stage.tried == []
    assert stage.run(np.zeros((1, 1, 8, 8), np.float32)).shape == (1, 10)


def test_a_gpu_bundle_runs_here_and_says_it_uses_the_cpu_provider(gpu_bundle, tmp_path):
    """`python -B -m runtime.device` on the t4-gateway bundle: answers, and its JSON log has
    one stage-loaded line naming CPUExecutionProvider."""
    frames = tmp_path / "x.npy"
    np.save(frames, np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32))
    result = subprocess.run(
        [sys.executable, "-B", "-m", "runtime.device", str(frames), "--json"],
        cwd=gpu_bundle,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
    logs = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    loaded = [line for line in logs if line["event"] == "stage-loaded"]
    assert loaded == [
        {
            **loaded[0],
            "stage": "teacher",
            "backend": "onnxruntime",
            "runs_on": CPU,
            "failed": [],
        }
    ]
