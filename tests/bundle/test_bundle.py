"""Bundles: manifest hashes match the files, writes are atomic, archives are reproducible."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgec.bundle import io as bundle_io
from edgec.bundle.manifest import Manifest
from edgec.compiler import compile_model
from edgec.config import CompileConfig
from edgec.errors import BadInputError


@pytest.fixture(scope="module")
def rpi_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "rpi4"
    teacher = Path(__file__).resolve().parents[2] / "examples/digits/teacher.onnx"
    config = CompileConfig(
        model=teacher, target="raspberry-pi-4", output=out, data="digits", students="none",
        precision="fp32",  # exact numerics below; INT8 bundles: tests/compiler/test_precision.py
    )  # fmt: skip
    compile_model(config)
    return out


def test_manifest_follows_the_schema(rpi_bundle):
    manifest = json.loads((rpi_bundle / "manifest.json").read_text())
    assert manifest["schema"] == "edgec.bundle/1"
    assert manifest["target"]["name"] == "raspberry-pi-4"
    assert manifest["target"]["gateway"] == "x86-gateway"
    assert manifest["inputs"] == [
        {"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32", "layout": "NCHW"}
    ]
    (stage,) = manifest["stages"]
    assert stage["role"] == "teacher" and stage["precision"] == "fp32"
    assert stage["latency_ms"]["source"] == "estimated"
    assert stage["macs"] > 2_000_000
    assert 0.97 <= stage["accuracy"] <= 1.0
    assert manifest["data"]["validation"] == 450


def test_manifest_file_hashes_match_the_files_on_disk(rpi_bundle):
    manifest = json.loads((rpi_bundle / "manifest.json").read_text())
    on_disk = {
        p.relative_to(rpi_bundle).as_posix()
        for p in rpi_bundle.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert set(manifest["files"]) == on_disk
    for rel, entry in manifest["files"].items():
        data = (rpi_bundle / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], rel
        assert len(data) == entry["bytes"]


def test_stage_model_gives_the_teachers_outputs(rpi_bundle, teacher_path):
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    original = ort.InferenceSession(str(teacher_path)).run(None, {"x": x})[0]
    stage = rpi_bundle / "stages/teacher/model.onnx"
    onnx.checker.check_model(str(stage))
    compiled = ort.InferenceSession(str(stage)).run(None, {"x": x})[0]
    np.testing.assert_allclose(compiled, original, rtol=1e-4, atol=1e-5)


def test_report_is_written(rpi_bundle):
    report = (rpi_bundle / "report/report.md").read_text()
    assert "raspberry-pi-4" in report and "| teacher |" in report


def test_failure_inside_staging_leaves_nothing_behind(tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError), bundle_io.staging_dir(out) as root:
        (root / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("simulated crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(BadInputError, match=r"already exists.*--force"):
        bundle_io.check_output(out, force=False)
    with bundle_io.staging_dir(out, force=True) as root:
        (root / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_output_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BadInputError, match="not a writable directory"):
        bundle_io.check_output(blocker / "bundle", force=False)


def test_archive_is_reproducible_and_extracts(rpi_bundle, tmp_path):
    first = bundle_io.write_archive(rpi_bundle).read_bytes()
    second = bundle_io.write_archive(rpi_bundle).read_bytes()
    assert first == second
    with tarfile.open(rpi_bundle.with_name("rpi4.tar.gz")) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path, filter="data")
    assert "rpi4/manifest.json" in names
    assert (tmp_path / "rpi4/stages/teacher/model.onnx").read_bytes() == (
        rpi_bundle / "stages/teacher/model.onnx"
    ).read_bytes()


def test_read_manifest_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    with pytest.raises(BadInputError, match="not an edgec bundle"):
        bundle_io.read_manifest(tmp_path)


GOLDEN = Path(__file__).resolve().parents[1] / "runtime" / "golden"


@pytest.mark.parametrize("case", ["partition", "split"])  # the complete golden manifests
def test_typed_manifest_gives_back_the_json_it_was_read_from(case):
    """Manifest/StageEntry round-trip every key of a manifest, the optional ones included
    (``threshold``, ``agreement_with_teacher``) and none that was not there."""
    data = json.loads((GOLDEN / f"{case}_manifest.json").read_text())
    written = {k: v for k, v in data.items() if k != "files"}
    assert Manifest.from_json(data).to_json() == written


def test_a_compiled_manifest_is_what_the_typed_model_writes(rpi_bundle):
    """The bundle's manifest.json is the typed manifest's JSON plus the file table, byte for
    byte in the canonical serialisation."""
    data = json.loads((rpi_bundle / "manifest.json").read_text())
    manifest = Manifest.from_json(data)
    assert (
        bundle_io.manifest_bytes({**manifest.to_json(), "files": data["files"]})
        == (rpi_bundle / "manifest.json").read_bytes()
    )
    (stage,) = manifest.stages
    assert stage.precision == "fp32" and stage.latency.source == "estimated"
    assert stage.threshold is None and "threshold" not in data["stages"][0]


def test_the_policy_sets_a_threshold_on_every_classifier_but_the_last():
    """Manifest.with_policy: the policy's thresholds land on their stages, and not on the
    teacher or a partition's prefix."""
    data = json.loads((GOLDEN / "partition_manifest.json").read_text())
    manifest = Manifest.from_json({**data, "policy": None})
    stripped = [dataclasses.replace(s, threshold=None) for s in manifest.stages]
    manifest = dataclasses.replace(manifest, stages=tuple(stripped))
    planned = manifest.with_policy(data["policy"])
    thresholds = {s.name: s.threshold for s in planned.stages if s.threshold is not None}
    assert thresholds == data["policy"]["thresholds"] and thresholds
    assert planned.stage("teacher-prefix").threshold is None
    assert planned.stage("teacher").threshold is None
    assert planned.to_json()["stages"] == data["stages"]
