"""ONNX op -> torch translations for :mod:`edgec.compiler.students.convert`.

Weights become layers (``Conv`` -> ``nn.ConvNd``, ``ConvTranspose`` -> ``nn.ConvTransposeNd``,
``Gemm``/``MatMul`` with a constant right operand -> ``nn.Linear``, ``BatchNormalization`` ->
``nn.BatchNormNd``, ``PRelu`` -> ``nn.PReLU``); everything else is a torch function. Supported:

* layers: Conv, ConvTranspose, Gemm, MatMul, BatchNormalization, PRelu;
* activations: Relu, LeakyRelu, Sigmoid, HardSigmoid, HardSwish, Tanh, Clip, Elu, Selu, Gelu,
  Softplus, Softsign, Mish, Erf, Exp, Log, Sqrt, Neg, Abs, Reciprocal, Floor, Ceil;
* arithmetic: Add, Sub, Mul, Div, Pow, Sum, Max, Min, Mean;
* pooling and normalisation: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, LRN;
* shapes (in :mod:`~edgec.compiler.students.shape_ops`): Flatten, Reshape, Transpose, Concat,
  Split, Slice, Squeeze, Unsqueeze, Pad;
* reductions and heads (same module): ReduceMean, ReduceSum, ReduceMax, ReduceMin, Softmax,
  LogSoftmax;
* no-ops at inference: Identity, Dropout, Cast to float.

Asymmetric padding becomes an explicit ``F.pad`` before the conv or pool (an average pool that
excludes the padding divides by the pooled count of real inputs). Attributes the translation
cannot honour (``Gemm`` with ``transA``, ``ConvTranspose`` with asymmetric pads, a computed
``Reshape`` shape, ``Squeeze`` of the batch axis, ...) raise
:class:`~edgec.compiler.students.context.UnsupportedModelError` with the reason.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from functools import partial

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from edgec.compiler.students.context import ConversionContext
from edgec.compiler.students.shape_ops import (
    SHAPE_TRANSLATORS,
    as_ints,
    identity,
    onnx_pads_to_torch,
)

Translator = Callable[[ConversionContext, onnx.NodeProto], None]


# ------------------------------------------------------------------------------ helpers
def _param(array: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.array(array, dtype=np.float32)))


def _spatial_pads(ctx: ConversionContext, x: str, kernel, strides, dilations) -> list[int]:
    """ONNX ``pads`` ([begins..., ends...]) with ``auto_pad`` resolved from the static shape."""
    rank = len(kernel)
    auto_pad = ctx.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        return as_ints(ctx.attr("pads", [0] * 2 * rank))
    if auto_pad == "VALID":
        return [0] * 2 * rank
    shape = ctx.shape(x)
    if shape is None or any(d <= 0 for d in shape[-rank:]):
        ctx.unsupported(f"uses auto_pad={auto_pad} on an input of unknown spatial size")
    begins, ends = [], []
    for size, k, s, d in zip(shape[-rank:], kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _split_pads(pads: list[int]) -> tuple[list[int], list[int] | None]:
    """Symmetric pads -> (torch padding, None); otherwise (zeros, explicit F.pad order)."""
    rank = len(pads) // 2
    if pads[:rank] == pads[rank:]:
        return pads[:rank], None
    return [0] * rank, onnx_pads_to_torch(pads)


def _pre_pad(ctx: ConversionContext, x: str, torch_pads: list[int], value: float) -> str:
    padded = f"{ctx.node.output[0]}__padded"
    ctx.add_fn(partial(F.pad, pad=torch_pads, value=value), [x], [padded])
    return padded


def _operand(ctx: ConversionContext, name: str):
    """A scalar constant as a Python float; anything else as a value name."""
    const = ctx.constant(name)
    if const is not None and const.size == 1 and np.issubdtype(const.dtype, np.floating):
        return float(const.reshape(-1)[0])
    return ctx.value(name)


# ------------------------------------------------------------------------------ layers
def _conv(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    weight = ctx.require_constant(node.input[1], "weight")
    bias = ctx.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and bias is None:
        ctx.unsupported("has a computed bias; only a constant bias is supported")
    rank = weight.ndim - 2
    if rank not in (1, 2, 3):
        ctx.unsupported(f"is {rank}-D; 1-D, 2-D and 3-D convolutions are supported")
    kernel = list(weight.shape[2:])
    strides = as_ints(ctx.attr("strides", [1] * rank))
    dilations = as_ints(ctx.attr("dilations", [1] * rank))
    group = int(ctx.attr("group", 1))
    padding, explicit = _split_pads(_spatial_pads(ctx, node.input[0], kernel, strides, dilations))
    x = node.input[0] if explicit is None else _pre_pad(ctx, node.input[0], explicit, 0.0)
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[rank - 1]
    layer = cls(
        weight.shape[1] * group,
        weight.shape[0],
        kernel,
        stride=strides,
        padding=padding,
        dilation=dilations,
        groups=group,
        bias=bias is not None,
    )
    layer.weight = _param(weight)
    if bias is not None:
        layer.bias = _param(bias.reshape(-1))
    ctx.add_layer(layer, [x])


def _conv_transpose(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    weight = ctx.require_constant(node.input[1], "weight")
    bias = ctx.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    rank = weight.ndim - 2
    if rank not in (1, 2, 3):
        ctx.unsupported(f"is {rank}-D; 1-D, 2-D and 3-D transposed convolutions are supported")
    if ctx.attr("output_shape") is not None or ctx.attr("auto_pad", b"NOTSET") not in (
        b"NOTSET",
        "NOTSET",
    ):
        ctx.unsupported("sets output_shape or auto_pad; give explicit pads instead")
    pads = as_ints(ctx.attr("pads", [0] * 2 * rank))
    if pads[:rank] != pads[rank:]:
        ctx.unsupported("has asymmetric pads")
    group = int(ctx.attr("group", 1))
    cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[rank - 1]
    layer = cls(
        weight.shape[0],
        weight.shape[1] * group,
        list(weight.shape[2:]),
        stride=as_ints(ctx.attr("strides", [1] * rank)),
        padding=pads[:rank],
        output_padding=as_ints(ctx.attr("output_padding", [0] * rank)),
        groups=group,
        bias=bias is not None,
        dilation=as_ints(ctx.attr("dilations", [1] * rank)),
    )
    layer.weight = _param(weight)
    if bias is not None:
        layer.bias = _param(bias.reshape(-1))
    ctx.add_layer(layer, [node.input[0]])


def _linear(ctx: ConversionContext, x: str, weight: np.ndarray, bias: np.ndarray | None) -> None:
    """``x @ weight.T + bias`` as ``nn.Linear`` (weight ``[out, in]``)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = _param(weight)
    if bias is not None:
        layer.bias = _param(bias)
    ctx.add_layer(layer, [x])


def _gemm(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    if int(ctx.attr("transA", 0)):
        ctx.unsupported("sets transA")
    b = ctx.constant(node.input[1])
    if b is None:
        ctx.unsupported("has a computed B; only a constant weight is supported")
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    weight = (b if int(ctx.attr("transB", 0)) else b.T) * alpha
    c_name = node.input[2] if len(node.input) > 2 else ""
    c = ctx.constant(c_name)
    if c_name and c is None:
        ctx.unsupported("has a computed C; only a constant bias is supported")
    bias = None
    if c is not None:
        if c.size not in (1, weight.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
            ctx.unsupported(f"has a bias of shape {list(c.shape)}; a per-output bias is needed")
        bias = np.broadcast_to(c.reshape(-1) * beta, (weight.shape[0],))
    _linear(ctx, node.input[0], weight, bias)


def _matmul(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    b = ctx.constant(node.input[1])
    if b is not None and b.ndim == 2:
        _linear(ctx, node.input[0], b.T, None)
        return
    ctx.add_fn(torch.matmul, [ctx.value(node.input[0]), ctx.value(node.input[1])])


def _batch_norm(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    if int(ctx.attr("training_mode", 0)):
        ctx.unsupported("is in training mode")
    scale, bias, mean, var = (ctx.require_constant(name, "statistic") for name in node.input[1:5])
    shape = ctx.shape(node.input[0])
    rank = len(shape) if shape else 4
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(rank)
    if cls is None:
        ctx.unsupported(f"normalises a rank-{rank} tensor")
    layer = cls(
        scale.size,
        eps=float(ctx.attr("epsilon", 1e-5)),
        momentum=1.0 - float(ctx.attr("momentum", 0.9)),
    )
    layer.weight = _param(scale)
    layer.bias = _param(bias)
    layer.running_mean.copy_(torch.from_numpy(np.array(mean, dtype=np.float32)))
    layer.running_var.copy_(torch.from_numpy(np.array(var, dtype=np.float32)))
    ctx.add_layer(layer, [node.input[0]], [node.output[0]])


def _prelu(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    slope = ctx.require_constant(node.input[1], "slope")
    layer = nn.PReLU(num_parameters=slope.size)
    layer.weight = _param(slope.reshape(-1))
    shape = ctx.shape(node.input[0])
    if slope.size > 1 and (shape is None or len(shape) < 2 or shape[1] != slope.size):
        ctx.unsupported("has a slope that is not per-channel")
    ctx.add_layer(layer, [node.input[0]])


# ------------------------------------------------------------------------------ elementwise
def _unary(fn) -> Translator:
    def translate(ctx: ConversionContext, node: onnx.NodeProto) -> None:
        ctx.add_fn(fn, [node.input[0]])

    return translate


def _identity(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    if len(node.output) > 1 and node.output[1]:
        ctx.unsupported("has its mask output in use")
    ctx.add_fn(identity, [node.input[0]])


def _cast(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    if int(ctx.attr("to", 0)) != onnx.TensorProto.FLOAT:
        ctx.unsupported("casts to a type other than float32")
    ctx.add_fn(identity, [node.input[0]])


def _attr_activation(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    op = node.op_type
    if op == "LeakyRelu":
        fn = partial(F.leaky_relu, negative_slope=float(ctx.attr("alpha", 0.01)))
    elif op == "Elu":
        fn = partial(F.elu, alpha=float(ctx.attr("alpha", 1.0)))
    elif op == "HardSigmoid":
        alpha, beta = float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5))
        fn = partial(_hard_sigmoid, alpha=alpha, beta=beta)
    elif op == "Gelu":
        approximate = ctx.attr("approximate", b"none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
        fn = partial(F.gelu, approximate=approximate)
    else:  # Selu with ONNX's default constants equals torch's
        fn = F.selu
    ctx.add_fn(fn, [node.input[0]])


def _hard_sigmoid(x, alpha: float, beta: float):
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


def _clip(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    if ctx.opset < 11:
        low, high = ctx.attr("min"), ctx.attr("max")
    else:
        names = [*node.input[1:3], "", ""][:2]
        low_high = []
        for name in names:
            value = ctx.require_constant(name, "bound") if name else None
            low_high.append(None if value is None else float(value.reshape(-1)[0]))
        low, high = low_high
    if low == 0.0 and high == 6.0:
        fn = F.relu6
    elif low == 0.0 and high is None:
        fn = F.relu
    else:
        fn = partial(torch.clamp, min=low, max=high)
    ctx.add_fn(fn, [node.input[0]])


_BINARY = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": operator.truediv,
    "Pow": operator.pow,
}


def _binary(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    fn = _BINARY[node.op_type]
    a, b = _operand(ctx, node.input[0]), _operand(ctx, node.input[1])
    if isinstance(a, float) and isinstance(b, float):
        ctx.unsupported("has two constant operands (constant folding should remove it)")
    if isinstance(b, float):
        ctx.add_fn(partial(_with_right, fn=fn, right=b), [a])
    elif isinstance(a, float):
        ctx.add_fn(partial(_with_left, fn=fn, left=a), [b])
    else:
        ctx.add_fn(fn, [a, b])


def _with_right(x, fn, right):
    return fn(x, right)


def _with_left(x, fn, left):
    return fn(left, x)


def _variadic(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    fn = {"Sum": _sum, "Max": _max, "Min": _min, "Mean": _mean}[node.op_type]
    ctx.add_fn(fn, [ctx.value(name) for name in node.input])


def _sum(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def _max(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = torch.maximum(out, x)
    return out


def _min(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = torch.minimum(out, x)
    return out


def _mean(*xs):
    return _sum(*xs) / len(xs)


# ------------------------------------------------------------------------------ pooling
def _pool(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    if len(node.output) > 1 and node.output[1]:
        ctx.unsupported("has its indices output in use")
    kernel = as_ints(ctx.attr("kernel_shape"))
    rank = len(kernel)
    if rank not in (1, 2, 3):
        ctx.unsupported(f"pools over {rank} dimensions")
    strides = as_ints(ctx.attr("strides", [1] * rank))
    dilations = as_ints(ctx.attr("dilations", [1] * rank))
    ceil = bool(ctx.attr("ceil_mode", 0))
    pads = _spatial_pads(ctx, node.input[0], kernel, strides, dilations)
    padding, explicit = _split_pads(pads)
    if any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
        explicit, padding = onnx_pads_to_torch(pads), [0] * rank
    x = node.input[0]
    window = {"kernel_size": kernel, "stride": strides, "padding": padding, "ceil_mode": ceil}
    if node.op_type == "MaxPool":
        if explicit is not None:
            x = _pre_pad(ctx, x, explicit, float("-inf"))
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
        pool = partial(fn, **window, dilation=dilations)
    else:
        if dilations != [1] * rank:
            ctx.unsupported("is dilated")
        include = bool(ctx.attr("count_include_pad", 0))
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
        pool = partial(fn, **window, count_include_pad=include or explicit is not None)
        if explicit is not None and not include:
            # Average over the real inputs only: pooled sum of x over pooled count of ones.
            pool = partial(_avg_pool_excluding_pads, pads=explicit, pool=pool)
        elif explicit is not None:
            x = _pre_pad(ctx, x, explicit, 0.0)
    ctx.add_fn(pool, [x])


def _avg_pool_excluding_pads(x, pads: list[int], pool):
    ones = torch.ones_like(x[:, :1])
    return pool(F.pad(x, pads)) / pool(F.pad(ones, pads))


def _global_pool(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    shape = ctx.shape(node.input[0])
    rank = len(shape) - 2 if shape else 2
    if rank not in (1, 2, 3):
        ctx.unsupported(f"pools over {rank} dimensions")
    if node.op_type == "GlobalAveragePool":
        fn = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[rank - 1]
    else:
        fn = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[rank - 1]
    ctx.add_fn(partial(fn, output_size=1), [node.input[0]])


def _lrn(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    fn = partial(
        F.local_response_norm,
        size=int(ctx.attr("size")),
        alpha=float(ctx.attr("alpha", 1e-4)),
        beta=float(ctx.attr("beta", 0.75)),
        k=float(ctx.attr("bias", 1.0)),
    )
    ctx.add_fn(fn, [node.input[0]])


TRANSLATORS: dict[str, Translator] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batch_norm,
    "PRelu": _prelu,
    "Relu": _unary(F.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "HardSwish": _unary(F.hardswish),
    "Softplus": _unary(F.softplus),
    "Softsign": _unary(F.softsign),
    "Mish": _unary(F.mish),
    "Erf": _unary(torch.erf),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Sqrt": _unary(torch.sqrt),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "LeakyRelu": _attr_activation,
    "Elu": _attr_activation,
    "Selu": _attr_activation,
    "HardSigmoid": _attr_activation,
    "Gelu": _attr_activation,
    "Clip": _clip,
    "Identity": _identity,
    "Dropout": _identity,
    "Cast": _cast,
    **dict.fromkeys(_BINARY, _binary),
    **dict.fromkeys(("Sum", "Max", "Min", "Mean"), _variadic),
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "LRN": _lrn,
    **SHAPE_TRANSLATORS,
}
