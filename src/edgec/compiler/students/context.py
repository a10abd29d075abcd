"""What the ONNX -> torch converter builds and what its op translators see.

:class:`OnnxModule` is the module being built (a straight-line program of :class:`Step` over
named values); :class:`ConversionContext` is the translators' view of the graph (constants,
static shapes, the current node) and how they append steps. The translators live in
:mod:`edgec.compiler.students.ops` and ``shape_ops``; the driver that walks the graph is
:mod:`edgec.compiler.students.convert`. Keeping these here lets the translators import them
without importing the driver that imports the translators.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn


class UnsupportedModelError(Exception):
    """The teacher has a node the converter cannot represent.

    Attributes:
        op: The node's op type (or ``model`` for whole-model reasons).
        node: The node's name.
        reason: Why.
    """

    def __init__(self, op: str, node: str, reason: str):
        self.op, self.node, self.reason = op, node, reason
        if op == "model":
            super().__init__(f"the model {reason}")
        else:
            super().__init__(f"ONNX op {op} (node '{node or '?'}') {reason}")


@dataclass(frozen=True)
class Step:
    """One node of the program that ``forward`` runs.

    Attributes:
        op: The ONNX op type it came from (for messages).
        inputs: Names of the values it reads (graph values, or constants held as parameters).
        outputs: Names of the values it writes.
        layer: Key of a submodule in :attr:`OnnxModule.layers` to call, or ``None``.
        fn: A torch function to call when ``layer`` is ``None``; it holds no modules or
            tensors, so a deep copy of the module stays self-contained.
    """

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    layer: str | None = None
    fn: Any = None


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module: a straight-line program over named values.

    Attributes:
        layers: The weight-holding layers, keyed by sanitised node name.
        consts: Float constants used as data, as parameters.
        steps: The program, in topological order.
        input_names: The graph input (students are derived for single-input models).
        output_names: Graph outputs.
        head: Keys of the layers that produce a graph output (never pruned).
        unwrapped: ``(const key, channel axis)`` for constants that carry channels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()
        self.consts = nn.ParameterDict()
        self.steps: list[Step] = []
        self.input_names: tuple[str, ...] = ()
        self.output_names: tuple[str, ...] = ()
        self.head: tuple[str, ...] = ()
        self.unwrapped: dict[str, int] = {}
        self._const_of: dict[str, str] = {}

    def forward(self, x: torch.Tensor):
        """Run the program on the one graph input; one output is a tensor, several a tuple."""
        env: dict[str, Any] = {self.input_names[0]: x}
        for name, key in self._const_of.items():
            env[name] = self.consts[key]
        for step in self.steps:
            call = self.layers[step.layer] if step.layer is not None else step.fn
            result = call(*(env[name] for name in step.inputs))
            if len(step.outputs) == 1:
                env[step.outputs[0]] = result
            else:
                env.update(zip(step.outputs, result, strict=False))
        outs = tuple(env[name] for name in self.output_names)
        return outs[0] if len(outs) == 1 else outs

    def unwrapped_parameters(self) -> list[tuple[nn.Parameter, int]]:
        """Constants that carry channels, in torch-pruning's ``unwrapped_parameters`` form."""
        return [(self.consts[key], axis) for key, axis in self.unwrapped.items()]

    def head_layers(self) -> list[nn.Module]:
        """The layers that produce graph outputs (the classifier head)."""
        return [self.layers[key] for key in self.head]


class ConversionContext:
    """What op translators see: constants, static shapes, and how to add steps.

    Attributes:
        model: The ONNX model being converted.
        opset: Its default-domain opset.
        module: The module being built.
    """

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.module = OnnxModule()
        graph = model.graph
        self._constants: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in graph.initializer
        }
        for node in graph.node:
            if node.op_type == "Constant":
                self._constants[node.output[0]] = _constant_node_value(node)
        self._shapes: dict[str, tuple[int, ...]] = {}
        for value in (*graph.input, *graph.value_info, *graph.output):
            dims = value.type.tensor_type.shape.dim
            if value.type.tensor_type.HasField("shape"):
                self._shapes[value.name] = tuple(d.dim_value or -1 for d in dims)
        self._names: set[str] = set()
        self.node: onnx.NodeProto | None = None

    # -- reading the graph -------------------------------------------------------------------
    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or ``Constant`` output, else ``None``."""
        return self._constants.get(name) if name else None

    def require_constant(self, name: str, what: str) -> np.ndarray:
        """The constant value of input ``name``; unsupported when it is computed."""
        value = self.constant(name)
        if value is None:
            self.unsupported(f"has a computed {what}; only a constant {what} is supported")
        return value

    def shape(self, name: str) -> tuple[int, ...] | None:
        """The static shape of a value (``-1`` for unknown dims), if inference gave one."""
        if name in self._constants:
            return tuple(self._constants[name].shape)
        return self._shapes.get(name)

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute of the current node."""
        for attribute in self.node.attribute:
            if attribute.name == name:
                return onnx.helper.get_attribute_value(attribute)
        return default

    def fold(self, node: onnx.NodeProto) -> None:
        """Evaluate a node whose inputs are all constants (ONNX reference evaluator)."""
        from onnx.reference import ReferenceEvaluator

        feeds = {name: self._constants[name] for name in node.input if name}
        try:
            values = ReferenceEvaluator(node).run(None, feeds)
        except Exception as err:  # the reference evaluator raises many types
            self.unsupported(f"on constants cannot be evaluated ({type(err).__name__})")
        for name, value in zip(node.output, values, strict=False):
            if name:
                self._constants[name] = np.asarray(value)

    def unsupported(self, reason: str):
        """Raise :class:`UnsupportedModelError` for the current node."""
        raise UnsupportedModelError(self.node.op_type, self.node.name, reason)

    # -- building the module -------------------------------------------------------------------
    def value(self, name: str) -> str:
        """Use input ``name`` as a tensor; a float constant becomes a trainable parameter."""
        if name in self._constants and name not in self.module._const_of:
            array = self._constants[name]
            if not np.issubdtype(array.dtype, np.floating):
                self.unsupported(f"reads the non-float constant '{name}' as data")
            key = self._key(f"c_{name}")
            tensor = torch.from_numpy(np.array(array, dtype=np.float32))
            self.module.consts[key] = nn.Parameter(tensor)
            self.module._const_of[name] = key
            axis = self._channel_axis(array.shape)
            if axis is not None:
                self.module.unwrapped[key] = axis
        return name

    def add_layer(self, layer: nn.Module, inputs: list[str], outputs: list[str] | None = None):
        """Append a step that calls a weight-holding layer."""
        key = self._key(self.node.name or self.node.op_type)
        self.module.layers[key] = layer
        self._append(Step(self.node.op_type, tuple(inputs), self._outputs(outputs), layer=key))

    def add_fn(self, fn: Any, inputs: list[str], outputs: list[str] | None = None):
        """Append a step that calls a torch function."""
        self._append(Step(self.node.op_type, tuple(inputs), self._outputs(outputs), fn=fn))

    def _outputs(self, outputs: list[str] | None) -> tuple[str, ...]:
        return tuple(outputs if outputs is not None else [self.node.output[0]])

    def _append(self, step: Step) -> None:
        for name in step.inputs:
            if name in self._constants:
                self.value(name)
        self.module.steps.append(step)

    def _key(self, text: str) -> str:
        base = re.sub(r"\W", "_", text).strip("_") or "node"
        key, index = base, 1
        while key in self._names:
            index += 1
            key = f"{base}_{index}"
        self._names.add(key)
        return key

    def _channel_axis(self, shape: tuple[int, ...]) -> int | None:
        """The axis of a constant that lines up with the channel axis (1) of the node output."""
        out = self.shape(self.node.output[0]) if self.node.output else None
        if not shape or out is None or len(out) < 2:
            return None
        axis = len(shape) - len(out) + 1
        if 0 <= axis < len(shape) and shape[axis] > 1:
            return axis
        return None


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    attribute = node.attribute[0]
    if attribute.name == "value":
        return numpy_helper.to_array(attribute.t)
    value = onnx.helper.get_attribute_value(attribute)
    return np.array(value, dtype=np.float32 if "float" in attribute.name else np.int64)
