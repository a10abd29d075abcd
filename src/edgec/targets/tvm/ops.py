"""The ONNX ops the tvm backend imports: a documented list, not a probe.

The keys of ``_get_convert_map()`` in Apache TVM's Relax ONNX importer
(``tvm/relax/frontend/onnx/onnx_frontend.py`` of ``apache-tvm==0.27.0.post1``, the version the
``tvm`` extra pins), plus ``Constant`` and ``If`` which the importer handles directly; the
importer refuses a model with any other op before converting anything. Notably absent:
``LpNormalization``, ``Det``, ``Multinomial``, ``ReverseSequence``, ``Loop``, ``Scan``.
Only the default ONNX domain is imported.
"""

from __future__ import annotations

SOURCE = "the ONNX importer's _get_convert_map() in apache-tvm 0.27.0.post1"


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


def supports(op_type: str, domain: str = "") -> bool:
    """Whether the importer converts ``op_type`` of ``domain``."""
    return domain in ("", "ai.onnx") and op_type in TVM_OPS
