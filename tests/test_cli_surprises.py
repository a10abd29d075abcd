"""What a new user met and should not have: each case a flag or message that surprised.

fp16 offered and refused (now: refused only where no GPU runs it), explicit students without
data giving a teacher-only bundle, commas in --input-shape, markup swallowing text in
`edgec targets`, and messages hard-wrapped at 80 columns when nobody reads them on a terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgec
from edgec.cli import main
from edgec.compiler.driver import compile_model
from edgec.config import CompileConfig
from edgec.errors import BadInputError
from edgec.targets import availability, load_target, shipped_target_names


def edgec_process(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run Python with this edgec (not an installed one) first on the path, output captured."""
    env = {**os.environ, "PYTHONPATH": str(Path(edgec.__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, **kwargs
    )


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and lines[-1].endswith("."), lines
    assert "Traceback" not in result.output
    return lines[-1]


def test_fp16_is_offered_and_refused_only_where_no_gpu_runs_it(tmp_path, teacher_path):
    """Surprise 2: --help listed fp16, then compile refused it as not built. Now it is built:
    --help lists it, and on a target whose GPU cannot run it (this machine) the refusal says
    why, from the CLI and from the API alike."""
    help_text = run("compile", "--help").output
    assert "[fp32|fp16|int8|auto]" in help_text
    refused = run("compile", str(teacher_path), "-t", "host", "--precision", "fp16")
    assert refused.exit_code == 2
    assert "--precision fp16 needs a GPU that runs FP16" in refused.output
    assert "not built yet" not in refused.output
    config = CompileConfig(
        model=teacher_path, target="host", output=tmp_path / "b", precision="fp16"
    )
    with pytest.raises(BadInputError, match="does not list FP16"):
        compile_model(config)
    assert not (tmp_path / "b").exists()


def test_explicit_students_without_data_are_refused(tmp_path, teacher_path):
    """Surprise 5: --students 0.1,0.3 without --data gave a teacher-only bundle, silently."""
    out = tmp_path / "b"
    result = run(
        "compile", str(teacher_path), "-t", "host", "-o", str(out), "--students", "0.1,0.3"
    )
    assert result.exit_code == 2, result.output
    assert "--students 0.1,0.3 needs --data" in one_error_line(result)
    assert not out.exists()
    with pytest.raises(BadInputError, match="needs --data"):
        CompileConfig(model=teacher_path, target="host", output=out, students=[0.2])


def test_explicit_students_without_the_train_extra_are_refused(tmp_path, teacher_path):
    """Surprise 5 too: without torch, explicit ratios were skipped with a note, exit 0."""
    out = tmp_path / "b"
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if the train extra were not installed\n"
        "from edgec.cli import main\n"
        f"main(['compile', {str(teacher_path)!r}, '-t', 'host', '-o', {str(out)!r}, "
        "'--data', 'digits', '--students', '0.1,0.3'])\n"
    )
    done = edgec_process(["-c", code])
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --students 0.1,0.3 needs the train extra (torch and torch-pruning), which is not "
        "installed: pip install 'edgec[train]' (or use --students auto or none)."
    )
    assert not out.exists()


def test_auto_students_without_data_stay_a_teacher_only_bundle_and_say_why(tmp_path, teacher_path):
    config = CompileConfig(model=teacher_path, target="host", output=tmp_path / "b")
    assert config.students == "auto" and config.data is None  # accepted
    result = run(
        "compile", str(teacher_path), "-t", "host", "-o", str(tmp_path / "c"),
        "--measure-seconds", "0.2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no --data: students are trained on data" in result.stderr


def test_input_shape_with_commas_is_refused_with_the_format(tmp_path, teacher_path):
    """Surprise 8: x=1,1,8,8 was accepted silently."""
    out = tmp_path / "b"
    result = run(
        "compile", str(teacher_path), "-t", "host", "-o", str(out), "--input-shape", "x=1,1,8,8"
    )
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "--input-shape 'x=1,1,8,8'" in line and "e.g. input=1x3x224x224" in line
    assert not out.exists()


def test_targets_say_usable_in_words():
    """Surprise 10: usable and unusable backends differed only by colour."""
    result = run("targets")
    assert result.exit_code == 0
    for name in shipped_target_names():
        for backend in load_target(name).backends:
            ok, why = availability(backend)
            word = f"{backend} (usable)" if ok else f"{backend} (not usable)"
            assert word in result.output, (name, word)
            if not ok:
                assert f"{backend} is not usable here: {why}" in result.output


def test_targets_keep_brackets_in_reasons():
    """Surprise 10: rich read [tvm] in pip install 'edgec[tvm]' as markup and dropped it.

    Runs where TVM cannot be imported (a machine without the extra), in its own process.
    """
    code = (
        "import sys\n"
        "sys.modules['tvm'] = None  # as if the tvm extra were not installed\n"
        "from edgec.cli import main\n"
        "main(['targets'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tvm (not usable)" in done.stdout
    assert "tvm is not usable here: Apache TVM is not installed: pip install 'edgec[tvm]'" in (
        done.stdout
    )


def test_long_messages_stay_on_one_line_without_a_terminal(tmp_path):
    """Surprise 12: messages were hard-wrapped at 80 columns in logs and pipes."""
    deep = tmp_path.joinpath(*[f"directory-number-{i}" for i in range(8)])
    missing = deep / "a-model-that-is-not-there.onnx"
    done = edgec_process(["-m", "edgec", "compile", str(missing), "-t", "host"], cwd=tmp_path)
    assert done.returncode == 2
    expected = f"error: Model file {missing} does not exist."
    assert len(expected) > 160
    assert done.stderr.strip().splitlines()[-1] == expected


def test_progress_lines_stay_on_one_line_without_a_terminal(tmp_path, teacher_path):
    deep = tmp_path.joinpath(*[f"directory-number-{i}" for i in range(8)])
    deep.mkdir(parents=True)
    model = deep / "teacher.onnx"
    model.write_bytes(Path(teacher_path).read_bytes())
    done = edgec_process(
        ["-m", "edgec", "compile", str(model), "-t", "host", "-o", "b", "--measure-seconds", "0.2"],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(line.startswith(f"✓ Loading {model} (") for line in lines), lines
