"""Load and validate a teacher model: it exists, parses, passes the checker, has static shapes.

Dynamic input dimensions are fixed with ``--input-shape``; without it a dynamic model is
refused with a message that names the input and shows the flag to pass. After shapes are fixed,
ONNX shape inference runs in strict mode so later passes and the cost model see every shape.

Only tensors flow between edgec's stages: outputs of other types (a scikit-learn classifier's
``ZipMap`` probabilities, a sequence) are dropped with a note when a tensor output remains, and
a model whose inputs, or all of whose outputs, are not numeric tensors is refused by name, as is
an input of a type the bundle's runtime cannot carry (``float64``, ``bool``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from edgec.errors import BadInputError
from edgec.runtime import codec


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output.

    Attributes:
        name: Tensor name.
        shape: Dimensions; ``None`` entries are dynamic (only possible for outputs).
        dtype: NumPy dtype name (``float32``).
        layout: ``NCHW``/``NHWC`` for 4-D image-like tensors, else ``None``.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    layout: str | None = None

    def to_json(self) -> dict:
        """The manifest form."""
        data = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.layout:
            data["layout"] = self.layout
        return data


@dataclass(frozen=True)
class LoadedModel:
    """A validated model with static input shapes.

    Attributes:
        path: Where it was loaded from.
        sha256: Hash of the file's bytes.
        proto: The model, shapes fixed and inferred.
        inputs: Real inputs (initializers listed as inputs are excluded).
        outputs: Graph outputs.
        notes: One line each about what loading changed (e.g. a dropped non-tensor output).
    """

    path: Path
    sha256: str
    proto: onnx.ModelProto
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    notes: tuple[str, ...] = ()

    @property
    def opset(self) -> int:
        """The default-domain opset version."""
        return next((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _dims(type_proto: onnx.TypeProto) -> tuple[int | str | None, ...] | None:
    if not type_proto.tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _dtype_name(type_proto: onnx.TypeProto) -> str:
    elem = type_proto.tensor_type.elem_type
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name
    except (KeyError, TypeError):
        return onnx.TensorProto.DataType.Name(elem).lower()


def guess_layout(shape: tuple[int | None, ...]) -> str | None:
    """``NCHW`` or ``NHWC`` for 4-D tensors whose channel axis looks like 1, 3 or 4 channels."""
    if len(shape) != 4:
        return None
    if shape[1] in (1, 3, 4):
        return "NCHW"
    if shape[3] in (1, 3, 4):
        return "NHWC"
    return None


def _parse(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise BadInputError(f"Model file {path} does not exist.")
    if not path.is_file():
        raise BadInputError(f"Model path {path} is not a file.")
    data = path.read_bytes()
    if not data:
        raise BadInputError(f"Model file {path} is empty.")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        raise BadInputError(
            f"Model file {path} is not a valid ONNX model: it does not parse "
            "(is it truncated or another format?)."
        ) from None
    # A random or truncated byte string can parse as an (almost) empty protobuf.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise BadInputError(
            f"Model file {path} is not a valid ONNX model: it has no graph "
            "(is it truncated or another format?)."
        )
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (FileNotFoundError, OSError) as err:
        raise BadInputError(
            f"Model {path} refers to external weights that cannot be read: {err}."
        ) from None
    return model


def _one_sentence(err: Exception, limit: int = 240) -> str:
    """A tool's multi-line error as one line ending in a full stop."""
    text = " ".join(str(err).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text.rstrip(" :") + ("" if text.endswith(".") else ".")


#: The oldest default-domain opset ONNX Runtime has kernels for.
MIN_OPSET = 7


def _check(model: onnx.ModelProto, path: Path) -> None:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < MIN_OPSET:
        raise BadInputError(
            f"Model {path.name} uses ONNX opset {opset}; ONNX Runtime runs opset {MIN_OPSET} and "
            "newer: re-export it at a newer opset (e.g. torch.onnx.export(..., opset_version=17))."
        )
    if model.ir_version < 4:
        # IR 3 required every initializer to be a graph input; IR 4 only dropped that rule, so
        # the same graph is valid as IR 4 (canonicalisation raises old IR versions anyway).
        model.ir_version = 4
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise BadInputError(f"Model {path} fails the ONNX checker: {_one_sentence(err)}") from None
    except ValueError as err:  # e.g. models above the 2 GB protobuf limit
        raise BadInputError(f"Model {path} cannot be checked: {err}") from None


TRAINING_DOMAIN = "ai.onnx.preview.training"


def _elem_name(elem: int) -> str:
    return onnx.TensorProto.DataType.Name(elem).lower()


def _type_name(type_proto: onnx.TypeProto) -> str:
    """ONNX's spelling of a type, e.g. ``tensor(float)`` or ``seq(map(int64,tensor(float)))``."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({_elem_name(type_proto.tensor_type.elem_type)})"
    if kind == "sequence_type":
        return f"seq({_type_name(type_proto.sequence_type.elem_type)})"
    if kind == "map_type":
        key = _elem_name(type_proto.map_type.key_type)
        return f"map({key},{_type_name(type_proto.map_type.value_type)})"
    if kind == "optional_type":
        return f"optional({_type_name(type_proto.optional_type.elem_type)})"
    return kind or "no type"


def _is_numeric_tensor(type_proto: onnx.TypeProto) -> bool:
    if type_proto.WhichOneof("value") != "tensor_type":
        return False
    elem = type_proto.tensor_type.elem_type
    return elem not in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING)


def _prune_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is used (after outputs were dropped)."""
    while True:
        used = {o.name for o in graph.output}
        for node in graph.node:
            used.update(node.input)
            for attr in node.attribute:  # subgraphs read outer values by name
                for sub in [attr.g, *attr.graphs]:
                    for inner in sub.node:
                        used.update(inner.input)
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def keep_tensor_io(model: onnx.ModelProto, path: Path) -> list[str]:
    """Drop outputs that are not numeric tensors (with a note each) and the nodes only they used.

    Returns:
        One note per dropped output.

    Raises:
        BadInputError: An input is not a numeric tensor (or not one the runtime carries), no
            output is, or the graph uses training operators.
    """
    for value in _real_inputs(model):
        if not _is_numeric_tensor(value.type):
            raise BadInputError(
                f"Input '{value.name}' of {path.name} is of type {_type_name(value.type)}; "
                "edgec compiles models whose inputs are numeric tensors."
            )
        dtype = _dtype_name(value.type)
        if dtype not in codec.DTYPES:
            raise BadInputError(
                f"Input '{value.name}' of {path.name} is {dtype}, which edgec's runtime does not "
                f"carry (it carries {', '.join(codec.DTYPES)}); convert that input, e.g. to "
                "float32."
            )
    training = sorted({n.op_type for n in model.graph.node if n.domain == TRAINING_DOMAIN})
    if training:
        raise BadInputError(
            f"{path.name} uses training operators ({', '.join(training)} from "
            f"{TRAINING_DOMAIN}); edgec compiles inference models: export the model for inference."
        )
    graph = model.graph
    dropped = [o for o in graph.output if not _is_numeric_tensor(o.type)]
    if not dropped:
        return []
    if len(dropped) == len(graph.output):
        types = ", ".join(f"'{o.name}' {_type_name(o.type)}" for o in dropped)
        raise BadInputError(
            f"No output of {path.name} is a numeric tensor ({types}); edgec compiles models "
            "with at least one."
        )
    for output in dropped:
        graph.output.remove(output)
    _prune_dead_nodes(graph)
    names = {o for n in graph.node for o in n.output}
    kept = [v for v in graph.value_info if v.name in names and _is_numeric_tensor(v.type)]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return [
        f"output '{o.name}' of type {_type_name(o.type)} dropped: only tensors flow between stages"
        for o in dropped
    ]


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
# Ops whose constant inputs are weights: an infinity there is corruption. Elsewhere it can be
# meant (Clip's max=inf, an attention mask of -inf added before Softmax), so only NaN counts.
_WEIGHT_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "Einsum",
        "BatchNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "PRelu",
        "QuantizeLinear",
        "DequantizeLinear",
        "LSTM",
        "GRU",
        "RNN",
    }
)


def check_finite_weights(model: onnx.ModelProto, path: Path) -> None:
    """Refuse weights that hold NaN or infinity: the bundle would answer NaN for every frame.

    Every floating-point initializer and ``Constant`` value (of the main graph and its
    subgraphs) is checked: NaN is refused anywhere, infinity where an op takes the tensor as a
    weight (:data:`_WEIGHT_OPS`).

    Raises:
        BadInputError: Names the first initializer with a non-finite value.
    """
    graphs = list(_graphs(model.graph))
    weights = {name for g in graphs for n in g.node if n.op_type in _WEIGHT_OPS for name in n.input}
    tensors = [(init.name, init) for graph in graphs for init in graph.initializer]
    tensors += [
        (node.output[0] if node.output else node.name, attr.t)
        for graph in graphs
        for node in graph.node
        if node.op_type == "Constant"
        for attr in node.attribute
        if attr.type == onnx.AttributeProto.TENSOR
    ]
    for name, tensor in tensors:
        if tensor.data_type not in _FLOAT_TYPES:
            continue
        values = onnx.numpy_helper.to_array(tensor, base_dir=str(path.parent))
        bad = np.isnan(values) | (np.isinf(values) if name in weights else False)
        if bad.any():
            raise BadInputError(
                f"Model {path.name} has non-finite weights: initializer {name!r} holds "
                f"{int(bad.sum())} NaN or infinite value(s) (e.g. {values[bad].flat[0]}); fix "
                "or retrain the model, a bundle built from it would answer NaN."
            )


def _graphs(graph: onnx.GraphProto):
    """``graph`` and every subgraph in it (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _fix_shapes(
    model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], path: Path
) -> onnx.ModelProto:
    inputs = {i.name: i for i in _real_inputs(model)}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise BadInputError(
            f"--input-shape names '{unknown[0]}', which is not an input of {path.name} "
            f"(inputs: {', '.join(inputs)})."
        )
    for name, dims in shapes.items():
        current = _dims(inputs[name].type)
        if current is not None and len(current) != len(dims):
            raise BadInputError(
                f"--input-shape gives {name} {len(dims)} dimensions but the model's input has "
                f"{len(current)} ({_show(current)})."
            )
        for have, want in zip(current or (), dims, strict=False):
            if isinstance(have, int) and have != want:
                raise BadInputError(
                    f"--input-shape {name}={'x'.join(map(str, dims))} conflicts with the "
                    f"model's fixed shape {_show(current)}."
                )
        shape_proto = inputs[name].type.tensor_type.shape
        shape_proto.ClearField("dim")
        for d in dims:
            shape_proto.dim.add().dim_value = d
    for name, spec in inputs.items():
        dims = _dims(spec.type)
        if dims is None or any(not isinstance(d, int) for d in dims):
            example = "x".join(str(d) if isinstance(d, int) else "1" for d in dims or (1,))
            raise BadInputError(
                f"Input '{name}' of {path.name} has a dynamic shape {_show(dims)}; fix it with "
                f"--input-shape {name}={example} (the sizes you will deploy with)."
            )
    if shapes:
        # Stale intermediate shapes computed with the symbolic dims would conflict.
        del model.graph.value_info[:]
        for output in model.graph.output:
            output.type.tensor_type.ClearField("shape")
    return model


def _show(dims: tuple | None) -> str:
    if dims is None:
        return "[unknown rank]"
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _infer(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(
            model, check_type=True, strict_mode=True, data_prop=True
        )
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as err:
        raise BadInputError(
            f"Shape inference fails on {path.name} with the given input shapes: "
            f"{_one_sentence(err)}"
        ) from None


def load_model(path: Path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> LoadedModel:
    """Load, check, fix input shapes and infer shapes.

    Args:
        path: The ONNX file (external data is read from its folder).
        input_shapes: Static shapes for inputs, by name (``--input-shape``).

    Raises:
        BadInputError: Missing, unparsable or truncated file, checker failure, dynamic input
            without a shape, or a shape that conflicts with the model.
    """
    path = Path(path)
    model = _parse(path)
    _check(model, path)
    notes = keep_tensor_io(model, path)
    check_finite_weights(model, path)
    model = _fix_shapes(model, dict(input_shapes or {}), path)
    model = _infer(model, path)
    inputs = tuple(
        TensorSpec(i.name, _dims(i.type), _dtype_name(i.type), guess_layout(_dims(i.type)))
        for i in _real_inputs(model)
    )
    outputs = tuple(
        TensorSpec(
            o.name,
            tuple(d if isinstance(d, int) else None for d in (_dims(o.type) or ())),
            _dtype_name(o.type),
        )
        for o in model.graph.output
    )
    return LoadedModel(
        path=path,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        proto=model,
        inputs=inputs,
        outputs=outputs,
        notes=tuple(notes),
    )
