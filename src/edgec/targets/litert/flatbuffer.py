"""A TFLite flatbuffer under construction: tensors, buffers, operators, serialised at the end.

Written against the schema classes ``ai_edge_litert`` ships (``schema_py_generated``, the
object API), so the file is what LiteRT's own converter would write for the same graph: one
subgraph, buffer 0 empty, constant data in buffers, per-channel quantization on
``quantized_dimension``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgec.targets.litert.requirement import litert_module

_NUMPY_TYPES = {
    np.dtype(np.float32): "FLOAT32",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.bool_): "BOOL",
}


def schema():
    """The TFLite schema module of ``ai_edge_litert``.

    Raises:
        MissingDependencyError: ``ai-edge-litert`` is not installed.
    """
    return litert_module("schema_py_generated")


@dataclass(frozen=True)
class Quant:
    """Affine quantization of a tensor: ``real = scale * (q - zero_point)``.

    Attributes:
        scale: One scale (per-tensor) or one per channel along ``axis``.
        zero_point: As ``scale``.
        axis: The channel dimension of per-channel parameters.
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    @classmethod
    def of(cls, scale, zero_point, axis: int = 0) -> Quant:
        """From scalars or arrays."""
        s = np.atleast_1d(np.asarray(scale, dtype=np.float64)).astype(float)
        z = np.atleast_1d(np.asarray(zero_point, dtype=np.int64)).astype(int)
        if z.size == 1 and s.size > 1:
            z = np.repeat(z, s.size)
        return cls(tuple(s.tolist()), tuple(z.tolist()), axis)

    @property
    def per_tensor(self) -> bool:
        """One scale for the whole tensor."""
        return len(self.scale) == 1

    def shifted(self, delta: int) -> Quant:
        """The same grid with zero points moved by ``delta`` (uint8 <-> int8)."""
        return Quant(self.scale, tuple(z + delta for z in self.zero_point), self.axis)


class FlatModel:
    """One subgraph being written: add tensors and operators, then :meth:`serialise`."""

    def __init__(self):
        self.s = schema()
        self.tensors: list = []
        self.buffers: list = [self.s.BufferT()]
        self.operators: list = []
        self.opcodes: dict[tuple[int, int], int] = {}
        self.opcode_list: list = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.op_names: list[str] = []

    def tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype | type,
        quant: Quant | None = None,
        data: np.ndarray | None = None,
    ) -> int:
        """Add a tensor (a constant when ``data`` is given); return its index."""
        t = self.s.TensorT()
        t.name = name
        t.shape = np.asarray(shape, dtype=np.int32)
        t.type = getattr(self.s.TensorType, _NUMPY_TYPES[np.dtype(dtype)])
        if data is not None:
            buffer = self.s.BufferT()
            raw = np.ascontiguousarray(data.astype(np.dtype(dtype), copy=False))
            buffer.data = np.frombuffer(raw.tobytes(), dtype=np.uint8)
            self.buffers.append(buffer)
            t.buffer = len(self.buffers) - 1
        if quant is not None:
            q = self.s.QuantizationParametersT()
            q.scale = np.asarray(quant.scale, dtype=np.float32)
            q.zeroPoint = np.asarray(quant.zero_point, dtype=np.int64)
            q.quantizedDimension = quant.axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def constant(self, name: str, value: np.ndarray, quant: Quant | None = None) -> int:
        """A constant tensor holding ``value`` (its dtype is the tensor's)."""
        value = np.asarray(value)
        return self.tensor(name, value.shape, value.dtype, quant, value)

    def dtype(self, index: int) -> str:
        """The tensor's type name (``FLOAT32``, ``INT8``, ...)."""
        code = self.tensors[index].type
        return next(k for k, v in vars(self.s.TensorType).items() if v == code)

    def shape(self, index: int) -> tuple[int, ...]:
        """The tensor's shape."""
        return tuple(int(d) for d in self.tensors[index].shape)

    def quant(self, index: int) -> Quant | None:
        """The tensor's quantization, if any."""
        q = self.tensors[index].quantization
        if q is None or q.scale is None:
            return None
        return Quant(tuple(float(v) for v in q.scale), tuple(int(v) for v in q.zeroPoint))

    def op(
        self,
        name: str,
        inputs: list[int],
        outputs: list[int],
        options: object | None = None,
        options_type: str | None = None,
        version: int = 1,
    ) -> None:
        """Append an operator (``name`` is a ``BuiltinOperator`` member)."""
        code = getattr(self.s.BuiltinOperator, name)
        key = (code, version)
        if key not in self.opcodes:
            opcode = self.s.OperatorCodeT()
            opcode.builtinCode = code
            opcode.deprecatedBuiltinCode = min(code, 127)
            opcode.version = version
            self.opcodes[key] = len(self.opcode_list)
            self.opcode_list.append(opcode)
        op = self.s.OperatorT()
        op.opcodeIndex = self.opcodes[key]
        op.inputs = np.asarray(inputs, dtype=np.int32)
        op.outputs = np.asarray(outputs, dtype=np.int32)
        if options is not None:
            op.builtinOptionsType = getattr(self.s.BuiltinOptions, options_type)
            op.builtinOptions = options
        self.operators.append(op)
        self.op_names.append(name)

    def serialise(self, description: str = "edgec") -> bytes:
        """The ``.tflite`` file's bytes."""
        import flatbuffers

        sub = self.s.SubGraphT()
        sub.tensors, sub.operators = self.tensors, self.operators
        sub.inputs = np.asarray(self.inputs, dtype=np.int32)
        sub.outputs = np.asarray(self.outputs, dtype=np.int32)
        sub.name = "main"
        model = self.s.ModelT()
        model.version = 3
        model.operatorCodes = self.opcode_list
        model.subgraphs = [sub]
        model.buffers = self.buffers
        model.description = description
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def operator_names(data: bytes) -> list[str]:
    """The builtin operator name of every operator in a ``.tflite`` file, in order."""
    s = schema()
    model = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    return [names[codes[op.opcodeIndex]] for sub in model.subgraphs for op in sub.operators]


def tensor_types(data: bytes) -> dict[str, str]:
    """Every non-constant tensor's type (``INT8``, ``FLOAT32``...) by name, I/O included."""
    s = schema()
    model = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
    types = {v: k for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    found = {}
    for sub in model.subgraphs:
        for t in sub.tensors:
            buffer = model.buffers[t.buffer]
            if buffer.data is None or len(buffer.data) == 0:
                found[t.name.decode() if isinstance(t.name, bytes) else t.name] = types[t.type]
    return found


def io_tensor_names(data: bytes) -> set[str]:
    """The names of the model's input and output tensors."""
    s = schema()
    model = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
    sub = model.subgraphs[0]
    names = set()
    for index in [*sub.inputs, *sub.outputs]:
        name = sub.tensors[index].name
        names.add(name.decode() if isinstance(name, bytes) else name)
    return names
