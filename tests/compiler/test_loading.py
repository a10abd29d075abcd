"""Loading: corrupt, truncated, invalid and dynamic models are refused with one sentence."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from edgec.compiler.loading import load_model
from edgec.config import parse_input_shape, parse_input_shapes
from edgec.errors import BadInputError


def test_teacher_loads_with_static_shapes(teacher_path):
    loaded = load_model(teacher_path)
    assert [i.name for i in loaded.inputs] == ["x"]
    assert loaded.inputs[0].shape == (1, 1, 8, 8)
    assert loaded.inputs[0].layout == "NCHW"
    assert loaded.outputs[0].shape == (1, 10)
    assert loaded.opset == 17


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        load_model(tmp_path / "nope.onnx")


def test_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 20)
    with pytest.raises(BadInputError, match="not a valid ONNX model"):
        load_model(path)


def test_truncated_onnx(tmp_path, teacher_path):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(teacher_path.read_bytes()[:5000])
    with pytest.raises(BadInputError, match="not a valid ONNX model"):
        load_model(path)


def test_model_failing_the_checker(tmp_path, tiny_model_path):
    model = onnx.load(tiny_model_path)
    model.graph.node[1].op_type = "NoSuchOp"
    path = tmp_path / "bad_op.onnx"
    onnx.save(model, path)
    with pytest.raises(BadInputError, match="fails the ONNX checker"):
        load_model(path)


def test_dynamic_shape_without_input_shape_names_the_input_and_the_flag(dynamic_model_path):
    with pytest.raises(BadInputError, match=r"Input 'input'.*--input-shape input=1x3x1x16"):
        load_model(dynamic_model_path)


def test_input_shape_fixes_dynamic_dimensions(dynamic_model_path):
    loaded = load_model(dynamic_model_path, {"input": (2, 3, 32, 16)})
    assert loaded.inputs[0].shape == (2, 3, 32, 16)
    assert loaded.outputs[0].shape == (2, 4)


def test_input_shape_for_unknown_input_lists_the_inputs(dynamic_model_path):
    with pytest.raises(BadInputError, match=r"'image'.*inputs: input"):
        load_model(dynamic_model_path, {"image": (1, 3, 16, 16)})


def test_input_shape_with_wrong_rank(dynamic_model_path):
    with pytest.raises(BadInputError, match="2 dimensions but the model's input has 4"):
        load_model(dynamic_model_path, {"input": (1, 3)})


def test_input_shape_conflicting_with_a_fixed_dimension(dynamic_model_path):
    with pytest.raises(BadInputError, match="conflicts"):
        load_model(dynamic_model_path, {"input": (1, 4, 16, 16)})


def test_initializers_listed_as_inputs_are_not_real_inputs(tmp_path, tiny_model_path):
    model = onnx.load(tiny_model_path)
    w = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)))
    path = tmp_path / "ir3.onnx"
    onnx.save(model, path)
    assert [i.name for i in load_model(path).inputs] == ["input"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("input=1x3x224x224", ("input", (1, 3, 224, 224))), ("x = 1 x 1x8x8", ("x", (1, 1, 8, 8)))],
)
def test_parse_input_shape(spec, expected):
    assert parse_input_shape(spec) == expected


@pytest.mark.parametrize("spec", ["input", "input=1xax3", "input=0x3", "=1x2", "x=1,1,8,8"])
def test_parse_input_shape_refuses_malformed(spec):
    with pytest.raises(BadInputError):
        parse_input_shape(spec)


def test_parse_input_shapes_refuses_duplicates():
    with pytest.raises(BadInputError, match="twice"):
        parse_input_shapes(["a=1x2", "a=1x3"])
