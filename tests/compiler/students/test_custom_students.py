"""Students you bring (``--student NAME=FILE.onnx[:trained]``): a student of another
architecture than the teacher is distilled and planned, one used as given keeps its weights,
and one whose interface differs from the teacher's is refused with the difference named."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgec.cli import main

torch = pytest.importorskip("torch")
nn = torch.nn


class TinyMobileNet(nn.Module):
    """MobileNet-ish, unlike the teacher's plain conv stack: a stem with BatchNorm and ReLU6,
    a depthwise-separable block, a strided depthwise block with hardswish, a linear head."""

    def __init__(self, classes: int = 10, width: int = 16, channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        )
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, width, 1)
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1, groups=width)
        self.fc = nn.Linear(width * 16, classes)

    def forward(self, x):
        x = nn.functional.relu6(self.stem(x))
        x = nn.functional.relu6(self.pw(nn.functional.relu6(self.dw(x))))
        x = nn.functional.hardswish(self.down(x))
        return self.fc(torch.flatten(x, 1))


def export(net: nn.Module, path: Path, shape=(1, 1, 8, 8)) -> Path:
    """Export with names unlike the teacher's and a dynamic batch dimension."""
    torch.manual_seed(0)
    net.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(shape),),
            buffer,
            input_names=["image"],
            output_names=["scores"],
            dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    path.write_bytes(buffer.getvalue())
    return path


def _net(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return TinyMobileNet(**kwargs)


def compile_args(teacher: Path, out: Path, *extra: str) -> list[str]:
    return [
        "compile",
        str(teacher),
        "-t",
        "raspberry-pi-4",
        "--data",
        "digits",
        "--students",
        "none",
        "--precision",
        "fp32",
        "--budget-ms",
        "5",
        "-o",
        str(out),
        *extra,
    ]


def test_a_student_of_another_architecture_is_distilled_and_planned(tmp_path, teacher_path):
    """A depthwise student exported in torch is distilled from the teacher, gets the teacher's
    input/output names, and is a stage and a cascade candidate like a derived student."""
    student = export(_net(), tmp_path / "mobile.onnx")
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        main,
        compile_args(teacher_path, out, "--student", f"mobile={student}", "--distill-epochs", "15"),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert list(stages) == ["mobile", "teacher"]
    mobile = stages["mobile"]
    assert mobile["role"] == "student" and mobile["tier"] == "device"
    assert mobile["custom"]["trained"] == "distilled"
    assert mobile["custom"]["file"] == "mobile.onnx"
    assert mobile["distillation"]["epochs_run"] >= 1
    assert mobile["accuracy"] > 0.6 and mobile["agreement_with_teacher"] > 0.6
    assert manifest["students"]["custom"][0]["name"] == "mobile"
    assert "mobile" in manifest["policy"]["thresholds"]  # a cascade candidate
    # The stage has the teacher's interface (the bundle's one input and output).
    session = ort.InferenceSession(str(out / mobile["model"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [manifest["inputs"][0]["name"]]
    assert [o.name for o in session.get_outputs()] == [manifest["outputs"][0]["name"]]


def test_trained_students_are_used_as_given_and_ordered_by_size(tmp_path, teacher_path):
    """``:trained`` students keep their weights (same outputs as the file) and the stages are
    ordered smallest first by MACs, whatever the order of the flags."""
    wide = export(_net(1, width=64), tmp_path / "wide.onnx")
    narrow = export(_net(2, width=8), tmp_path / "narrow.onnx")
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        main,
        compile_args(
            teacher_path,
            out,
            "--student",
            f"wide={wide}:trained",
            "--student",
            f"narrow={narrow}:trained",
        ),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["narrow", "wide", "teacher"]
    wide_stage = next(s for s in manifest["stages"] if s["name"] == "wide")
    assert wide_stage["custom"]["trained"] == "as given" and "distillation" not in wide_stage
    x = np.random.default_rng(0).random((4, 1, 1, 8, 8), dtype=np.float32)
    given = ort.InferenceSession(str(wide), providers=["CPUExecutionProvider"])
    shipped = ort.InferenceSession(
        str(out / wide_stage["model"]), providers=["CPUExecutionProvider"]
    )
    name = shipped.get_inputs()[0].name
    for sample in x:
        np.testing.assert_allclose(
            shipped.run(None, {name: sample})[0],
            given.run(None, {"image": sample})[0],
            rtol=1e-4,
            atol=1e-5,
        )


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: export(_net(classes=12), p), "output 0 ('scores') is [1, 12] float"),
        (
            lambda p: export(_net(channels=3), p, shape=(1, 3, 8, 8)),
            "input 0 ('image') is [1, 3, 8, 8] float",
        ),
    ],
    ids=["output", "input"],
)
def test_a_student_whose_interface_differs_is_refused_naming_the_difference(
    tmp_path, teacher_path, make, fragment
):
    """Exit 2 before any training, saying which input/output differs, expected vs got."""
    student = make(tmp_path / "bad.onnx")
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        main, compile_args(teacher_path, out, "--student", f"bad={student}")
    )
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "the teacher's" in result.output
    assert "Traceback" not in result.output and "Distilling" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("mobile", "is not of the form NAME=FILE.onnx"),
        ("teacher={file}", "not 'teacher'"),
        ("tiny={file}", "the derived students use that stage name"),
        ("m=missing.onnx", "no such file"),
    ],
)
def test_bad_student_flags_are_refused(tmp_path, teacher_path, spec, fragment):
    student = export(_net(), tmp_path / "mobile.onnx")
    out = tmp_path / "bundle"
    args = compile_args(teacher_path, out, "--student", spec.format(file=student))
    if spec.startswith("tiny"):
        args[args.index("--students") + 1] = "auto"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_custom_students_join_the_derived_ones_smallest_first(tmp_path, teacher_path):
    """Derived and brought students form one ladder ordered by MACs; the manifest's students
    section lists the brought ones under ``custom``."""
    from edgec.compiler.canonicalize import canonicalize
    from edgec.compiler.loading import load_model
    from edgec.compiler.planning.cost_model import total_macs
    from edgec.compiler.progress import Reporter
    from edgec.compiler.students import Student, StudentsResult
    from edgec.compiler.students.custom import add_custom_students, load_custom_students
    from edgec.config import CompileConfig, parse_student_files

    teacher = canonicalize(load_model(teacher_path, {}).proto)
    narrow = export(_net(2, width=8), tmp_path / "narrow.onnx")
    wide = export(_net(1, width=64), tmp_path / "wide.onnx")
    config = CompileConfig(
        model=teacher_path,
        target="raspberry-pi-4",
        output=tmp_path / "b",
        students=(0.5,),
        data="digits",
        student_files=parse_student_files([f"wide={wide}:trained", f"narrow={narrow}:trained"]),
    )
    reporter = Reporter(quiet=True)
    custom = load_custom_students(teacher, config, reporter)
    derived = StudentsResult((Student("tiny", teacher, {}),), {"requested": [0.5]})
    result = add_custom_students(derived, custom, teacher, None, config, reporter)
    macs = [total_macs(s.model) for s in result.students]
    assert [s.name for s in result.students] == ["narrow", "wide", "tiny"]
    assert macs == sorted(macs)
    assert [c["name"] for c in result.record["custom"]] == ["wide", "narrow"]
    assert result.record["requested"] == [0.5]
