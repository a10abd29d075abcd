"""Split a model into a device prefix and a gateway suffix at a cut.

A *cut* after node ``i`` (in topological order) is the set of tensors produced by nodes
``0..i`` (or graph inputs) that nodes ``i+1..`` consume. It is valid when no graph output is
produced before it (the device would have to send those too) and at most ``max_tensors``
tensors cross. Two extra candidates bracket the list: *gateway-only* (the graph inputs cross)
and *device-only* (nothing crosses; the device runs everything).

Splitting uses ONNX's own ``onnx.utils.Extractor``: the prefix maps the graph inputs to the
crossing tensors, the suffix maps the crossing tensors to the graph outputs. The model must be
shape-inferred so the crossing tensors have types and shapes. What a cut costs on the link is
the planner's business (:mod:`edgec.compiler.planning.link`), not this pass's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx.utils

GATEWAY_ONLY = "gateway-only"
DEVICE_ONLY = "device-only"


@dataclass(frozen=True)
class Cut:
    """A place to split a model.

    Attributes:
        name: ``gateway-only``, ``device-only`` or the crossing tensors joined by ``+``.
        after_node: Index of the last node on the device (-1 for gateway-only).
        tensors: Names of the tensors that cross the link.
        shapes: Their shapes.
        dtypes: Their NumPy dtype names.
    """

    name: str
    after_node: int
    tensors: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]


def _value_types(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], str]]:
    types = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim)
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        except (KeyError, TypeError):
            continue
        types[value.name] = (dims, dtype)
    return types


def candidate_cuts(model: onnx.ModelProto, max_tensors: int = 1) -> list[Cut]:
    """Every valid cut of a shape-inferred model, from gateway-only to device-only.

    Cuts whose crossing tensors have unknown shapes are skipped (their size is unknown).
    """
    graph = model.graph
    types = _value_types(model)
    initializers = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    last_use: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            if name:
                last_use[name] = index

    def make(name: str, after: int, tensors: list[str]) -> Cut | None:
        if any(t not in types or 0 in types[t][0] for t in tensors):
            return None
        return Cut(
            name=name,
            after_node=after,
            tensors=tuple(tensors),
            shapes=tuple(types[t][0] for t in tensors),
            dtypes=tuple(types[t][1] for t in tensors),
        )

    cuts = [make(GATEWAY_ONLY, -1, inputs)]
    live = [name for name in inputs]  # produced so far and still needed later
    produced_outputs = False
    for index, node in enumerate(nodes[:-1]):
        live = [t for t in live if last_use.get(t, -1) > index]
        fresh = [o for o in node.output if o and last_use.get(o, -1) > index]
        live.extend(fresh)
        produced_outputs |= any(o in outputs for o in node.output)
        if produced_outputs or not live or len(live) > max_tensors:
            continue
        cuts.append(make("+".join(live), index, list(live)))
    cuts.append(Cut(name=DEVICE_ONLY, after_node=len(nodes) - 1, tensors=(), shapes=(), dtypes=()))
    return [cut for cut in cuts if cut is not None]


def split_model(model: onnx.ModelProto, cut: Cut) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The device prefix and the gateway suffix of ``model`` at ``cut``.

    Raises:
        ValueError: For the two trivial cuts, which have no split.
    """
    if cut.name in (GATEWAY_ONLY, DEVICE_ONLY):
        raise ValueError(f"The {cut.name} cut does not split the model.")
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    outputs = [o.name for o in model.graph.output]
    extractor = onnx.utils.Extractor(model)
    prefix = extractor.extract_model(inputs, list(cut.tensors))
    suffix = extractor.extract_model(list(cut.tensors), outputs)
    for part, name in ((prefix, "device"), (suffix, "gateway")):
        part.graph.name = f"{model.graph.name or 'model'}_{name}"
        onnx.checker.check_model(part)
    return prefix, suffix
