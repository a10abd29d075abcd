"""ONNX (FP32 or edgec's guard-approved Q/DQ INT8) -> TFLite flatbuffer, without TensorFlow.

Why edgec writes the flatbuffer itself: ``litert-torch`` (ONNX -> torch -> LiteRT) needs
``litert-converter``, which pins ``xdsl==0.28.0`` and so ``typing-extensions<4.13``, while
edgec's pinned pydantic 2.13 needs ``typing-extensions>=4.14.1``; it also pulls jax, jaxlib,
transformers and kagglehub. ``onnx2tf`` needs TensorFlow. Both would also re-quantize the model
their own way, not the way edgec's accuracy guard approved. The CNN op set is small, and
``ai_edge_litert`` ships the schema, so the converter here maps ONNX ops onto TFLite builtins
directly (:data:`SUPPORTED_OPS`); anything else raises :class:`UnsupportedModelError`, which
the backend turns into a fallback with that reason.

Layout: ONNX is NCHW, TFLite NHWC. Every 4-D activation is carried NHWC inside the model; the
model's inputs and outputs keep the ONNX shapes (a ``TRANSPOSE`` at each end), so a runner
feeds the ``.tflite`` exactly what it fed the ONNX model. Ops that need ONNX layout (reshape,
flatten, transpose) get the tensor transposed back first, unless its spatial dims are 1.

INT8: the Q/DQ model is read apart (:func:`edgec.targets.litert.qdq.float_view`); each op whose
activations are all quantized runs in int8 (weights int8 per channel, biases int32 with scale
``input_scale * weight_scale``), the others in float between ``DEQUANTIZE``/``QUANTIZE``.
Kernels with fixed output grids (``LOGISTIC`` and ``SOFTMAX``: 1/256, -128; ``TANH``: 1/128, 0)
and pooling (same grid in and out) get the grid TFLite requires. I/O is float by default
(``QUANTIZE`` at the inputs, ``DEQUANTIZE`` at the outputs) or integer (``int8``/``uint8``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from edgec.targets.litert.flatbuffer import FlatModel, Quant
from edgec.targets.litert.qdq import FloatView, float_view, rescale_bounds

#: ONNX ops the converter maps (with the conditions :func:`convert` checks).
SUPPORTED_OPS = frozenset(
    {
        "Add",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Clip",
        "Concat",
        "Conv",
        "Div",
        "Dropout",
        "Flatten",
        "Gemm",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "MatMul",
        "MaxPool",
        "Mul",
        "Pad",
        "ReduceMean",
        "Relu",
        "Reshape",
        "Rescale",
        "Sigmoid",
        "Softmax",
        "Squeeze",
        "Sub",
        "Tanh",
        "Transpose",
        "Unsqueeze",
    }
)
NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)
_FIXED_GRIDS = {
    "LOGISTIC": Quant((1 / 256,), (-128,)),
    "SOFTMAX": Quant((1 / 256,), (-128,)),
    "TANH": Quant((1 / 128,), (0,)),
}


class UnsupportedModelError(ValueError):
    """The model holds something the converter does not map (the message says what)."""


@dataclass
class _Val:
    """An activation in the TFLite graph: tensor index, ONNX shape, and whether it is NHWC."""

    index: int
    shape: tuple[int, ...]
    nhwc: bool = False


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _affine(lo: float, hi: float) -> Quant:
    """An asymmetric int8 grid covering ``[lo, hi]`` (and 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 or 1e-8
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return Quant((scale,), (zp,))


def _quantize(value: np.ndarray, quant: Quant, dtype=np.int8) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.round(value / quant.scale[0]) + quant.zero_point[0]
    return np.clip(q, info.min, info.max).astype(dtype)


class _Converter:
    def __init__(
        self,
        view: FloatView,
        shapes: dict[str, tuple[int, ...]],
        io_dtype: str,
        per_channel_fc: bool = True,
    ):
        self.view = view
        self.per_channel_fc = per_channel_fc
        self.shapes = shapes
        self.io_dtype = io_dtype
        self.m = FlatModel()
        self.vals: dict[str, _Val] = {}
        self.cache: dict[tuple, _Val] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in view.graph:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.skip: set[int] = set()
        self.count = 0

    # -- tensors -------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}__{self.count}"

    def q(self, name: str) -> Quant | None:
        return self.view.quant.get(name) if self.view.quantized else None

    def is_int(self, val: _Val) -> bool:
        return self.m.dtype(val.index) == "INT8"

    def new(self, name: str, shape, quant: Quant | None, nhwc: bool, onnx_shape=None) -> _Val:
        dtype = np.int8 if quant is not None else np.float32
        index = self.m.tensor(name, tuple(shape), dtype, quant)
        return _Val(index, tuple(onnx_shape if onnx_shape is not None else shape), nhwc)

    def like(self, val: _Val, name: str, quant: Quant | None = None) -> _Val:
        """A new tensor with ``val``'s shape and layout (``quant``: its int8 grid, or float)."""
        return self.new(name, self.tfl_shape(val), quant, val.nhwc, val.shape)

    def nhwc_out(self, name: str, onnx_shape, quant: Quant | None) -> _Val:
        """A new NHWC tensor for the 4-D ONNX (NCHW) shape ``onnx_shape``."""
        n, c, h, w = onnx_shape
        return self.new(name, (n, h, w, c), quant, True, onnx_shape)

    def grid(self, val: _Val) -> Quant | None:
        """``val``'s int8 grid, or ``None`` when it is float."""
        return self.m.quant(val.index) if self.is_int(val) else None

    def tfl_shape(self, val: _Val) -> tuple[int, ...]:
        return self.m.shape(val.index)

    def emit(self, opname: str, inputs: list[int], outputs: list[int], options=None, **fields):
        """Append the TFLite op ``opname``; ``options`` names its options table (``AddOptions``),
        whose ``fields`` are set (the rest keep the schema's defaults)."""
        table = None
        if options is not None:
            table = getattr(self.m.s, f"{options}T")()
            for field, value in fields.items():
                setattr(table, field, value)
        self.m.op(opname, inputs, outputs, table, options)

    def activation(self, act: str) -> int:
        """The fused activation ``act`` (``NONE``, ``RELU``, ``RELU6``) as the schema codes it."""
        return getattr(self.m.s.ActivationFunctionType, act)

    def scalar(self, base: str, value: float) -> int:
        """A float constant ``[value]``."""
        return self.m.constant(self.fresh(base), np.asarray([value], np.float32))

    def int8_scalar(self, base: str, value: float) -> int:
        """An int8 constant holding ``value`` exactly: 127 on the grid ``value / 127``."""
        return self.m.constant(
            self.fresh(base), np.asarray([127], np.int8), Quant((value / 127.0,), (0,))
        )

    def converted(self, val: _Val, key: tuple, base: str, quant: Quant | None, opname: str):
        """``val`` through the one-input op ``opname`` (made once per ``key``)."""
        if key not in self.cache:
            out = self.like(val, self.fresh(base), quant)
            self.m.op(opname, [val.index], [out.index])
            self.cache[key] = out
        return self.cache[key]

    def as_float(self, val: _Val) -> _Val:
        if not self.is_int(val):
            return val
        return self.converted(val, ("float", val.index), "dequant", None, "DEQUANTIZE")

    def as_int(self, val: _Val, quant: Quant) -> _Val:
        if self.is_int(val) and self.m.quant(val.index) == quant:
            return val
        return self.converted(val, ("int", val.index, quant), "quant", quant, "QUANTIZE")

    def transpose(self, val: _Val, perm, name: str, nhwc: bool, onnx_shape=None) -> _Val:
        """``val`` with its TFLite dims permuted by ``perm`` (a ``TRANSPOSE`` op)."""
        shape = tuple(self.tfl_shape(val)[p] for p in perm)
        out = self.new(name, shape, self.grid(val), nhwc, onnx_shape)
        perm_t = self.m.constant(self.fresh("perm"), np.asarray(perm, np.int32))
        self.emit("TRANSPOSE", [val.index, perm_t], [out.index], "TransposeOptions")
        return out

    def transposed(self, val: _Val, nhwc: bool) -> _Val:
        if val.nhwc == nhwc or len(val.shape) != 4:
            return val
        key = ("layout", val.index, nhwc)
        if key not in self.cache:
            perm = NCHW_TO_NHWC if nhwc else NHWC_TO_NCHW
            self.cache[key] = self.transpose(val, perm, self.fresh("transpose"), nhwc, val.shape)
        return self.cache[key]

    def nhwc(self, name: str) -> _Val:
        return self.transposed(self.vals[name], True)

    def onnx_layout(self, name: str) -> _Val:
        val = self.vals[name]
        if val.nhwc and len(val.shape) == 4 and val.shape[2] == val.shape[3] == 1:
            # NHWC [N,1,1,C] holds the same bytes as NCHW [N,C,1,1]: reshape, no transpose.
            return self.reshape(val, val.shape, nhwc=False)
        return self.transposed(val, False)

    def reshape(self, val: _Val, shape, nhwc: bool = False, quant: Quant | None = None) -> _Val:
        shape = tuple(int(d) for d in shape)
        out = self.new(self.fresh("reshape"), shape, self.grid(val), nhwc)
        shape_t = self.m.constant(self.fresh("shape"), np.asarray(shape, np.int32))
        self.emit(
            "RESHAPE", [val.index, shape_t], [out.index], "ReshapeOptions", newShape=list(shape)
        )
        return out

    # -- constants -----------------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        return self.view.consts.get(name)

    def const_operand(self, value: np.ndarray, like: _Val, quant: bool) -> int:
        """A constant operand broadcasting against ``like`` (ONNX shapes -> its layout)."""
        value = np.asarray(value, np.float32)
        if like.nhwc and len(like.shape) == 4 and value.ndim >= 3:
            value = value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(NCHW_TO_NHWC)
        if not quant:
            return self.m.constant(self.fresh("const"), value)
        grid = _affine(float(value.min()), float(value.max()))
        return self.m.constant(self.fresh("const"), _quantize(value, grid), grid)

    # -- graph ---------------------------------------------------------------------------
    def single_consumer(self, name: str, ops: tuple[str, ...]) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type in ops and name not in self.view.outputs:
            return users[0]
        return None

    def fused_activation(self, node: onnx.NodeProto) -> tuple[str, str]:
        """``(activation, output name)``: a Relu/Relu6 right after ``node`` is fused in."""
        nxt = self.single_consumer(node.output[0], ("Relu", "Clip"))
        if nxt is None:
            return "NONE", node.output[0]
        if nxt.op_type == "Relu":
            self.skip.add(id(nxt))
            return "RELU", nxt.output[0]
        lo, hi = self.clip_bounds(nxt)
        if lo == 0 and hi == 6:
            self.skip.add(id(nxt))
            return "RELU6", nxt.output[0]
        if lo == 0 and hi is None:
            self.skip.add(id(nxt))
            return "RELU", nxt.output[0]
        return "NONE", node.output[0]

    def clip_bounds(self, node: onnx.NodeProto) -> tuple[float | None, float | None]:
        attrs = _attrs(node)
        lo, hi = attrs.get("min"), attrs.get("max")
        if len(node.input) > 1 and node.input[1]:
            lo = self.required_const(node, 1).item()
        if len(node.input) > 2 and node.input[2]:
            hi = self.required_const(node, 2).item()
        return (None if lo is None else float(lo)), (None if hi is None else float(hi))

    def required_const(self, node: onnx.NodeProto, i: int) -> np.ndarray:
        value = self.const(node.input[i])
        if value is None:
            raise UnsupportedModelError(
                f"{node.op_type} node '{node.name}' has a computed input {i} "
                f"({node.input[i]}); only constants are supported there"
            )
        return value

    def out_quant(self, names: list[str], output: str) -> Quant | None:
        """The output's int8 grid when every activation input and the output are quantized."""
        if not self.view.quantized:
            return None
        quant = self.q(output)
        if quant is None:
            return None
        for name in names:
            if not self.is_int(self.vals[name]) and name not in self.view.quant:
                return None
        return quant

    def ensure(self, val: _Val, name: str, quantized: bool) -> _Val:
        """``val`` in int8 (on its Q/DQ grid) when the op runs quantized, else in float."""
        if not quantized:
            return self.as_float(val)
        return val if self.is_int(val) else self.as_int(val, self.view.quant[name])

    def operand(
        self, name: str, out_name: str, val: _Val | None = None, same_grid: bool = False
    ) -> tuple[_Val, Quant | None]:
        """The one activation input ``name`` (``val``: it, already in the layout the op wants)
        as the op takes it, and the output's int8 grid (``None``: the op runs in float).

        ``same_grid``: the kernel keeps its input's grid (pooling, max, pad, relu6 and such)."""
        quant = self.out_quant([name], out_name)
        val = self.ensure(self.vals[name] if val is None else val, name, quant is not None)
        if quant is not None and same_grid:
            quant = self.m.quant(val.index)
        return val, quant

    def weighted(self, node, weight_name: str) -> tuple[str, str, Quant | None]:
        """``(activation, output name, output grid)`` of a Conv/Gemm/MatMul: a Relu after it
        fused in, int8 only when its input, output and weights are quantized."""
        act, out_name = self.fused_activation(node)
        quant = self.out_quant([node.input[0]], out_name)
        if weight_name not in self.view.int_weights:
            quant = None  # float weights in a Q/DQ model: a layer the guard kept in FP32
        return act, out_name, quant

    def weight_operands(
        self,
        node,
        x: _Val,
        w: np.ndarray,
        b: np.ndarray,
        w_q: np.ndarray | None = None,
        w_quant: Quant | None = None,
    ) -> tuple[int, int]:
        """The weight and bias constants: float ``w`` and ``b``, or int8 ``w_q`` on
        ``w_quant`` with an int32 bias on ``x``'s grid times the weights'."""
        w_name = self.fresh(f"{node.name}_w")
        if w_q is None:
            w_i = self.m.constant(w_name, w.astype(np.float32))
            return w_i, self.m.constant(self.fresh(f"{node.name}_b"), b.astype(np.float32))
        w_i = self.m.constant(w_name, w_q, w_quant)
        return w_i, self.int_bias(node.name, b, self.m.quant(x.index), w_quant)

    def float_clamp(self, x: _Val, bounds, base: str) -> _Val:
        """Float ``x`` clipped to ``bounds`` (lower, upper; ``None``: open) with
        ``MAXIMUM``/``MINIMUM``: what runs everywhere, with no int8 grid to fit."""
        cur = x
        for bound, opname in zip(bounds, ("MAXIMUM", "MINIMUM"), strict=True):
            if bound is None:
                continue
            c = self.scalar("bound", bound)
            out = self.like(cur, self.fresh(base))
            self.emit(opname, [cur.index, c], [out.index], "MaximumMinimumOptions")
            cur = out
        return cur

    def mul(self, x: _Val, c: int, name: str, quant: Quant | None = None) -> _Val:
        """``x`` times the scalar constant ``c``, into a new tensor ``name``."""
        out = self.like(x, name, quant)
        self.emit("MUL", [x.index, c], [out.index], "MulOptions")
        return out

    def pad(self, x: _Val, out: _Val, pairs, fill: np.ndarray | None = None) -> None:
        """``PAD`` ``x`` into ``out`` by ``pairs`` (before, after per TFLite dim); ``PADV2``
        with ``fill`` (on ``out``'s grid) as the value padded in."""
        pads_t = self.m.constant(self.fresh("pads"), np.asarray(pairs, np.int32))
        if fill is None:
            self.emit("PAD", [x.index, pads_t], [out.index], "PadOptions")
            return
        fill_t = self.m.constant(self.fresh("fill"), fill, self.grid(out))
        self.emit("PADV2", [x.index, pads_t, fill_t], [out.index], "PadV2Options")

    def convert(self) -> FlatModel:
        for name in self.view.inputs:
            self.add_input(name)
        for node in self.view.graph:
            if id(node) in self.skip:
                continue
            if node.op_type not in SUPPORTED_OPS:
                raise UnsupportedModelError(f"the ONNX op {node.op_type} (node '{node.name}')")
            try:
                getattr(self, f"op_{node.op_type}")(node)
            except UnsupportedModelError:
                raise
            except (IndexError, KeyError, ValueError, TypeError) as err:
                # A form of a supported op the mapping does not cover: a fallback, not a crash.
                raise UnsupportedModelError(
                    f"the ONNX op {node.op_type} in the form of node '{node.name}' "
                    f"({type(err).__name__}: {err})"
                ) from None
        for name in self.view.outputs:
            self.add_output(name)
        return self.m

    def add_input(self, name: str) -> None:
        shape = self.shapes[name]
        dtype = next(i.type.tensor_type.elem_type for i in self.graph_inputs if i.name == name)
        quant = self.q(name)
        if dtype == onnx.TensorProto.UINT8:
            index = self.m.tensor(name, shape, np.uint8)
            self.m.inputs.append(index)
            self.vals[name] = _Val(index, shape)
            return
        if dtype != onnx.TensorProto.FLOAT:
            raise UnsupportedModelError(f"input '{name}' of type {dtype} (float or uint8 only)")
        if quant is not None and self.io_dtype != "float32":
            if self.io_dtype == "uint8":
                index = self.m.tensor(name, shape, np.uint8, quant.shifted(128))
                self.m.inputs.append(index)
                val = self.new(self.fresh(f"{name}_int8"), shape, quant, False)
                self.m.op("QUANTIZE", [index], [val.index])
                self.vals[name] = val
            else:
                index = self.m.tensor(name, shape, np.int8, quant)
                self.m.inputs.append(index)
                self.vals[name] = _Val(index, shape)
            return
        index = self.m.tensor(name, shape, np.float32)
        self.m.inputs.append(index)
        self.vals[name] = _Val(index, shape)
        if quant is not None:
            self.vals[name] = self.as_int(self.vals[name], quant)

    def add_output(self, name: str) -> None:
        if name in self.view.inputs or name not in self.vals:
            raise UnsupportedModelError(f"output '{name}' is not computed by any node")
        val = self.transposed(self.vals[name], False)
        if self.is_int(val) and self.io_dtype == "float32":
            val = self.as_float(val)
        elif self.is_int(val) and self.io_dtype == "uint8":
            quant = self.m.quant(val.index).shifted(128)
            out = self.m.tensor(self.fresh("uint8"), self.tfl_shape(val), np.uint8, quant)
            self.m.op("QUANTIZE", [val.index], [out])
            val = _Val(out, val.shape)
        final = self.view.output_alias.get(name, name)
        self.m.tensors[val.index].name = final
        if val.index in self.m.outputs or val.index in self.m.inputs:
            raise UnsupportedModelError(f"output '{final}' repeats another input or output")
        self.m.outputs.append(val.index)

    # -- ops -----------------------------------------------------------------------------
    def op_Identity(self, node):
        value = self.const(node.input[0])
        if value is not None and node.input[0] not in self.vals:
            # An Identity of an initializer (torch exports some biases so): a constant too.
            self.view.consts[node.output[0]] = value
            return
        self.vals[node.output[0]] = self.vals[node.input[0]]

    op_Dropout = op_Identity

    def op_Cast(self, node):
        to = _attrs(node)["to"]
        src = self.vals[node.input[0]]
        if to != onnx.TensorProto.FLOAT:
            raise UnsupportedModelError(f"Cast to type {to} (node '{node.name}')")
        if self.m.dtype(src.index) == "FLOAT32":
            self.vals[node.output[0]] = src
            return
        if self.m.dtype(src.index) == "UINT8" and self.view.quantized:
            # A uint8 frame is the integer grid (scale 1, zero point 0): no float on the way in.
            grid = self.m.quant(src.index) or Quant((1.0,), (0,))
            if self.m.quant(src.index) is None:
                self.m.tensors[src.index].quantization = self._qparams(grid)
            out = self.like(src, self.fresh("frame_int8"), grid.shifted(-128))
            self.m.op("QUANTIZE", [src.index], [out.index])
            self.vals[node.output[0]] = out
            return
        out = self.like(src, node.output[0])
        self.emit("CAST", [src.index], [out.index], "CastOptions")
        self.vals[node.output[0]] = out

    def _qparams(self, quant: Quant):
        q = self.m.s.QuantizationParametersT()
        q.scale = np.asarray(quant.scale, np.float32)
        q.zeroPoint = np.asarray(quant.zero_point, np.int64)
        return q

    def op_Conv(self, node):
        attrs = _attrs(node)
        w = self.required_const(node, 1)
        if w.ndim != 4:
            raise UnsupportedModelError(f"Conv node '{node.name}' is not 2-D")
        bias = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and bias is None:
            raise UnsupportedModelError(f"Conv node '{node.name}' has a computed bias")
        group = int(attrs.get("group", 1))
        x = self.nhwc(node.input[0])
        c = self.tfl_shape(x)[3]
        out_ch, in_per_group, kh, kw = w.shape
        depthwise = group > 1 and group == c and in_per_group == 1
        if group > 1 and not depthwise:
            raise UnsupportedModelError(f"grouped Conv node '{node.name}' (group={group})")
        act, out_name, quant = self.weighted(node, node.input[1])
        strides = attrs.get("strides", [1, 1])
        dil = attrs.get("dilations", [1, 1])
        x = self.ensure(x, node.input[0], quant is not None)
        x, padding = self.padded(node, x, (kh, kw), strides, dil, quant is not None)
        fields = {}
        if depthwise:
            opname, options, axis = "DEPTHWISE_CONV_2D", "DepthwiseConv2DOptions", 3
            fields["depthMultiplier"] = out_ch // c

            def layout(a):  # TFLite: [1, H, W, C*multiplier]
                return a.reshape(out_ch, kh, kw).transpose(1, 2, 0)[None]
        else:
            opname, options, axis = "CONV_2D", "Conv2DOptions", 0

            def layout(a):  # TFLite: [O, H, W, I]
                return a.transpose(0, 2, 3, 1)

        b = np.zeros(out_ch, np.float32) if bias is None else bias.astype(np.float32)
        if quant is None:
            w_i, b_i = self.weight_operands(node, x, layout(w), b)
        else:
            w_q, w_quant = self.int_weight(node.input[1], w)
            w_quant = Quant(w_quant.scale, w_quant.zero_point, axis)
            w_i, b_i = self.weight_operands(node, x, w, b, layout(w_q), w_quant)
        out = self.nhwc_out(out_name, self.shapes[out_name], quant)
        self.emit(
            opname,
            [x.index, w_i, b_i],
            [out.index],
            options,
            padding=padding,
            strideH=int(strides[0]),
            strideW=int(strides[1]),
            dilationHFactor=int(dil[0]),
            dilationWFactor=int(dil[1]),
            fusedActivationFunction=self.activation(act),
            **fields,
        )
        self.vals[out_name] = out

    def int_weight(
        self, name: str, w: np.ndarray, transposed: bool = False
    ) -> tuple[np.ndarray, Quant]:
        """Per-output-channel (axis 0 of ``w``) symmetric int8 weights: the Q/DQ model's own
        when they are symmetric and per-tensor or per output channel (``transposed``: ``w``
        is the stored 2-D weight transposed)."""
        found = self.view.int_weights.get(name)
        if found is not None:
            values, quant = found
            out_axis = 1 if transposed else 0
            if transposed:
                values = values.T
            if (
                values.dtype == np.int8
                and not any(quant.zero_point)
                and (quant.per_tensor or quant.axis % values.ndim == out_axis)
            ):
                scale = np.broadcast_to(np.asarray(quant.scale), (w.shape[0],))
                return np.ascontiguousarray(values), Quant.of(scale, 0)
        flat = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        scale = np.where(flat > 0, flat / 127.0, 1e-8)
        shape = (-1,) + (1,) * (w.ndim - 1)
        values = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        return values, Quant.of(scale, 0)

    def int_bias(self, name: str, b: np.ndarray, x_quant: Quant, w_quant: Quant) -> int:
        scale = x_quant.scale[0] * np.asarray(w_quant.scale, np.float64)
        values = np.clip(np.round(b / scale), -(2**31), 2**31 - 1).astype(np.int32)
        return self.m.constant(self.fresh(f"{name}_b"), values, Quant.of(scale, 0))

    def padded(self, node, x: _Val, kernel, strides, dil, quantized: bool, fill=None):
        """The input and TFLite padding: SAME/VALID when ONNX's pads match, else a PAD op."""
        attrs = _attrs(node)
        _, h, w, _ = self.tfl_shape(x)
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = self.same_pads((h, w), kernel, strides, dil)
            if auto == "SAME_LOWER":
                pads = [pads[2], pads[3], pads[0], pads[1]]
        same = self.same_pads((h, w), kernel, strides, dil)
        padding = self.m.s.Padding
        if not any(pads):
            return x, padding.VALID
        if pads == same:
            return x, padding.SAME
        paddings = np.asarray([[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]], np.int32)
        if not quantized:
            x = self.as_float(x)
        n, h, w, c = self.tfl_shape(x)
        h, w = h + pads[0] + pads[2], w + pads[1] + pads[3]
        out = self.nhwc_out(self.fresh(f"{node.name}_pad"), (n, c, h, w), self.grid(x))
        if fill is not None:  # the lowest value: padding that a max never picks
            int8 = self.is_int(x)
            fill = np.asarray(
                [-128 if int8 else np.float32(-3.4e38)], np.int8 if int8 else np.float32
            )
        self.pad(x, out, paddings, fill)
        return out, padding.VALID

    @staticmethod
    def same_pads(size, kernel, strides, dil) -> list[int]:
        before, after = [], []
        for i in range(2):
            out = -(-size[i] // int(strides[i]))
            eff = (int(kernel[i]) - 1) * int(dil[i]) + 1
            total = max((out - 1) * int(strides[i]) + eff - size[i], 0)
            before.append(total // 2)
            after.append(total - total // 2)
        return [before[0], before[1], after[0], after[1]]

    def op_Gemm(self, node):
        attrs = _attrs(node)
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
            raise UnsupportedModelError(f"Gemm node '{node.name}' with transA or alpha")
        w = self.required_const(node, 1)
        if not attrs.get("transB", 0):
            w = w.T
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = self.required_const(node, 2) * attrs.get("beta", 1.0)
        self.fully_connected(node, w, bias, node.input[1], transposed=not attrs.get("transB", 0))

    def op_MatMul(self, node):
        w = self.const(node.input[1])
        if w is None or w.ndim != 2 or len(self.vals[node.input[0]].shape) != 2:
            raise UnsupportedModelError(f"MatMul node '{node.name}' (only 2-D x constant)")
        self.fully_connected(node, w.T, None, node.input[1], transposed=True)

    def fully_connected(
        self, node, w: np.ndarray, bias: np.ndarray | None, weight_name: str, transposed: bool
    ):
        x = self.onnx_layout(node.input[0])
        if len(x.shape) != 2:
            raise UnsupportedModelError(
                f"{node.op_type} node '{node.name}' on a {len(x.shape)}-D input"
            )
        act, out_name, quant = self.weighted(node, weight_name)
        b = np.zeros(w.shape[0], np.float32) if bias is None else np.asarray(bias, np.float32)
        b = np.broadcast_to(b.reshape(-1), (w.shape[0],))
        x = self.ensure(x, node.input[0], quant is not None)
        if quant is None:
            w_i, b_i = self.weight_operands(node, x, w, b)
        else:
            if self.per_channel_fc:
                w_q, w_quant = self.int_weight(weight_name, w, transposed)
            else:  # older runtimes and edgetpu_compiler take per-tensor FC weights only
                scale = max(float(np.abs(w).max()), 1e-8) / 127.0
                w_q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
                w_quant = Quant((scale,), (0,))
            w_i, b_i = self.weight_operands(node, x, w, b, w_q, w_quant)
        out = self.new(out_name, self.shapes[out_name], quant, False)
        self.emit(
            "FULLY_CONNECTED",
            [x.index, w_i, b_i],
            [out.index],
            "FullyConnectedOptions",
            fusedActivationFunction=self.activation(act),
        )
        self.vals[out_name] = out

    def binary(self, node, opname: str):
        a_name, b_name = node.input[0], node.input[1]
        a_c, b_c = self.const(a_name), self.const(b_name)
        if a_c is not None and b_c is not None:
            raise UnsupportedModelError(f"{node.op_type} node '{node.name}' on two constants")
        act, out_name = ("NONE", node.output[0])
        if opname in ("ADD", "SUB", "MUL"):
            act, out_name = self.fused_activation(node)
        names = [n for n, c in ((a_name, a_c), (b_name, b_c)) if c is None]
        quant = self.out_quant(names, out_name)
        vals = [self.ensure(self.vals[n], n, quant is not None) for n in names]
        if len(vals) == 2 and vals[0].nhwc != vals[1].nhwc:
            vals = [self.transposed(v, True) for v in vals]
        like = vals[0]
        operands = []
        for c in (a_c, b_c):
            if c is not None:
                operands.append(self.const_operand(c, like, quant is not None))
            else:
                operands.append(vals.pop(0).index)
        shapes = [self.m.shape(i) for i in operands]
        oshape = tuple(np.broadcast_shapes(*shapes))
        onnx_shape = self.shapes[out_name]
        out = self.new(out_name, oshape, quant, like.nhwc and len(oshape) == 4, onnx_shape)
        options = f"{opname.title()}Options"  # AddOptions, SubOptions, MulOptions, DivOptions
        self.emit(
            opname, operands, [out.index], options, fusedActivationFunction=self.activation(act)
        )
        self.vals[out_name] = out

    def op_Add(self, node):
        self.binary(node, "ADD")

    def op_Sub(self, node):
        self.binary(node, "SUB")

    def op_Div(self, node):
        c = self.const(node.input[1])
        if c is not None:  # x / c = x * (1/c): MUL has int8 kernels everywhere, DIV does not
            name = f"{node.input[1]}__reciprocal"
            self.view.consts[name] = (1.0 / c.astype(np.float64)).astype(np.float32)
            patched = onnx.helper.make_node(
                "Mul", [node.input[0], name], list(node.output), name=node.name
            )
            self.binary(patched, "MUL")
            return
        self.binary(node, "DIV")

    def op_Mul(self, node):
        # HardSwish as pre-processing writes it: x * HardSigmoid(x) (alpha 1/6, beta 1/2).
        for i in (0, 1):
            producer = next((n for n in self.view.graph if node.input[i] in n.output), None)
            other = node.input[1 - i]
            if (
                producer is not None
                and producer.op_type == "HardSigmoid"
                and producer.input[0] == other
                and id(producer) in self.pending_hard_sigmoid
                and self.hard_sigmoid_params(producer) == (1 / 6, 0.5)
            ):
                self.pending_hard_sigmoid.discard(id(producer))
                self.unary(node, "HARD_SWISH", source=other)
                return
        self.binary(node, "MUL")

    @staticmethod
    def hard_sigmoid_params(node) -> tuple[float, float]:
        attrs = _attrs(node)
        alpha = float(np.float32(attrs.get("alpha", 0.2)))
        beta = float(np.float32(attrs.get("beta", 0.5)))
        return (1 / 6 if abs(alpha - 1 / 6) < 1e-6 else alpha), beta

    def unary(self, node, opname: str, source: str | None = None, options=None, **fields):
        """The one-input op ``opname`` on ``source`` (default: the node's first input);
        ``options`` and ``fields`` as :meth:`emit` takes them."""
        out_name = node.output[0]
        x, quant = self.operand(source or node.input[0], out_name)
        if quant is not None and opname in _FIXED_GRIDS:
            quant = _FIXED_GRIDS[opname]
        out = self.new(out_name, self.tfl_shape(x), quant, x.nhwc, self.shapes[out_name])
        self.emit(opname, [x.index], [out.index], options, **fields)
        self.vals[out_name] = out

    def op_HardSwish(self, node):
        self.unary(node, "HARD_SWISH")

    def op_Relu(self, node):
        self.unary(node, "RELU")

    def op_Sigmoid(self, node):
        self.unary(node, "LOGISTIC")

    def op_Tanh(self, node):
        self.unary(node, "TANH")

    def op_Clip(self, node):
        lo, hi = self.clip_bounds(node)
        if (lo, hi) == (0, 6):
            self.unary(node, "RELU6")
        elif lo == 0 and hi is None:
            self.unary(node, "RELU")
        elif (lo, hi) == (-1, 1):
            self.unary(node, "RELU_N1_TO_1")
        else:
            self.clip_general(node, lo, hi)

    def clip_general(self, node, lo, hi):
        x = self.as_float(self.vals[node.input[0]])
        cur = self.float_clamp(x, (lo, hi), node.output[0])
        quant = self.q(node.output[0])
        self.vals[node.output[0]] = self.as_int(cur, quant) if quant else cur

    def op_HardSigmoid(self, node):
        # Deferred: a Mul(x, HardSigmoid(x)) after it becomes one HARD_SWISH.
        users = self.consumers.get(node.output[0], [])
        if (
            len(users) == 1
            and users[0].op_type == "Mul"
            and node.input[0] in users[0].input
            and node.output[0] not in self.view.outputs
            and self.hard_sigmoid_params(node) == (1 / 6, 0.5)
        ):
            self.pending_hard_sigmoid.add(id(node))
            return
        alpha, beta = self.hard_sigmoid_params(node)
        # alpha * clip(x + beta/alpha, 0, 1/alpha): ADD with a fused RELU6 when 1/alpha = 6.
        x, quant = self.operand(node.input[0], node.output[0])
        if quant is None or abs(1 / alpha - 6) > 1e-6:
            x = self.as_float(x)
            shift = self.scalar("shift", beta / alpha)
            t = self.like(x, self.fresh("hs_add"))
            self.emit("ADD", [x.index, shift], [t.index], "AddOptions")
            cur = self.float_clamp(t, (0.0, 1 / alpha), "hs_clip")
            a = self.scalar("alpha", alpha)
            q = self.q(node.output[0])
            out = self.mul(cur, a, self.fresh(node.output[0]) if q else node.output[0])
            self.vals[node.output[0]] = self.as_int(out, q) if q else out
            return
        shift = self.int8_scalar("shift", beta / alpha)
        t = self.like(x, self.fresh("hs_add"), Quant((6.0 / 255.0,), (-128,)))
        relu6 = self.activation("RELU6")
        self.emit("ADD", [x.index, shift], [t.index], "AddOptions", fusedActivationFunction=relu6)
        self.vals[node.output[0]] = self.mul(
            t, self.int8_scalar("alpha", alpha), node.output[0], quant
        )

    def op_Rescale(self, node):
        x = self.vals[node.input[0]]
        out_q = self.q(node.output[0])
        if self.is_int(x) and out_q is not None:
            ratio = out_q.scale[0] / self.m.quant(x.index).scale[0]
            c = self.int8_scalar("ratio", ratio)
            self.vals[node.output[0]] = self.mul(x, c, node.output[0], out_q)
            return
        # Float: clip to the Q grid's interval and scale by the ratio of the two grids.
        in_q = self.view.quant[node.input[0]]
        cur = self.float_clamp(self.as_float(x), rescale_bounds(in_q), "rescale")
        ratio = out_q.scale[0] / in_q.scale[0] if out_q else 1.0
        self.vals[node.output[0]] = self.mul(cur, self.scalar("ratio", ratio), node.output[0])

    def op_Softmax(self, node):
        axis = _attrs(node).get("axis", -1)
        x = self.vals[node.input[0]]
        if axis not in (-1, len(x.shape) - 1):
            raise UnsupportedModelError(f"Softmax node '{node.name}' over axis {axis}")
        x = self.transposed(x, False)
        self.vals[node.input[0] + "__onnx"] = x
        if node.input[0] in self.view.quant:
            self.view.quant[node.input[0] + "__onnx"] = self.view.quant[node.input[0]]
        self.unary(node, "SOFTMAX", node.input[0] + "__onnx", "SoftmaxOptions", beta=1.0)

    def pool(self, node, opname: str, kernel, strides, fill=None):
        # int8 pooling keeps its input's grid
        x, quant = self.operand(node.input[0], node.output[0], self.nhwc(node.input[0]), True)
        x, padding = self.padded(node, x, kernel, strides, (1, 1), quant is not None, fill)
        out = self.nhwc_out(node.output[0], self.shapes[node.output[0]], quant)
        self.emit(
            opname,
            [x.index],
            [out.index],
            "Pool2DOptions",
            padding=padding,
            strideH=int(strides[0]),
            strideW=int(strides[1]),
            filterHeight=int(kernel[0]),
            filterWidth=int(kernel[1]),
        )
        self.vals[node.output[0]] = out

    def op_MaxPool(self, node):
        attrs = _attrs(node)
        if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise UnsupportedModelError(f"MaxPool node '{node.name}' with ceil_mode/dilations")
        k = attrs["kernel_shape"]
        self.pool(node, "MAX_POOL_2D", k, attrs.get("strides", [1, 1]), fill="min")

    def op_AveragePool(self, node):
        attrs = _attrs(node)
        k = attrs["kernel_shape"]
        strides = attrs.get("strides", [1, 1])
        if attrs.get("ceil_mode", 0):
            raise UnsupportedModelError(f"AveragePool node '{node.name}' with ceil_mode")
        if any(attrs.get("pads", [0])) and not attrs.get("count_include_pad", 0):
            x = self.nhwc(node.input[0])
            _, h, w, _ = self.tfl_shape(x)
            if list(attrs["pads"]) != self.same_pads((h, w), k, strides, (1, 1)):
                raise UnsupportedModelError(f"AveragePool node '{node.name}' with its pads")
        self.pool(node, "AVERAGE_POOL_2D", k, strides)

    def reduce_spatial(self, node, opname: str, keepdims: bool):
        x, quant = self.operand(
            node.input[0], node.output[0], self.nhwc(node.input[0]), opname == "REDUCE_MAX"
        )
        n, _, _, c = self.tfl_shape(x)
        axes = self.m.constant(self.fresh("axes"), np.asarray([1, 2], np.int32))
        if keepdims:
            out = self.nhwc_out(node.output[0], (n, c, 1, 1), quant)
        else:
            out = self.new(node.output[0], (n, c), quant, False)
        self.emit(opname, [x.index, axes], [out.index], "ReducerOptions", keepDims=keepdims)
        self.vals[node.output[0]] = out

    def op_GlobalAveragePool(self, node):
        self.reduce_spatial(node, "MEAN", True)

    def op_GlobalMaxPool(self, node):
        self.reduce_spatial(node, "REDUCE_MAX", True)

    def op_ReduceMean(self, node):
        attrs = _attrs(node)
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.required_const(node, 1).tolist()
        rank = len(self.vals[node.input[0]].shape)
        axes = sorted(a % rank for a in (axes or []))
        if rank != 4 or axes != [2, 3]:
            raise UnsupportedModelError(f"ReduceMean node '{node.name}' over axes {axes}")
        self.reduce_spatial(node, "MEAN", bool(attrs.get("keepdims", 1)))

    def op_BatchNormalization(self, node):
        scale, bias, mean, var = (self.required_const(node, i) for i in range(1, 5))
        eps = _attrs(node).get("epsilon", 1e-5)
        mul = scale / np.sqrt(var + eps)
        add = bias - mean * mul
        rank = len(self.vals[node.input[0]].shape)
        shape = (-1,) + (1,) * (rank - 2)
        m_name, a_name = f"{node.name}__bn_mul", f"{node.name}__bn_add"
        mid = f"{node.output[0]}__bn"
        self.view.consts[m_name] = mul.reshape(shape).astype(np.float32)
        self.view.consts[a_name] = add.reshape(shape).astype(np.float32)
        self.shapes[mid] = self.shapes[node.output[0]]
        make = onnx.helper.make_node
        self.binary(make("Mul", [node.input[0], m_name], [mid], name=f"{node.name}_mul"), "MUL")
        self.binary(
            make("Add", [mid, a_name], list(node.output[:1]), name=f"{node.name}_add"), "ADD"
        )

    def op_Flatten(self, node):
        axis = _attrs(node).get("axis", 1)
        self.reshape_to(node, self.shapes[node.output[0]], axis)

    def reshape_to(self, node, shape, _axis=None):
        x = self.onnx_layout(node.input[0])
        self.vals[node.output[0]] = self.reshape(x, shape)

    def op_Reshape(self, node):
        # The output's static shape (shape inference resolved it) is the target shape.
        self.reshape_to(node, self.shapes[node.output[0]])

    op_Squeeze = op_Reshape
    op_Unsqueeze = op_Reshape

    def op_Transpose(self, node):
        perm = _attrs(node).get("perm")
        x = self.onnx_layout(node.input[0])
        if perm is None:
            perm = list(reversed(range(len(x.shape))))
        if tuple(perm) == NHWC_TO_NCHW and len(x.shape) == 4:
            # An NHWC tensor going NCHW is what the converter carries anyway: relabel it.
            shape = tuple(self.tfl_shape(x)[p] for p in perm)
            self.vals[node.output[0]] = _Val(x.index, shape, True)
            return
        self.vals[node.output[0]] = self.transpose(x, perm, node.output[0], False)

    def op_Concat(self, node):
        axis = _attrs(node)["axis"]
        names = list(node.input)
        if any(self.const(n) is not None for n in names):
            raise UnsupportedModelError(f"Concat node '{node.name}' with a constant input")
        vals = [self.vals[n] for n in names]
        rank = len(vals[0].shape)
        axis %= rank
        quant = self.out_quant(names, node.output[0])
        nhwc = rank == 4 and any(v.nhwc for v in vals)
        vals = [self.transposed(v, nhwc) for v in vals]
        tfl_axis = NCHW_TO_NHWC.index(axis) if nhwc else axis
        vals = [self.as_int(v, quant) if quant else self.as_float(v) for v in vals]
        shape = list(self.tfl_shape(vals[0]))
        shape[tfl_axis] = sum(self.tfl_shape(v)[tfl_axis] for v in vals)
        out = self.new(node.output[0], shape, quant, nhwc, self.shapes[node.output[0]])
        inputs = [v.index for v in vals]
        self.emit("CONCATENATION", inputs, [out.index], "ConcatenationOptions", axis=tfl_axis)
        self.vals[node.output[0]] = out

    def op_Pad(self, node):
        attrs = _attrs(node)
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = attrs.get("pads")
        if pads is None:
            pads = self.required_const(node, 1).tolist()
        value = 0.0
        if len(node.input) > 2 and node.input[2]:
            value = float(self.required_const(node, 2))
        if mode != "constant" or value != 0.0:
            raise UnsupportedModelError(f"Pad node '{node.name}' ({mode}, value {value})")
        x = self.vals[node.input[0]]
        rank = len(x.shape)
        pairs = [[pads[i], pads[i + rank]] for i in range(rank)]
        if x.nhwc:
            pairs = [pairs[p] for p in NCHW_TO_NHWC]
        x, quant = self.operand(node.input[0], node.output[0], x, same_grid=True)
        shape = [d + a + b for d, (a, b) in zip(self.tfl_shape(x), pairs, strict=True)]
        out = self.new(node.output[0], shape, quant, x.nhwc, self.shapes[node.output[0]])
        self.pad(x, out, pairs)
        self.vals[node.output[0]] = out


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def convert(
    model: onnx.ModelProto, io_dtype: str = "float32", per_channel_fc: bool = True
) -> bytes:
    """Convert an FP32 or Q/DQ INT8 ONNX model to a ``.tflite`` file's bytes.

    Args:
        model: The stage's ONNX model (static shapes).
        io_dtype: ``float32`` (float inputs and outputs), or ``int8``/``uint8`` (integer
            I/O on the model's input and output grids; INT8 models only).
        per_channel_fc: INT8 fully-connected weights per output channel, as the Q/DQ model
            has them (LiteRT 2.x); ``False`` re-quantizes them per tensor, for older runtimes
            and ``edgetpu_compiler``.

    Raises:
        UnsupportedModelError: An op, attribute or dynamic shape the converter does not map.
    """
    try:
        shapes = _shapes(model)
        view = float_view(model)
    except (ValueError, KeyError, onnx.onnx_cpp2py_export.shape_inference.InferenceError) as err:
        raise UnsupportedModelError(str(err)) from None
    for node in view.graph:
        for out in node.output:
            if out and out not in shapes:
                raise UnsupportedModelError(
                    f"tensor '{out}' of node '{node.name}' has no static shape"
                )
    converter = _Converter(view, shapes, io_dtype if view.quantized else "float32", per_channel_fc)
    converter.graph_inputs = list(model.graph.input)
    converter.pending_hard_sigmoid = set()
    try:
        flat = converter.convert()
    except KeyError as err:
        raise UnsupportedModelError(
            f"the tensor {err} has no producer the converter knows"
        ) from None
    if converter.pending_hard_sigmoid:
        raise UnsupportedModelError("a HardSigmoid whose HardSwish pattern was not completed")
    return flat.serialise(f"edgec ONNX->TFLite ({'int8' if view.quantized else 'fp32'})")


def model_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor shape inference resolves (exposed for tests)."""
    return _shapes(model)


def numpy_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The initializers as arrays (exposed for tests)."""
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
