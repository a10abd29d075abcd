"""The CLI end to end: the README's commands, --json, and every bad input as exit 2 with one
sentence, no traceback and no partial bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from edgec.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_bad_input(result, fragment: str, out_dir: Path | None = None):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert fragment in result.output
    # Progress lines may precede it; the error itself is one line, and the last.
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and lines[-1].endswith("."), lines
    assert sum(line.startswith("error") for line in lines) == 1, lines
    if out_dir is not None:
        assert not out_dir.exists()
        assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}")]


def test_compile_then_check_in_and_over_budget(tmp_path, teacher_path):
    out = tmp_path / "rpi4"
    result = run(
        "compile",
        str(teacher_path),
        "--target",
        "raspberry-pi-4",
        "-o",
        str(out),
        "--budget-ms",
        "5",
    )
    assert result.exit_code == 0, result.output
    assert "within the 5 ms budget" in result.output
    assert run("check", str(out), "--budget-ms", "5", "--percentile", "99").exit_code == 0
    over = run("check", str(out), "--budget-ms", "0.001")
    assert over.exit_code == 1 and "exceeds" in over.output


def test_compile_over_budget_exits_1_and_keeps_the_bundle(tmp_path, teacher_path):
    out = tmp_path / "tight"
    result = run(
        "compile",
        str(teacher_path),
        "--target",
        "jetson-nano",
        "-o",
        str(out),
        "--budget-ms",
        "0.0001",
    )
    assert result.exit_code == 1
    assert (out / "manifest.json").is_file()


def test_compile_json_for_host(tmp_path, tiny_model_path):
    out = tmp_path / "host"
    result = run(
        "compile",
        str(tiny_model_path),
        "--target",
        "host",
        "-o",
        str(out),
        "--json",
        "--measure-seconds",
        "0.5",
        "--archive",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["stages"][0]["latency_ms"]["source"] == "measured-host"
    assert Path(data["archive"]).is_file()


def test_targets_list_and_show():
    listing = run("targets", "--json")
    assert listing.exit_code == 0
    names = {t["name"]: t for t in json.loads(listing.stdout)}
    assert names["raspberry-pi-4"]["backends"]["onnxruntime"]["usable"] is True
    assert names["jetson-nano"]["backends"]["tensorrt"]["usable"] is False
    assert names["jetson-nano"]["backends"]["tensorrt"]["why"]
    shown = run("targets", "show", "jetson-nano")
    assert shown.exit_code == 0 and "sm_53" in shown.output


def test_python_dash_m_edgec_works():
    result = subprocess.run(
        [sys.executable, "-m", "edgec", "targets", "show", "host", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout)["kind"] == "host"


# --------------------------------------------------------------------------- bad input
def test_missing_model(tmp_path):
    out = tmp_path / "b"
    result = run("compile", str(tmp_path / "missing.onnx"), "-t", "host", "-o", str(out))
    assert_bad_input(result, "does not exist", out)


def test_not_onnx(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    out = tmp_path / "b"
    assert_bad_input(run("compile", str(path), "-t", "host", "-o", str(out)), "not a valid", out)


def test_truncated_onnx(tmp_path, teacher_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(teacher_path.read_bytes()[: teacher_path.stat().st_size // 2])
    out = tmp_path / "b"
    assert_bad_input(run("compile", str(path), "-t", "host", "-o", str(out)), "not a valid", out)


def test_model_failing_the_checker(tmp_path, tiny_model_path):
    model = onnx.load(tiny_model_path)
    model.graph.node[0].input[0] = "undefined_tensor"
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    out = tmp_path / "b"
    result = run("compile", str(path), "-t", "host", "-o", str(out))
    assert_bad_input(result, "fails the ONNX checker", out)


def test_dynamic_shape_without_input_shape(tmp_path, dynamic_model_path):
    out = tmp_path / "b"
    result = run("compile", str(dynamic_model_path), "-t", "host", "-o", str(out))
    assert_bad_input(result, "--input-shape input=", out)


def test_dynamic_shape_with_input_shape_compiles(tmp_path, dynamic_model_path):
    out = tmp_path / "b"
    result = run(
        "compile",
        str(dynamic_model_path),
        "-t",
        "raspberry-pi-5",
        "-o",
        str(out),
        "--input-shape",
        "input=1x3x16x16",
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 3, 16, 16]


def test_unknown_target(tmp_path, teacher_path):
    out = tmp_path / "b"
    result = run("compile", str(teacher_path), "-t", "rasberry-pi-4", "-o", str(out))
    assert_bad_input(result, "Did you mean 'raspberry-pi-4'", out)


def test_malformed_descriptor(tmp_path, teacher_path):
    desc = tmp_path / "board.yaml"
    desc.write_text("name: board\nkind: device\ncpu: {cores: many}\n")
    out = tmp_path / "b"
    result = run("compile", str(teacher_path), "-t", str(desc), "-o", str(out))
    assert_bad_input(result, "board.yaml: field", out)


def test_unwritable_output_directory(tmp_path, teacher_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    out = blocker / "bundle"
    result = run("compile", str(teacher_path), "-t", "host", "-o", str(out))
    assert_bad_input(result, "cannot be created")
    assert blocker.read_text() == ""


def test_existing_output_without_force(tmp_path, teacher_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = run("compile", str(teacher_path), "-t", "raspberry-pi-4", "-o", str(out))
    assert_bad_input(result, "--force")
    assert (out / "keep.txt").read_text() == "precious"
    forced = run("compile", str(teacher_path), "-t", "raspberry-pi-4", "-o", str(out), "--force")
    assert forced.exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()


def test_data_not_matching_the_model(tmp_path, tiny_model_path):
    out = tmp_path / "b"
    result = run("compile", str(tiny_model_path), "-t", "host", "-o", str(out), "--data", "digits")
    assert_bad_input(result, "samples of shape [1, 8, 8]", out)


def test_check_on_a_directory_that_is_not_a_bundle(tmp_path):
    result = run("check", str(tmp_path), "--budget-ms", "5")
    assert_bad_input(result, "not an edgec bundle")


@pytest.mark.parametrize("flag", [["--budget-ms", "-1"], ["--input-shape", "x=axb"]])
def test_bad_flags(tmp_path, teacher_path, flag):
    out = tmp_path / "b"
    result = run("compile", str(teacher_path), "-t", "host", "-o", str(out), *flag)
    assert_bad_input(result, "", out)


def test_check_without_budget_uses_the_manifests_and_says_so(tmp_path, teacher_path):
    """Surprise 4: the budget a bundle was compiled for gates it, and the output says so."""
    out = tmp_path / "b"
    compiled = run(
        "compile", str(teacher_path), "-t", "raspberry-pi-4", "-o", str(out), "--budget-ms", "5",
        "--students", "none", "--precision", "fp32",
    )  # fmt: skip
    assert compiled.exit_code == 0, compiled.output
    result = run("check", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "budget 5 ms at p99 from the bundle's manifest"
    assert "within the 5 ms budget" in result.output


def test_check_without_any_budget_is_one_sentence(tmp_path, tiny_model_path):
    out = tmp_path / "b"
    compiled = run(
        "compile", str(tiny_model_path), "-t", "host", "-o", str(out), "--measure-seconds", "0.2",
    )  # fmt: skip
    assert compiled.exit_code == 0, compiled.output
    assert_bad_input(run("check", str(out)), "give one with --budget-ms")
