"""Reproducible bundles: the same model, options and seed give the same bytes.

For targets whose latency comes from the cost model (every target but ``host``) the whole
bundle is byte-identical, so the manifest hash (the installed version id) is too. For ``host``,
latencies are measurements of this machine, recorded (and signed) in the manifest, and they
steer choices such as the INT8 flavour: with those choices fixed, the stage models and
artifacts are byte-identical and the manifests differ only in the measured numbers (and the
report that prints them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import randomized_light_model
from trust_helpers import TEACHER

from edgec.bundle import trust
from edgec.compiler import compile_model
from edgec.compiler.canonicalize import canonicalize
from edgec.config import CompileConfig
from edgec.runtime.verify_bundle import manifest_digest
from edgec.targets import BuildOptions, get_backend, load_target


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def compile_twice(tmp_path: Path, **options) -> tuple[Path, Path]:
    outputs = []
    for name in ("first", "second/nested"):  # different paths: paths stay out of the bundle
        config = CompileConfig(model=TEACHER, output=tmp_path / name, **options)
        outputs.append(compile_model(config).bundle)
    return outputs[0], outputs[1]


def assert_identical(first: Path, second: Path) -> dict[str, bytes]:
    a, b = all_files(first), all_files(second)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], f"{name} differs between two identical compiles"
    assert manifest_digest(first) == manifest_digest(second)
    return a


@pytest.mark.slow
def test_teacher_compiled_twice_gives_a_byte_identical_signed_bundle(tmp_path):
    """raspberry-pi-4, --data digits (INT8 calibration and its accuracy guard), seed 7,
    signed: every file, the signature and the manifest hash match."""
    private, public = trust.generate_keys(tmp_path / "keys")
    first, second = compile_twice(
        tmp_path, target="raspberry-pi-4", data="digits", seed=7, students="none",
        sign_key=private,
    )  # fmt: skip
    files = assert_identical(first, second)
    assert "stages/teacher/model.onnx" in files and "manifest.sig" in files
    manifest = json.loads(files["manifest.json"])
    assert manifest["data"]["name"] == "digits" and manifest["stages"][0]["accuracy"] > 0.98
    assert str(tmp_path) not in files["manifest.json"].decode()
    assert trust.verify_bundle(second, public).valid


@pytest.mark.slow
def test_teacher_with_a_distilled_student_compiled_twice_is_byte_identical(tmp_path):
    """A student trained with torch (one short epoch here) is the same bit for bit."""
    first, second = compile_twice(
        tmp_path, target="raspberry-pi-4", data="digits", seed=3, students=(0.1,),
        distill_epochs=1,
    )  # fmt: skip
    files = assert_identical(first, second)
    roles = [s["role"] for s in json.loads(files["manifest.json"])["stages"]]
    assert roles == ["student", "teacher"]


def _differences(a, b, path: str = "") -> list[str]:
    """Paths of the leaves where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def _is_measurement(path: str) -> bool:
    """A measured latency (or a number derived from one), or the hash of a file outside
    ``stages/`` that prints them (the report, the runtime's README)."""
    if path.startswith("/files/"):
        return not path.startswith("/files/stages/")
    return "latency" in path or path.endswith("/runs")


@pytest.mark.slow
def test_host_compile_twice_differs_only_in_measured_latencies(tmp_path):
    """With choices fixed (FP32, no students) nothing but the measurements differs on host.

    (With ``--precision auto`` on host, measurements pick the INT8 flavour, so host bundles
    are not reproducible in general; see the module docstring.)
    """
    first, second = compile_twice(
        tmp_path, target="host", data="digits", precision="fp32", students="none",
        measure_seconds=0.3, backend="onnxruntime",  # auto would time ORT against LiteRT
    )  # fmt: skip
    a, b = all_files(first), all_files(second)
    stage_files = [name for name in a if name.startswith("stages/")]
    assert "stages/teacher/model.ort.onnx" in stage_files
    for name in stage_files:
        assert a[name] == b[name], f"{name} differs between two identical compiles"
    ma, mb = json.loads(a["manifest.json"]), json.loads(b["manifest.json"])
    assert ma["stages"][0]["latency_ms"]["source"] == "measured-host"
    differences = _differences(ma, mb)
    assert "/stages[0]/latency_ms/p50" in differences or ma == mb  # measured: they move
    assert [d for d in differences if not _is_measurement(d)] == []


def test_ort_host_build_renames_the_nodes_it_creates_so_builds_are_identical(tmp_path):
    """shufflenet at level `all` gets NCHWc reorder nodes whose ORT names vary run to run."""
    model = canonicalize(randomized_light_model("shufflenet"))  # the stage model, as compiled
    source = tmp_path / "shufflenet.onnx"
    onnx.save(model, source)
    backend, host = get_backend("onnxruntime"), load_target("host")
    artifacts = [
        backend.build(source, host, tmp_path / name, BuildOptions("fp32"))
        for name in ("a", "b", "c")
    ]
    blobs = [artifact.path.read_bytes() for artifact in artifacts]
    assert blobs[0] == blobs[1] == blobs[2]
    built = onnx.load(artifacts[0].path)
    created = [n.name for n in built.graph.node if "_ort" in n.name]
    assert any(name.startswith("ReorderOutput_ort") for name in created), created
    # Renaming nodes changes no number: the artifact still computes the model.
    runner = backend.load(artifacts[0])
    rng = np.random.default_rng(0)
    feeds = {runner.input_names[0]: rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
    import onnxruntime as ort

    reference = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    expected = reference.run(None, feeds)[0]
    np.testing.assert_allclose(runner.run(feeds)[0], expected, rtol=1e-4, atol=1e-5)
