"""Students in `edgec compile`: the digits ladder end to end, KD on unlabelled data, and every
way students are skipped (recorded, never a crash) or refused (bad data, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from student_nets import NETS, export, random_inputs

from edgec.cli import main
from edgec.compiler import compile_model
from edgec.config import CompileConfig
from edgec.data import digits_arrays

# Run in a fresh interpreter: importing torch or torch_pruning fails, as on the core install.
NO_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torch_pruning"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTorch())
"""


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.slow
def test_default_digits_compile_derives_students_that_keep_the_teachers_accuracy(
    tmp_path, teacher_path
):
    """The issue's acceptance run: two students, fewer MACs, accuracy and agreement recorded,
    the larger within 1 point of the teacher on the validation split."""
    out = tmp_path / "rpi4"
    result = CliRunner().invoke(
        main,
        [
            "compile",
            str(teacher_path),
            "--target",
            "raspberry-pi-4",
            "--data",
            "digits",
            "-o",
            str(out),
            "--budget-ms",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = _manifest(out)
    *students, teacher = manifest["stages"]
    assert teacher["role"] == "teacher" and teacher["tier"] == "gateway"
    assert [s["name"] for s in students] == ["tiny", "small"]
    for student in students:
        assert student["role"] == "student" and student["tier"] == "device"
        assert student["macs"] < teacher["macs"]
        assert student["mac_ratio"]["achieved"] <= student["mac_ratio"]["target"] + 0.01
        assert 0.9 <= student["accuracy"] <= 1.0
        assert 0.9 <= student["agreement_with_teacher"] <= 1.0
        assert student["distillation"]["loss"] == "kd+ce"
        # A student that ran to the epoch cap still improving is pointed at --distill-epochs.
        capped = f"'{student['name']}' was still improving" in result.output
        assert capped == (not student["distillation"]["stopped_early"])
    assert students[0]["macs"] < students[1]["macs"] < teacher["macs"]
    assert students[1]["accuracy"] >= teacher["accuracy"] - 0.01
    assert manifest["students"]["skipped"] is None and manifest["students"]["failed"] == []
    # Every stage model is a real ONNX model with the teacher's interface.
    for stage in manifest["stages"]:
        model = onnx.load(out / stage["model"])
        assert [i.name for i in model.graph.input] == ["x"]
        assert [o.name for o in model.graph.output] == ["logits"]


def test_kd_on_unlabelled_data_gives_a_student_with_agreement_only(tmp_path, teacher_path):
    x, _ = digits_arrays()
    data = _npz(tmp_path / "unlabelled.npz", x=x)
    config = CompileConfig(
        model=teacher_path,
        target="raspberry-pi-4",
        output=tmp_path / "b",
        data=str(data),
        students=(0.3,),
        distill_epochs=3,
        distill_patience=2,
    )
    manifest = compile_model(config).manifest
    assert manifest["students"]["settings"]["patience"] == 2  # --distill-patience reaches training
    student, teacher = manifest["stages"]
    assert student["name"] == "tiny" and student["accuracy"] is None
    assert student["distillation"]["loss"] == "kd"
    assert student["distillation"]["holdout_metric"] == "agreement"
    assert student["agreement_with_teacher"] > 0.8
    assert teacher["tier"] == "gateway"


@pytest.mark.parametrize(
    ("options", "reason"),
    [({"students": "none", "data": "digits"}, "--students none"), ({}, "no --data")],
)
def test_students_skipped_leave_the_teacher_alone_on_the_device(
    tmp_path, teacher_path, options, reason
):
    config = CompileConfig(
        model=teacher_path, target="raspberry-pi-4", output=tmp_path / "b", **options
    )
    manifest = compile_model(config).manifest
    (stage,) = manifest["stages"]
    assert stage["role"] == "teacher" and stage["tier"] == "device"
    assert reason in manifest["students"]["skipped"]


def _unsupported_teacher(path: Path) -> Path:
    """A digits-shaped classifier with an InstanceNormalization node the converter lacks."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.ones(4, np.float32), "s"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("InstanceNormalization", ["c", "s", "b"], ["n"], name="inorm"),
        helper.make_node("GlobalAveragePool", ["n"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "inorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_teacher_with_an_unsupported_op_compiles_alone_and_says_why(tmp_path):
    model = _unsupported_teacher(tmp_path / "inorm.onnx")
    config = CompileConfig(
        model=model, target="raspberry-pi-4", output=tmp_path / "b", data="digits"
    )
    manifest = compile_model(config).manifest
    assert [s["role"] for s in manifest["stages"]] == ["teacher"]
    assert "InstanceNormalization (node 'inorm')" in manifest["students"]["skipped"]


def test_a_student_that_cannot_be_pruned_is_listed_as_failed(tmp_path):
    """The channel-shuffle net converts but cannot be pruned: the teacher compiles alone and
    the manifest names the rung and the reason."""
    model = export(NETS["shuffle"](), tmp_path / "shuffle.onnx")
    data = _npz(tmp_path / "frames.npz", x=random_inputs(80))
    config = CompileConfig(
        model=model, target="raspberry-pi-4", output=tmp_path / "b", data=str(data), students=(0.5,)
    )
    manifest = compile_model(config).manifest
    assert [s["role"] for s in manifest["stages"]] == ["teacher"]
    (failed,) = manifest["students"]["failed"]
    assert failed["name"] == "tiny" and "pruned network does not run" in failed["reason"]


def test_without_torch_the_teacher_compiles_alone_with_the_install_command(tmp_path, teacher_path):
    """A real interpreter where importing torch fails, as on the core install."""
    out = tmp_path / "b"
    code = NO_TORCH + "from edgec.cli import main\nmain()\n"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "compile",
            str(teacher_path),
            "-t",
            "raspberry-pi-4",
            "--data",
            "digits",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "pip install" in result.stderr
    manifest = _manifest(out)
    assert [s["role"] for s in manifest["stages"]] == ["teacher"]
    assert "train extra" in manifest["students"]["skipped"]


def _bad_data(tmp_path: Path, case: str) -> Path:
    x, y = digits_arrays()
    if case == "too few samples":
        return _npz(tmp_path / "few.npz", x=x[:40], y=y[:40])
    if case == "nan":
        x = x.copy()
        x[3, 0, 2, 2] = np.nan
        return _npz(tmp_path / "nan.npz", x=x, y=y)
    if case == "labels out of range":
        return _npz(tmp_path / "labels.npz", x=x, y=y + 5)
    return _npz(tmp_path / "shape.npz", x=x[:, :, :4, :], y=y)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("too few samples", "students need at least 50"),
        ("nan", "NaN"),
        ("labels out of range", "outputs 10 classes"),
        ("wrong shape", "samples of shape [1, 4, 8]"),
    ],
)
def test_bad_data_is_refused_before_training_with_one_sentence(
    tmp_path, teacher_path, case, fragment
):
    out = tmp_path / "b"
    data = _bad_data(tmp_path, case)
    result = CliRunner().invoke(
        main,
        ["compile", str(teacher_path), "-t", "raspberry-pi-4", "--data", str(data), "-o", str(out)],
    )
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output
    assert "Distilling" not in result.output and "Pruning" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and lines[-1].endswith(".")
    assert not out.exists()
