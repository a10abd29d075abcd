"""The ONNX ops TensorRT parses: a documented list, not a probe.

The rows marked ``Y`` in onnx-tensorrt's ``docs/operators.md`` support matrix for TensorRT 8.4
(the Jetson Nano's JetPack 4.6 ships 8.2; its list is the same for these ops). That page lists
the tensor types TensorRT 8.4 takes: FP32, FP16, INT8, INT32, BOOL (and INT64/DOUBLE cast
down) — **no UINT8**, so a node touching a uint8 tensor (the ``Cast`` of a uint8 camera frame)
counts as unsupported. Only the default ONNX domain is parsed.
"""

from __future__ import annotations

SOURCE = "onnx/onnx-tensorrt docs/operators.md, TensorRT 8.4 support matrix"


def _ops(text: str) -> frozenset[str]:
    """Op names from a whitespace-separated block."""
    return frozenset(text.split())


TENSORRT_OPS = _ops(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
    DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
    Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
    Greater GreaterOrEqual GRU HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN
    LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
    MaxPool Mean Min Mul Neg NonMaxSuppression Not Or Pad ParametricSoftplus Pow PRelu
    QuantizeLinear RandomUniform RandomUniformLike Range ReduceL1 ReduceL2 ReduceLogSum
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
    Reshape Resize ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND
    Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split
    Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where
    Xor
    """
)

# ONNX TensorProto element types TensorRT 8.4 does not take (see the module docstring).
_BAD_TYPES = frozenset({"uint8", "uint16", "uint32", "uint64", "string", "complex64"})


def supports(op_type: str, domain: str = "", dtypes: tuple[str, ...] = ()) -> bool:
    """Whether TensorRT parses ``op_type`` of ``domain`` with tensors of these ``dtypes``."""
    standard = domain in ("", "ai.onnx")
    return standard and op_type in TENSORRT_OPS and not (set(dtypes) & _BAD_TYPES)
