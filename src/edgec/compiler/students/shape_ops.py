"""Shape, reduction and softmax translations for :mod:`edgec.compiler.students.ops`.

Flatten, Reshape, Transpose, Concat, Split, Slice, Squeeze, Unsqueeze, Pad, ReduceMean,
ReduceSum, ReduceMax, ReduceMin, Softmax and LogSoftmax. The batch axis is kept free: an op that
would squeeze, slice, pad or reduce it is refused, and a Reshape that keeps it keeps it for any
batch size (``[1, -1]`` becomes ``flatten(x, 1)``).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from edgec.compiler.students.context import ConversionContext


def as_ints(value) -> list[int]:
    """Any integer array or sequence as a flat list of Python ints."""
    return [int(v) for v in np.asarray(value).reshape(-1)]


def onnx_pads_to_torch(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, .., e1, e2, ..] -> torch F.pad order (last axis first)."""
    rank = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(rank)):
        out += [pads[axis], pads[axis + rank]]
    return out


def identity(x):
    """The input, unchanged (Identity, Dropout at inference, Cast to float)."""
    return x


def _flatten(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    axis = int(ctx.attr("axis", 1))
    shape = ctx.shape(node.input[0])
    if axis < 0 and shape:
        axis += len(shape)
    if axis == 1:
        ctx.add_fn(partial(torch.flatten, start_dim=1), [node.input[0]])
    elif axis == 0:
        ctx.unsupported("with axis 0 mixes the batch dimension")
    else:
        ctx.add_fn(partial(_flatten_at, axis=axis), [node.input[0]])


def _flatten_at(x, axis: int):
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _reshape(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    target = as_ints(ctx.require_constant(node.input[1], "shape"))
    shape = ctx.shape(node.input[0])
    if shape is None or any(d <= 0 for d in shape):
        ctx.unsupported("reshapes a tensor of unknown shape")
    if not int(ctx.attr("allowzero", 0)):
        target = [shape[i] if d == 0 and i < len(shape) else d for i, d in enumerate(target)]
    rest = math.prod(shape[1:])
    if target and target[0] in (shape[0], -1):
        tail = target[1:]
        known = math.prod(d for d in tail if d != -1)
        keeps_batch = target[0] == shape[0] or (-1 not in tail and known == rest)
        if keeps_batch:
            if len(tail) == 1 and (tail[0] == -1 or tail[0] == rest):
                ctx.add_fn(partial(torch.flatten, start_dim=1), [node.input[0]])
            else:
                ctx.add_fn(partial(_reshape_batch, tail=tuple(tail)), [node.input[0]])
            return
    # The batch axis is not kept: correct for the teacher's batch only (checked later).
    ctx.add_fn(partial(torch.reshape, shape=tuple(target)), [node.input[0]])


def _reshape_batch(x, tail: tuple[int, ...]):
    return x.reshape(x.shape[0], *tail)


def _transpose(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    shape = ctx.shape(node.input[0])
    perm = ctx.attr("perm")
    perm = as_ints(perm) if perm is not None else list(reversed(range(len(shape or ()))))
    if not perm:
        ctx.unsupported("has no perm and an input of unknown rank")
    ctx.add_fn(partial(torch.permute, dims=tuple(perm)), [node.input[0]])


def _concat(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    ctx.add_fn(partial(_cat, axis=int(ctx.attr("axis"))), [ctx.value(n) for n in node.input])


def _cat(*xs, axis: int):
    return torch.cat(xs, dim=axis)


def _split(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    axis = int(ctx.attr("axis", 0))
    shape = ctx.shape(node.input[0])
    sizes = None
    if len(node.input) > 1 and node.input[1]:
        sizes = as_ints(ctx.require_constant(node.input[1], "split"))
    elif ctx.attr("split") is not None:
        sizes = as_ints(ctx.attr("split"))
    if sizes is None:
        if shape is None or shape[axis] <= 0:
            ctx.unsupported("splits an axis of unknown size")
        sizes = [shape[axis] // len(node.output)] * len(node.output)
    ctx.add_fn(
        partial(torch.split, split_size_or_sections=sizes, dim=axis),
        [node.input[0]],
        list(node.output),
    )


def _slice(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    if ctx.opset < 10:
        starts, ends = as_ints(ctx.attr("starts")), as_ints(ctx.attr("ends"))
        axes = as_ints(ctx.attr("axes", list(range(len(starts)))))
        steps = [1] * len(starts)
    else:
        starts = as_ints(ctx.require_constant(node.input[1], "start"))
        ends = as_ints(ctx.require_constant(node.input[2], "end"))
        axes = (
            as_ints(ctx.require_constant(node.input[3], "axes"))
            if len(node.input) > 3 and node.input[3]
            else list(range(len(starts)))
        )
        steps = (
            as_ints(ctx.require_constant(node.input[4], "steps"))
            if len(node.input) > 4 and node.input[4]
            else [1] * len(starts)
        )
    if any(s <= 0 for s in steps):
        ctx.unsupported("has a non-positive step")
    rank = len(ctx.shape(node.input[0]) or ())
    index = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[axis % rank] = slice(start, min(end, 2**62), step)
    if isinstance(index[0], slice) and index[0] != slice(None):
        ctx.unsupported("slices the batch dimension")
    ctx.add_fn(partial(_index, index=tuple(index)), [node.input[0]])


def _index(x, index):
    return x[index]


def _axes(ctx: ConversionContext, node: onnx.NodeProto, since: int) -> list[int] | None:
    """Axes from the attribute (before opset ``since``) or the second input."""
    if ctx.opset < since:
        axes = ctx.attr("axes")
        return None if axes is None else as_ints(axes)
    if len(node.input) > 1 and node.input[1]:
        return as_ints(ctx.require_constant(node.input[1], "axes"))
    return None


def _squeeze(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    shape = ctx.shape(node.input[0])
    axes = _axes(ctx, node, 13)
    if shape is None:
        ctx.unsupported("squeezes a tensor of unknown rank")
    axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else axes
    axes = sorted(a % len(shape) for a in axes)
    if 0 in axes:
        ctx.unsupported("squeezes the batch dimension")
    ctx.add_fn(partial(torch.squeeze, dim=tuple(axes)), [node.input[0]])


def _unsqueeze(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    axes = _axes(ctx, node, 13)
    out = ctx.shape(node.output[0])
    if axes is None or out is None:
        ctx.unsupported("has unknown axes or output rank")
    axes = sorted(a % len(out) for a in axes)
    if 0 in axes:
        ctx.unsupported("inserts an axis before the batch dimension")
    ctx.add_fn(partial(_unsqueeze_fn, axes=tuple(axes)), [node.input[0]])


def _unsqueeze_fn(x, axes: tuple[int, ...]):
    for axis in axes:
        x = x.unsqueeze(axis)
    return x


def _pad(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    mode = ctx.attr("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if ctx.opset < 11:
        pads, value = as_ints(ctx.attr("pads")), float(ctx.attr("value", 0.0))
    else:
        pads = as_ints(ctx.require_constant(node.input[1], "pads"))
        value_name = node.input[2] if len(node.input) > 2 else ""
        value = (
            float(ctx.require_constant(value_name, "value").reshape(-1)[0]) if value_name else 0.0
        )
        if len(node.input) > 3 and node.input[3]:
            ctx.unsupported("pads selected axes only")
    rank = len(pads) // 2
    if pads[0] or pads[rank]:
        ctx.unsupported("pads the batch dimension")
    torch_pads = onnx_pads_to_torch(pads)
    while torch_pads and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]  # torch pads only the trailing axes it is given
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        ctx.unsupported(f"uses mode '{mode}'")
    kwargs = {"value": value} if torch_mode == "constant" else {}
    ctx.add_fn(partial(F.pad, pad=torch_pads, mode=torch_mode, **kwargs), [node.input[0]])


def _reduce(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    since = 18 if node.op_type != "ReduceSum" else 13
    axes = _axes(ctx, node, since)
    keep = bool(ctx.attr("keepdims", 1))
    if axes is None or not axes:
        if int(ctx.attr("noop_with_empty_axes", 0)):
            ctx.add_fn(identity, [node.input[0]])
            return
        ctx.unsupported("reduces over every axis, the batch included")
    shape = ctx.shape(node.input[0])
    if shape is None:
        ctx.unsupported("reduces a tensor of unknown rank")
    axes = sorted(a % len(shape) for a in axes)
    if 0 in axes:
        ctx.unsupported("reduces over the batch dimension")
    fn = {
        "ReduceMean": torch.mean,
        "ReduceSum": torch.sum,
        "ReduceMax": torch.amax,
        "ReduceMin": torch.amin,
    }[node.op_type]
    ctx.add_fn(partial(fn, dim=tuple(axes), keepdim=keep), [node.input[0]])


def _softmax(ctx: ConversionContext, node: onnx.NodeProto) -> None:
    shape = ctx.shape(node.input[0])
    rank = len(shape) if shape else 2
    axis = int(ctx.attr("axis", -1 if ctx.opset >= 13 else 1)) % rank
    fn = F.softmax if node.op_type == "Softmax" else F.log_softmax
    if ctx.opset < 13 and axis != rank - 1:
        # Before opset 13 the input is flattened to 2-D at ``axis``.
        ctx.add_fn(partial(_coerced_softmax, fn=fn, axis=axis), [node.input[0]])
    else:
        ctx.add_fn(partial(fn, dim=axis), [node.input[0]])


def _coerced_softmax(x, fn, axis: int):
    return fn(x.flatten(axis), dim=-1).reshape(x.shape)


SHAPE_TRANSLATORS = {
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Pad": _pad,
    **dict.fromkeys(("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"), _reduce),
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
}
