"""Which backends support an ONNX op: documented lists, not probes.

* ``onnxruntime``: every op of the default ONNX domain (``ai.onnx``), the ONNX-ML domain and
  Microsoft's contrib domain (``com.microsoft``) — ONNX Runtime implements the whole standard
  on its CPU execution provider.
* ``tvm``: the keys of ``_get_convert_map()`` in Apache TVM's Relax ONNX importer
  (``tvm/relax/frontend/onnx/onnx_frontend.py`` of ``apache-tvm==0.27.0.post1``, the version
  the ``tvm`` extra pins), plus ``Constant`` and ``If`` which the importer handles directly; the
  importer refuses a model with any other op before converting anything. Notably absent:
  ``LpNormalization``, ``Det``, ``Multinomial``, ``ReverseSequence``, ``Loop``, ``Scan``.
* ``tensorrt``: the rows marked ``Y`` in onnx-tensorrt's ``docs/operators.md`` support matrix
  for TensorRT 8.4 (the Jetson Nano's JetPack 4.6 ships 8.2; its list is the same for these
  ops). That page lists the tensor types TensorRT 8.4 takes: FP32, FP16, INT8, INT32, BOOL
  (and INT64/DOUBLE cast down) — **no UINT8**, so a node touching a uint8 tensor (the ``Cast``
  of a uint8 camera frame) counts as unsupported there.

A ``False`` here means "not in the documented list", which is what a build would hit first.
"""

from __future__ import annotations

BACKENDS: tuple[str, ...] = ("onnxruntime", "tvm", "tensorrt")

_ORT_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def _ops(text: str) -> frozenset[str]:
    """Op names from a whitespace-separated block."""
    return frozenset(text.split())


TVM_OPS = _ops(
    """
    Optional OptionalHasElement OptionalGetElement Add Sub Mul Div Mod Less LessOrEqual Greater
    GreaterOrEqual Equal BitwiseAnd BitwiseOr BitwiseXor BitShift And Or Xor Not BitwiseNot Log
    Exp Acos Acosh Asin Asinh Atan Atanh Cos Cosh Sin Sinh Tan Tanh Neg Abs Reciprocal Floor
    Ceil Round IsInf IsNaN Sqrt Relu Selu Mish Trilu PRelu LeakyRelu ThresholdedRelu Elu Gelu
    FastGelu BiasGelu HardSigmoid HardSwish Sign Softplus Softsign Shrink Erf Sum Min Max Mean
    Cast Gemm MatMul MatMulInteger MatMulInteger16 Reshape Sigmoid Softmax LogSoftmax Hardmax
    Transpose Unsqueeze Where Concat Clip Shape Pow CumSum Squeeze Constant Gather
    GatherElements GatherND Scatter ScatterElements ScatterND Compress Size EyeLike
    BatchNormalization LayerNormalization RMSNormalization SkipLayerNormalization
    EmbedLayerNormalization InstanceNormalization MeanVarianceNormalization LRN ReduceMax
    ReduceMin ReduceSum ReduceMean ReduceProd ReduceLogSumExp ReduceLogSum ReduceSumSquare
    ReduceL1 ReduceL2 ArgMax ArgMin TopK Expand ConstantOfShape Slice Attention Pad Split Tile
    AveragePool MaxPool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool MaxUnpool Conv
    ConvTranspose Flatten Identity Resize Einsum Range OneHot Unique NonZero MaxRoiPool
    RoiAlign NonMaxSuppression AllClassNMS GridSample AffineGrid Upsample DepthToSpace
    SpaceToDepth SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength
    ConcatFromSequence SplitToSequence SequenceAt QuantizeLinear DequantizeLinear
    DynamicQuantizeLinear CastLike Dropout GroupNormalization If
    """
)

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
_TENSORRT_BAD_TYPES = frozenset({"uint8", "uint16", "uint32", "uint64", "string", "complex64"})

SOURCES = {
    "onnxruntime": "every standard ONNX op (ai.onnx, ai.onnx.ml) and com.microsoft contrib ops",
    "tvm": "the ONNX importer's _get_convert_map() in apache-tvm 0.27.0.post1",
    "tensorrt": "onnx/onnx-tensorrt docs/operators.md, TensorRT 8.4 support matrix",
}


def supports(backend: str, op_type: str, domain: str = "", dtypes: tuple[str, ...] = ()) -> bool:
    """Whether ``backend``'s documented list has ``op_type`` (with these tensor ``dtypes``).

    Args:
        backend: ``onnxruntime``, ``tvm`` or ``tensorrt``.
        op_type: The ONNX op type.
        domain: The op's domain (``""`` is the default ONNX domain).
        dtypes: NumPy-style names of the node's input and output element types, when known.
    """
    standard = domain in ("", "ai.onnx")
    if backend == "onnxruntime":
        return domain in _ORT_DOMAINS
    if backend == "tvm":
        return standard and op_type in TVM_OPS
    if backend == "tensorrt":
        return standard and op_type in TENSORRT_OPS and not (set(dtypes) & _TENSORRT_BAD_TYPES)
    raise KeyError(f"unknown backend '{backend}'; known: {', '.join(BACKENDS)}")
