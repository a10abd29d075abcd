"""Nothing path-dependent enters a bundle: the same model and data read from different
directories, by relative or absolute path, give byte-identical manifests (surprise 6)."""

from __future__ import annotations

import json
import shutil

import numpy as np

from edgec.compiler import compile_model
from edgec.config import CompileConfig
from edgec.data import digits_arrays


def _inputs_in(folder, teacher_path):
    folder.mkdir(parents=True)
    shutil.copy(teacher_path, folder / "teacher.onnx")
    x, y = digits_arrays()
    np.savez(folder / "f64.npz", x=x.astype(np.float64), y=y)  # float64, as users save it


def _compile(model, data, output):
    config = CompileConfig(
        model=model,
        target="raspberry-pi-4",
        output=output,
        data=data,
        students="none",
        precision="fp32",
    )
    return compile_model(config).manifest


def test_relative_and_absolute_paths_give_the_same_manifest(tmp_path, teacher_path, monkeypatch):
    first, second = tmp_path / "here" / "deep", tmp_path / "elsewhere"
    _inputs_in(first, teacher_path)
    _inputs_in(second, teacher_path)
    monkeypatch.chdir(tmp_path / "here")
    relative = _compile(
        first.relative_to(tmp_path / "here") / "teacher.onnx", "deep/f64.npz", tmp_path / "a"
    )
    absolute = _compile(second / "teacher.onnx", str(second / "f64.npz"), tmp_path / "b")
    assert relative["data"]["name"] == "f64.npz"
    assert relative["source"]["path"] == "teacher.onnx"
    text = (tmp_path / "a" / "manifest.json").read_text()
    assert text == (tmp_path / "b" / "manifest.json").read_text()
    assert str(tmp_path) not in text
    assert json.loads(text)["data"]["sha256"] == absolute["data"]["sha256"]
