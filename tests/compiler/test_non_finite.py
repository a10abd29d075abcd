"""Models with NaN or Inf: refused at load (weights) or at build (outputs), never shipped.

A teacher with one -Inf weight used to compile (exit 0), pass `edgec check`, and its bundle
answered ``"confidence": NaN`` for every frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgec.cli import main

REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "examples" / "digits" / "teacher.onnx"


def _compile(*args) -> object:
    return CliRunner().invoke(main, ["compile", *map(str, args)], catch_exceptions=False)


def assert_one_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr  # progress lines may precede it
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize("value", [-np.inf, np.nan])
def test_a_teacher_with_one_non_finite_weight_is_bad_input_naming_it(tmp_path, value):
    model = onnx.load(TEACHER)
    init = max(model.graph.initializer, key=lambda i: int(np.prod(i.dims)))
    weights = numpy_helper.to_array(init).copy()
    weights.flat[3] = value
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    onnx.save(model, tmp_path / "bad.onnx")
    out = tmp_path / "out"
    result = _compile(tmp_path / "bad.onnx", "--target", "host", "--students", "none", "-o", out)
    assert_one_error(result, "non-finite weights", repr(init.name))
    assert not out.exists()


def _two_op_model(path: Path, op: str, c: np.ndarray, as_constant: bool) -> Path:
    """x[1,4] -> op(x, c) -> y, with ``c`` an initializer or a Constant node."""
    nodes = [helper.make_node(op, ["x", "c"], ["y"])]
    inits = [numpy_helper.from_array(c, "c")]
    if as_constant:
        nodes.insert(0, helper.make_node("Constant", [], ["c"], value=inits.pop()))
    out_dim = c.shape[-1] if op == "MatMul" else 4
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_an_inf_weight_in_a_constant_node_is_refused_too(tmp_path):
    weights = np.ones((4, 3), np.float32)
    weights[1, 2] = np.inf
    path = _two_op_model(tmp_path / "const.onnx", "MatMul", weights, as_constant=True)
    result = _compile(path, "--target", "host", "--students", "none", "-o", tmp_path / "out")
    assert_one_error(result, "non-finite weights", "'c'")


def test_a_nan_anywhere_is_refused_but_an_intended_infinity_is_not(tmp_path):
    """NaN is never meant; -inf added as a mask (or Clip's max=inf) is, and must compile."""
    nan = _two_op_model(tmp_path / "nan.onnx", "Add", np.array([[1, np.nan, 1, 1]], "f4"), False)
    result = _compile(nan, "--target", "host", "--students", "none", "-o", tmp_path / "a")
    assert_one_error(result, "non-finite weights", "'c'")
    mask = _two_op_model(tmp_path / "mask.onnx", "Add", np.array([[0, -np.inf, 0, 0]], "f4"), False)
    result = _compile(
        mask, "--target", "host", "--students", "none", "--precision", "fp32", "-o", tmp_path / "b"
    )
    assert result.exit_code == 0, result.output


def test_a_stage_whose_validation_outputs_overflow_fails_the_build(tmp_path):
    """Finite weights (1e30) whose product overflows float32 on every sample: the build
    fails with one sentence instead of shipping a bundle that answers Inf/NaN."""
    w = numpy_helper.from_array(np.full((4, 3), 1e30, np.float32), "w")
    s = numpy_helper.from_array(np.full((1, 3), 1e30, np.float32), "s")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Mul", ["h", "s"], ["y"])],
        "overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w, s],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "overflow.onnx")
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "data.npz", x=rng.random((40, 4), np.float32) + 0.5, y=rng.integers(0, 3, 40)
    )
    out = tmp_path / "out"
    result = _compile(
        tmp_path / "overflow.onnx",
        "--target",
        "host",
        "--students",
        "none",
        "--precision",
        "fp32",
        "--data",
        tmp_path / "data.npz",
        "-o",
        out,
    )
    assert_one_error(result, "NaN or infinite outputs", "teacher")
    assert not out.exists()
