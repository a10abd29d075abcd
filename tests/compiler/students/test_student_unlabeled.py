"""``--unlabeled``: field captures, directories of arrays and .npz files load as inputs for
distillation only; bad, empty or mismatched unlabelled data is refused with one sentence (exit 2)
before anything is trained or written; good data joins the students' distillation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgec.cli import main
from edgec.data import digits_arrays
from edgec.errors import BadInputError
from edgec.runtime.capture import CaptureSpool
from edgec.unlabeled import load_unlabeled

SHAPE = (1, 8, 8)


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


def test_an_npz_with_x_loads_and_its_labels_are_ignored(tmp_path):
    x = _frames(7)
    np.savez(tmp_path / "field.npz", x=x, y=np.arange(7))
    np.testing.assert_array_equal(load_unlabeled(tmp_path / "field.npz", SHAPE), x)


def test_a_capture_directory_loads_its_kept_frames_oldest_first(tmp_path):
    """What `edgec run --capture DIR` spools (batch-1 frames with sidecars) loads as is."""
    spool = CaptureSpool(
        tmp_path / "cap", {"name": "x", "shape": [1, *SHAPE], "dtype": "float32"}, None
    )
    x = _frames(3)
    for frame in x:
        spool.add(frame[None], {"reason": "overruled"})
    np.testing.assert_array_equal(load_unlabeled(tmp_path / "cap", SHAPE), x)


def test_a_directory_of_arrays_loads_single_inputs_and_batches_in_name_order(tmp_path):
    x = _frames(6)
    np.save(tmp_path / "a.npy", x[0])  # one input, no batch dimension
    np.save(tmp_path / "b.npy", x[1:4])  # a batch
    np.savez(tmp_path / "c.npz", x=x[4:])
    (tmp_path / "notes.txt").write_text("ignored")
    np.testing.assert_array_equal(load_unlabeled(tmp_path, SHAPE), x)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("missing", "does not exist"),
        ("empty", "holds no inputs"),
        ("shape", "has inputs of shape [1, 4, 8] but the teacher takes [1, 8, 8]"),
        ("nan", "NaN"),
        ("no x", "has no array 'x'"),
        ("empty dir", "no captures and no .npy/.npz files"),
        ("text", "not a directory or an .npz"),
        ("strings", "must be numeric"),
    ],
)
def test_bad_unlabelled_data_is_one_sentence(tmp_path, case, fragment):
    path = tmp_path / "u.npz"
    if case == "empty":
        np.savez(path, x=np.zeros((0, *SHAPE), np.float32))
    elif case == "shape":
        np.savez(path, x=np.zeros((5, 1, 4, 8), np.float32))
    elif case == "nan":
        x = _frames(4)
        x[2, 0, 1, 1] = np.nan
        np.savez(path, x=x)
    elif case == "no x":
        np.savez(path, inputs=_frames(2))
    elif case == "empty dir":
        path = tmp_path / "empty"
        path.mkdir()
    elif case == "text":
        path = tmp_path / "u.csv"
        path.write_text("1,2,3")
    elif case == "strings":
        np.savez(path, x=np.array([["a"] * 8] * 8))
    with pytest.raises(BadInputError, match=r"^--unlabeled") as caught:
        load_unlabeled(path, SHAPE)
    message = str(caught.value)
    assert fragment in message and message.endswith(".") and "\n" not in message


def test_the_cli_refuses_mismatched_unlabelled_data_before_training(tmp_path, teacher_path):
    bad = tmp_path / "u.npz"
    np.savez(bad, x=np.zeros((5, 1, 4, 8), np.float32))
    out = tmp_path / "b"
    args = ["compile", str(teacher_path), "-t", "raspberry-pi-4", "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--data", "digits", "--unlabeled", str(bad)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Distilling" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: --unlabeled") and "takes [1, 8, 8]" in lines[-1]
    assert not out.exists()
    alone = CliRunner().invoke(main, [*args, "--unlabeled", str(bad)])
    assert alone.exit_code == 2 and "pass --data too" in alone.stderr
    assert not out.exists()


def test_unlabelled_inputs_join_the_students_distillation(tmp_path, teacher_path):
    """The manifest counts them; the student trained on the labelled and unlabelled inputs;
    accuracy is still judged with --data's labels; its training time is printed, not
    recorded (bundles stay reproducible)."""
    x, _ = digits_arrays()
    np.savez(tmp_path / "field.npz", x=np.clip(x[:200] + 0.1, 0, 1))
    out = tmp_path / "b"
    result = CliRunner().invoke(
        main,
        [
            "compile", str(teacher_path), "-t", "raspberry-pi-4", "-o", str(out),
            "--data", "digits", "--unlabeled", str(tmp_path / "field.npz"),
            "--students", "0.3", "--distill-epochs", "1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "'tiny': trained in " in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    student = manifest["stages"][0]
    assert manifest["students"]["unlabeled"] == {"inputs": 200}
    # Trained with and without them; the kept one is recorded with both holdout scores.
    decision = student["distillation"]["unlabeled"]
    assert decision["inputs"] == 200 and set(decision) >= {"holdout_with", "holdout_without"}
    extra = 200 if decision["kept"] else 0
    assert student["distillation"]["samples"] == manifest["data"]["train"] + extra
    assert student["accuracy"] is not None
    assert manifest["students"]["teacher_views"]["batched"] is True
    assert "seconds" not in json.dumps(manifest["students"]) + json.dumps(student)
