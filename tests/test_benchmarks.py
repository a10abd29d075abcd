"""The benchmark scripts' ``--models-dir``: lookup, one-line skip, usage errors, what is recorded.

The recorded command never names the folder's path. Nothing here times anything: the scripts
are run only where they measure nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from models import tiny_conv_model

import edgec

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Loaded from its file, so that benchmarks/ never goes on the tests' sys.path.
_spec = importlib.util.spec_from_file_location("bench_models", BENCHMARKS / "bench_models.py")
bench_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_models)


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<script>`` with the edgec under test first on the path."""
    env = {**os.environ, "PYTHONPATH": str(Path(edgec.__file__).resolve().parents[1])}
    command = [sys.executable, str(BENCHMARKS / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_without_models_dir_the_models_are_skipped_in_one_line(capsys):
    """No ``--models-dir``: nothing found, one line names every skipped model and why."""
    assert bench_models.find_models(None, bench_models.BENCHMARK_MODELS) == {}
    assert capsys.readouterr().out.splitlines() == [
        "skipped resnet18, mobilenet_v2, mobilenet_v3_small, efficientnet_b0: no --models-dir given"
    ]


def test_models_dir_finds_its_files_and_names_the_missing_ones(tmp_path, capsys):
    """A folder with only resnet18.onnx: that file is found, the other asked-for model skipped."""
    onnx.save(tiny_conv_model(), tmp_path / "resnet18.onnx")
    found = bench_models.find_models(tmp_path, ["mobilenet_v2", "resnet18"])
    assert found == {"resnet18": tmp_path / "resnet18.onnx"}
    assert capsys.readouterr().out == f"skipped mobilenet_v2: not in {tmp_path}\n"


def test_nothing_to_skip_prints_nothing(tmp_path, capsys):
    """Every asked-for model present: no skip line."""
    onnx.save(tiny_conv_model(), tmp_path / "resnet18.onnx")
    assert list(bench_models.find_models(tmp_path, ["resnet18"])) == ["resnet18"]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_models_dir_that_is_not_a_folder_is_a_usage_error(tmp_path, capsys, kind):
    """A missing folder, or a file, exits 2 with one sentence saying what to pass."""
    target = tmp_path / "models"
    if kind == "file":
        target.write_text("not a folder")
    parser = argparse.ArgumentParser(prog="bench")
    bench_models.add_models_dir(parser)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--models-dir", str(target)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"'{target}' is not a folder; pass the folder that holds the benchmark models" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--rounds", "7", "--models-dir", "{dir}"],
        ["--rounds", "7", "--models-dir={dir}"],
        ["--rounds", "7", "--models-d", "{dir}/"],  # argparse accepts abbreviations
    ],
)
def test_the_recorded_command_writes_the_folder_as_DIR(tmp_path, argv):
    """The command a section records never names the folder it was given."""
    argv = [word.format(dir=tmp_path) for word in argv]
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds")
    bench_models.add_models_dir(parser)
    models_dir = parser.parse_args(argv).models_dir
    command = bench_models.recorded_command("int8.py", argv, models_dir)
    assert str(tmp_path) not in command
    assert command.startswith("python benchmarks/int8.py --rounds 7 --models-d")
    assert command.endswith(" DIR") or command.endswith("=DIR")


@pytest.mark.parametrize(
    "script, args",
    [
        ("int8.py", ["--models", "resnet18", "efficientnet_b0"]),
        ("tvm_vs_ort.py", ["--part", "speed"]),
        ("passes.py", ["--models", "resnet18", "mobilenet_v2"]),
        ("fp16.py", ["--models", "resnet18", "efficientnet_b0"]),
        ("litert.py", ["--models", "resnet18", "mobilenet_v2"]),
    ],
)
@pytest.mark.parametrize("with_dir", [True, False])
def test_each_script_skips_absent_models_in_one_line_and_records_nothing(
    tmp_path, script, args, with_dir
):
    """An empty ``--models-dir`` (or none), run for real: exit 0, one skip line, no section."""
    results = BENCHMARKS / "RESULTS.md"
    before = results.read_bytes()
    extra = ["--models-dir", str(tmp_path)] if with_dir else []
    done = _run(script, *args, *extra, "--no-write")
    assert done.returncode == 0, done.stderr
    skips = [line for line in done.stdout.splitlines() if line.startswith("skipped ")]
    why = f"not in {tmp_path}" if with_dir else "no --models-dir given"
    assert len(skips) == 1 and skips[0].endswith(why), done.stdout
    assert "nothing measured" in done.stdout
    assert results.read_bytes() == before


@pytest.mark.parametrize(
    "script", ["int8.py", "partition.py", "tvm_vs_ort.py", "passes.py", "fp16.py", "litert.py"]
)
def test_each_script_documents_models_dir(script):
    """``--help`` lists the option, and the docstring (the help's source) names it too."""
    text = (BENCHMARKS / script).read_text(encoding="utf-8")
    assert "--models-dir" in text.split('"""', 2)[1]
    done = _run(script, "--help")
    assert done.returncode == 0, done.stderr
    assert "--models-dir DIR" in done.stdout


def test_the_mobilenet_style_digits_model_has_depthwise_convs_and_ten_logits():
    """``bench_models.mobilenet_digits``: inverted residual blocks with depthwise 3x3 convs
    (groups == channels), residual Adds, 10 logits for a 1x32x32 input."""
    torch = pytest.importorskip("torch")
    model = bench_models.mobilenet_digits().eval()
    depthwise = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]
    assert len(depthwise) == 5
    assert sum(block.residual for block in model.features if hasattr(block, "residual")) == 2
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_the_unlabeled_distill_arm_is_a_usage_error_without_unlabeled_views():
    """The unlabeled arm needs ``--unlabeled N > 0``: said before anything is trained."""
    result = _run("distill.py", "--arms", "pruned+KD+unlabeled", "--unlabeled", "0", "--no-write")
    assert result.returncode == 2
    assert "needs --unlabeled N > 0" in result.stderr.splitlines()[-1]


def _load_distill():
    """``benchmarks/distill.py`` as a module (its ``results_md`` import loaded from its file,
    not through the path)."""
    pytest.importorskip("torch")
    for name in ("results_md", "distill"):
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
            sys.modules[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(sys.modules[name])
    return sys.modules["distill"]


@pytest.mark.parametrize("share", [1.0, 0.25])
def test_the_distill_benchmark_splits_by_digit_image(share):
    """No digit image has a view on both sides of the split (labelled or not); the students'
    images are a stratified share of the teacher's, and what they get no labels for is
    unlabelled."""
    import numpy as np

    distill = _load_distill()
    images, copies, unlabeled = 200, 2, 2
    y = np.tile(np.arange(images) % 10, copies + unlabeled)
    args = argparse.Namespace(copies=copies, student_share=share)
    masks = distill.view_masks(y, images, args)
    image_of = np.arange(len(y)) % images
    seen = set(image_of[masks.teacher_train | masks.unlabelled])
    assert not seen & set(image_of[masks.validation])
    assert len(set(image_of[masks.validation])) == 50  # a quarter of the images
    assert not (masks.student_train & ~masks.teacher_train).any()
    assert set(image_of[masks.teacher_train]) == seen  # the unlabelled: training images only
    held_back = masks.teacher_train & ~masks.student_train
    assert (masks.unlabelled[held_back]).all()
    students = image_of[masks.student_train]
    assert len(set(students)) == 10 * round(share * 15)  # of each class's 15 training images
    assert np.bincount(y[masks.student_train]).std() == 0  # stratified: every class alike


def test_a_student_share_with_the_views_split_is_a_usage_error():
    """``--student-share`` needs the image split: said before anything is trained."""
    result = _run("distill.py", "--student-share", "0.5", "--split", "views", "--no-write")
    assert result.returncode == 2
    assert "--student-share needs --split images" in result.stderr.splitlines()[-1]


def test_a_stall_window_below_one_is_a_usage_error():
    """``--stall-window`` counts epochs: 0 is said before anything is trained."""
    result = _run("distill.py", "--stall-window", "0", "--no-write")
    assert result.returncode == 2
    assert "--stall-window must be at least 1" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--patience", "0"), "--patience must be at least 1"),
        (("--teacher-patience", "0"), "--teacher-patience must be at least 1"),
        (("--lr", "0"), "--lr must be positive"),
        (("--teacher-lr", "-1"), "--teacher-lr must be positive"),
    ],
)
def test_a_bad_rate_or_patience_is_a_usage_error(args, message):
    """The students' and the teachers' rate and patience are checked before anything is
    trained."""
    result = _run("distill.py", *args, "--no-write")
    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1]


def test_the_described_schedule_counts_the_stall_window():
    """With a 16-epoch cap and patience 10 a stall judged epoch by epoch can come before the
    cap; judged on five-epoch means (the first record at epoch 5) it cannot, and the
    section says the schedule is a fixed length."""
    distill = _load_distill()
    assert distill._plateau_recipe(16, 10, 1).startswith("edgec's plateau schedule: the rate")
    assert "no stall can reach before the cap" in distill._plateau_recipe(16, 10, 5)
