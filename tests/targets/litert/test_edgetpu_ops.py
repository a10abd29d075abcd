"""The Edge TPU op check against Coral's documented supported-operations table
(https://coral.ai/docs/edgetpu/models-intro/#supported-operations)."""

from __future__ import annotations

import re

import pytest

from edgec.targets.edgetpu.ops import EDGETPU_SUPPORTED_OPS, check_ops

# The table's "Operation name" column as the page writes it.
DOCUMENTED = [
    "Add",
    "AveragePool2d",
    "Concatenation",
    "Conv2d",
    "DepthwiseConv2d",
    "ExpandDims",
    "FullyConnected",
    "L2Normalization",
    "Logistic",
    "LSTM",
    "Maximum",
    "MaxPool2d",
    "Mean",
    "Minimum",
    "Mul",
    "Pack",
    "Pad",
    "PReLU",
    "Quantize",
    "ReduceMax",
    "ReduceMin",
    "ReLU",
    "ReLU6",
    "ReLUN1To1",
    "Reshape",
    "ResizeBilinear",
    "ResizeNearestNeighbor",
    "Rsqrt",
    "Slice",
    "Softmax",
    "SpaceToDepth",
    "Split",
    "Squeeze",
    "StridedSlice",
    "Sub",
    "Sum",
    "Squared-difference",
    "Tanh",
    "Transpose",
    "TransposeConv",
]
# Where the page's name is not the TFLite builtin's in CamelCase.
_SPELLING = {
    "Conv2d": "CONV_2D",
    "DepthwiseConv2d": "DEPTHWISE_CONV_2D",
    "AveragePool2d": "AVERAGE_POOL_2D",
    "MaxPool2d": "MAX_POOL_2D",
    "L2Normalization": "L2_NORMALIZATION",
    "PReLU": "PRELU",
    "ReLU": "RELU",
    "ReLU6": "RELU6",
    "ReLUN1To1": "RELU_N1_TO_1",
    "LSTM": "LSTM",
    "Squared-difference": "SQUARED_DIFFERENCE",
}


def _builtin(doc_name: str) -> str:
    return _SPELLING.get(doc_name) or re.sub(r"(?<!^)(?=[A-Z])", "_", doc_name).upper()


def test_the_list_is_the_documented_table():
    """Every documented op and nothing else (HardSwish, Dequantize, Cast are not in it)."""
    assert {_builtin(n) for n in DOCUMENTED} == EDGETPU_SUPPORTED_OPS
    assert not {"HARD_SWISH", "DEQUANTIZE", "CAST", "PADV2"} & EDGETPU_SUPPORTED_OPS


@pytest.mark.parametrize("name", sorted(EDGETPU_SUPPORTED_OPS))
def test_a_documented_op_on_integer_tensors_maps(name):
    check = check_ops([(name, ["INT8", "INT8", "INT32"])])
    assert (check.ops_supported, check.ops_total, check.first_unsupported) == (1, 1, None)


def test_undocumented_or_float_ops_do_not_map_and_the_first_is_named():
    """HardSwish is not in the table; a documented op on float tensors does not run on the
    TPU either; the first op that does not map is where the CPU takes over."""
    check = check_ops(
        [
            ("QUANTIZE", ["FLOAT32", "INT8"]),
            ("CONV_2D", ["INT8", "INT8", "INT32", "INT8"]),
            ("HARD_SWISH", ["INT8", "INT8"]),
            ("CONV_2D", ["FLOAT32", "FLOAT32", "FLOAT32", "FLOAT32"]),
            ("DEQUANTIZE", ["INT8", "FLOAT32"]),
        ]
    )
    assert check.ops_total == 5
    assert check.ops_supported == 1  # the integer Conv2d; QUANTIZE reads a float tensor
    assert check.first_unsupported == "QUANTIZE"
    assert set(check.unsupported) == {"QUANTIZE", "HARD_SWISH", "CONV_2D", "DEQUANTIZE"}
    assert "float" in check.unsupported["CONV_2D"]
    assert "not in the Edge TPU" in check.unsupported["HARD_SWISH"]
