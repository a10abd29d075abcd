"""Loading: corrupt, truncated, invalid and dynamic models are refused with one sentence;
non-tensor outputs are dropped with a note; inputs the runtime cannot carry are refused."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from edgec.compiler import compile_model
from edgec.compiler.loading import load_model
from edgec.config import CompileConfig, parse_input_shape, parse_input_shapes
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


ORT_DATASETS = Path(onnxruntime.__file__).parent / "datasets"
ONNX_TEST_DATA = Path(onnx.__file__).parent / "backend/test/data"


def _single_node_model(tmp_path, input_type, output_type, op="Identity", **attrs) -> Path:
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_value_info("x", input_type)],
        [helper.make_value_info("y", output_type)],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_zipmap_output_is_dropped_with_a_note_and_the_tensor_output_kept():
    """Surprise 7: scikit-learn's classifier with a ZipMap output was exit 3 (onnx_ir)."""
    loaded = load_model(ORT_DATASETS / "logreg_iris.onnx")
    assert [o.name for o in loaded.outputs] == ["label"]
    assert [n.op_type for n in loaded.proto.graph.node] == ["LinearClassifier"]
    assert loaded.notes == (
        "output 'probabilities' of type seq(map(int64,tensor(float))) dropped: only tensors "
        "flow between stages",
    )


def test_zipmap_model_compiles_for_the_host(tmp_path):
    out = tmp_path / "iris"
    config = CompileConfig(
        model=ORT_DATASETS / "logreg_iris.onnx",
        target="host",
        output=out,
        students="none",
        precision="fp32",
        measure_seconds=0.2,
    )
    result = compile_model(config)
    assert [o["name"] for o in result.manifest["outputs"]] == ["label"]


def test_a_model_with_no_tensor_output_names_the_type(tmp_path):
    tensor = helper.make_tensor_type_proto(TensorProto.FLOAT, [1, 3])
    path = _single_node_model(
        tmp_path, tensor, helper.make_sequence_type_proto(tensor), op="SequenceConstruct"
    )
    with pytest.raises(BadInputError, match=r"No output of m.onnx is a numeric tensor \('y' seq"):
        load_model(path)


@pytest.mark.parametrize(
    ("elem", "shown"),
    [(TensorProto.STRING, "is of type tensor(string)"), (TensorProto.DOUBLE, "is float64")],
)
def test_inputs_the_runtime_cannot_carry_are_refused_by_type(tmp_path, elem, shown):
    tensor = helper.make_tensor_type_proto(elem, [1, 3])
    with pytest.raises(BadInputError, match=rf"Input 'x' of m.onnx {re.escape(shown)}"):
        load_model(_single_node_model(tmp_path, tensor, tensor))


def test_training_operators_are_refused():
    """onnx's Gradient test model: valid ONNX, but a training graph (was exit 3)."""
    with pytest.raises(BadInputError, match=r"training operators \(Gradient from ai.onnx"):
        load_model(ONNX_TEST_DATA / "simple/test_gradient_of_add/model.onnx")


def test_input_shape_with_commas_names_the_separator():
    """Surprise 8: commas were taken as separators without a word."""
    with pytest.raises(
        BadInputError, match=r"dimensions separated by .x., e\.g\. input=1x3x224x224"
    ):
        parse_input_shape("x=1,1,8,8")


def _relu_model(opset: int, ir_version: int, weight_as_input: bool = True) -> onnx.ModelProto:
    """x + W then Relu, with W an initializer (listed as a graph input or not)."""
    weight = helper.make_tensor("W", TensorProto.FLOAT, [1, 4], [0.5, -1.0, 2.0, 0.0])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    if weight_as_input:
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [1, 4]))
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
        "g",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def test_an_opset_onnx_runtime_cannot_run_is_one_sentence_naming_the_fix(tmp_path):
    """Opset 6 (old Caffe2/PyTorch exports): ONNX Runtime has no kernels for it, which used to
    surface as ORT's raw NOT_IMPLEMENTED text; now it is one sentence saying to re-export."""
    path = tmp_path / "old.onnx"
    onnx.save(_relu_model(6, 3), path)
    with pytest.raises(BadInputError, match=r"opset 6; ONNX Runtime runs opset 7 and newer"):
        load_model(path)


def test_ir3_model_with_an_initializer_not_listed_as_input_loads(tmp_path):
    """IR 3 wanted every initializer listed as a graph input and the checker refused one that
    was not (onnxruntime's own datasets/mul_1.onnx); IR 4 dropped the rule, so it loads."""
    path = tmp_path / "ir3.onnx"
    onnx.save(_relu_model(7, 3, weight_as_input=False), path)
    loaded = load_model(path)
    assert [i.name for i in loaded.inputs] == ["x"]
