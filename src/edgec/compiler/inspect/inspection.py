"""``edgec inspect``: per-layer costs of a model on a target, and which backends take each op.

The model is loaded and validated like ``edgec compile`` does (``--input-shape`` for dynamic
inputs) and, unless ``canonical=False``, canonicalised first — the graph the backends will see.
Costs come from :func:`edgec.compiler.planning.cost_model.layer_costs` (a roofline estimate, source
``estimated``) for the target's preferred backend; op support from
:mod:`edgec.compiler.inspect.op_support` (documented lists, with their sources).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.inspect import op_support
from edgec.compiler.loading import load_model
from edgec.compiler.planning.cost_model import LayerCost, layer_costs
from edgec.errors import BadInputError
from edgec.targets import load_target


@dataclass(frozen=True)
class LayerReport(LayerCost):
    """One node of the inspected model: its cost (the cost model's fields) and what the backends
    make of it.

    Attributes:
        backends: Backend name -> whether its documented op list has this op.
        fusion: The fusion the canonical pipeline annotated (``Conv+Relu``), if any.
    """

    backends: dict[str, bool] = field(default_factory=dict)
    fusion: str | None = None

    def to_json(self) -> dict:
        """JSON-friendly form."""
        data = dataclasses.asdict(self)
        data["output_shape"] = list(self.output_shape)
        return data


@dataclass(frozen=True)
class InspectReport:
    """What ``edgec inspect`` prints.

    Attributes:
        model: The model file.
        target: Target name.
        backend: The backend whose compute unit the latency estimate assumes.
        precision: Precision of the estimate.
        canonical: Whether the canonical form was inspected.
        layers: One entry per node, in graph order.
        top: How many layers :meth:`top_layers` returns.
        sources: Where each backend's op list comes from.
    """

    model: str
    target: str
    backend: str
    precision: str
    canonical: bool
    layers: tuple[LayerReport, ...]
    top: int = 10
    sources: dict[str, str] = field(default_factory=op_support.sources)

    def totals(self) -> dict:
        """Sums over all layers, with the latency's source."""
        return {
            "nodes": len(self.layers),
            "macs": sum(x.macs for x in self.layers),
            "params": sum(x.params for x in self.layers),
            "activation_bytes": sum(x.activation_bytes for x in self.layers),
            "latency_ms": sum(x.latency_ms for x in self.layers),
            "latency_source": "estimated",
        }

    def top_layers(self) -> list[LayerReport]:
        """The ``top`` most expensive layers by estimated latency."""
        return sorted(self.layers, key=lambda x: x.latency_ms, reverse=True)[: self.top]

    def unsupported(self) -> dict[str, list[str]]:
        """Backend -> op types its documented list lacks (only backends missing some)."""
        missing: dict[str, set[str]] = {}
        for layer in self.layers:
            for backend, ok in layer.backends.items():
                if not ok:
                    missing.setdefault(backend, set()).add(layer.op)
        return {b: sorted(ops) for b, ops in missing.items()}

    def to_json(self) -> dict:
        """Machine-readable form for ``--json``."""
        return {
            "model": self.model,
            "target": self.target,
            "backend": self.backend,
            "precision": self.precision,
            "canonical": self.canonical,
            "totals": self.totals(),
            "top": [x.name for x in self.top_layers()],
            "unsupported": self.unsupported(),
            "sources": self.sources,
            "layers": [x.to_json() for x in self.layers],
        }


def _dtypes(model: onnx.ModelProto) -> dict[str, str]:
    found = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        elem = value.type.tensor_type.elem_type
        if elem:
            found[value.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name
    for init in model.graph.initializer:
        found[init.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).name
    return found


def _fusion(node: onnx.NodeProto) -> str | None:
    for prop in getattr(node, "metadata_props", ()):
        if prop.key == "edgec.fusion":
            return prop.value
    return None


def inspect_model(
    path: Path,
    target: str = "host",
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    canonical: bool = True,
    precision: str = "fp32",
    top: int = 10,
) -> InspectReport:
    """Per-layer costs and backend support of the model at ``path`` on ``target``.

    Raises:
        BadInputError: A bad model, target or shape (as for ``edgec compile``), or ``top < 1``.
    """
    if top < 1:
        raise BadInputError(f"--top must be at least 1, got {top}.")
    resolved = load_target(target)
    loaded = load_model(Path(path), input_shapes or {})
    model = canonicalize(loaded.proto) if canonical else loaded.proto
    backend = resolved.backends[0]
    dtypes = _dtypes(model)
    layers = []
    for node, cost in zip(
        model.graph.node, layer_costs(model, resolved, backend, precision), strict=True
    ):
        names = [n for n in (*node.input, *node.output) if n]
        node_dtypes = tuple(sorted({dtypes[n] for n in names if n in dtypes}))
        layers.append(
            LayerReport(
                **{
                    **dataclasses.asdict(cost),
                    "op": cost.op
                    if node.domain in ("", "ai.onnx")
                    else f"{node.domain}::{cost.op}",
                },
                backends={
                    b: op_support.supports(b, node.op_type, node.domain, node_dtypes)
                    for b in op_support.BACKENDS
                },
                fusion=_fusion(node),
            )
        )
    return InspectReport(
        model=str(path),
        target=resolved.name,
        backend=backend,
        precision=precision,
        canonical=canonical,
        layers=tuple(layers),
        top=top,
    )
