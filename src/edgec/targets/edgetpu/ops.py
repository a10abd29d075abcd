"""The Edge TPU's documented supported operations, and how many of a ``.tflite``'s ops map.

Source: Coral, "TensorFlow models on the Edge TPU", section "Supported operations"
(https://coral.ai/docs/edgetpu/models-intro/#supported-operations). The Edge TPU runs only
tensors that are 8-bit quantized; ``edgetpu_compiler`` maps the graph onto the TPU up to the
first op it cannot run, and everything from there on runs on the CPU. An op *maps* here when
its TFLite builtin is in the documented table and all its tensors are integer; the page's
per-op limits (fused activations, x/y-only padding and means, 3 innermost dimensions) are
left to the compiler itself.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The documented table, as TFLite builtin operator names (the page's names in comments).
EDGETPU_SUPPORTED_OPS: frozenset[str] = frozenset(
    {
        "ADD",  # Add
        "AVERAGE_POOL_2D",  # AveragePool2d
        "CONCATENATION",  # Concatenation
        "CONV_2D",  # Conv2d
        "DEPTHWISE_CONV_2D",  # DepthwiseConv2d
        "EXPAND_DIMS",  # ExpandDims
        "FULLY_CONNECTED",  # FullyConnected
        "L2_NORMALIZATION",  # L2Normalization
        "LOGISTIC",  # Logistic
        "LSTM",  # LSTM
        "MAXIMUM",  # Maximum
        "MAX_POOL_2D",  # MaxPool2d
        "MEAN",  # Mean
        "MINIMUM",  # Minimum
        "MUL",  # Mul
        "PACK",  # Pack
        "PAD",  # Pad
        "PRELU",  # PReLU
        "QUANTIZE",  # Quantize
        "REDUCE_MAX",  # ReduceMax
        "REDUCE_MIN",  # ReduceMin
        "RELU",  # ReLU
        "RELU6",  # ReLU6
        "RELU_N1_TO_1",  # ReLUN1To1
        "RESHAPE",  # Reshape
        "RESIZE_BILINEAR",  # ResizeBilinear
        "RESIZE_NEAREST_NEIGHBOR",  # ResizeNearestNeighbor
        "RSQRT",  # Rsqrt
        "SLICE",  # Slice
        "SOFTMAX",  # Softmax
        "SPACE_TO_DEPTH",  # SpaceToDepth
        "SPLIT",  # Split
        "SQUARED_DIFFERENCE",  # Squared-difference
        "SQUEEZE",  # Squeeze
        "STRIDED_SLICE",  # StridedSlice
        "SUB",  # Sub
        "SUM",  # Sum
        "TANH",  # Tanh
        "TRANSPOSE",  # Transpose
        "TRANSPOSE_CONV",  # TransposeConv
    }
)
SOURCE = "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"
_INTEGER = frozenset({"INT8", "UINT8", "INT32"})


@dataclass(frozen=True)
class OpCheck:
    """How a ``.tflite``'s ops map onto the Edge TPU.

    Attributes:
        ops_supported: Ops whose builtin is documented and whose tensors are all integer.
        ops_total: Every op.
        first_unsupported: The first op that does not map (from there on the CPU runs the
            graph), or ``None``.
        unsupported: Each op type that does not map, with why.
    """

    ops_supported: int
    ops_total: int
    first_unsupported: str | None
    unsupported: dict[str, str]

    def to_json(self) -> dict:
        """The manifest form."""
        return {
            "ops_supported": self.ops_supported,
            "ops_total": self.ops_total,
            "first_unsupported": self.first_unsupported,
            "unsupported": dict(sorted(self.unsupported.items())),
            "supported_ops_source": SOURCE,
        }


def check_ops(ops: list[tuple[str, list[str]]]) -> OpCheck:
    """Check ``(builtin name, [tensor types])`` pairs, in graph order, against the list."""
    supported, first, unsupported = 0, None, {}
    for name, types in ops:
        if name not in EDGETPU_SUPPORTED_OPS:
            why = "not in the Edge TPU's supported operations"
        elif not set(types) <= _INTEGER:
            why = "has float tensors (the Edge TPU runs 8-bit quantized tensors only)"
        else:
            supported += 1
            continue
        unsupported.setdefault(name, why)
        first = first or name
    return OpCheck(supported, len(ops), first, unsupported)


def tflite_ops(data: bytes) -> list[tuple[str, list[str]]]:
    """``(builtin name, [types of its non-constant tensors])`` for each op of a ``.tflite``."""
    from edgec.targets.litert.flatbuffer import schema

    s = schema()
    model = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    sub = model.subgraphs[0]
    found = []
    for op in sub.operators:
        tensors = [sub.tensors[i] for i in [*op.inputs, *op.outputs] if i >= 0]
        found.append((names[codes[op.opcodeIndex]], [types[t.type] for t in tensors]))
    return found
