"""ONNX -> torch for training: the canonical teacher as an ``nn.Module`` torch-pruning understands.

edgec converts the (canonical, shape-inferred) teacher itself rather than through
``onnx2torch``: that package imports ``torchvision`` at import time, and no torchvision wheel
imports beside the pinned CPU torch 2.13.0. The converter here covers the op set of CNN
classifiers (the tables in :mod:`edgec.compiler.students.ops` and ``shape_ops``) and builds a
module whose weights live in real ``nn.Conv*``/``nn.ConvTranspose*``/``nn.Linear``/
``nn.BatchNorm*`` layers, so torch-pruning's dependency graph sees them; every other op is a
torch function in ``forward``. Float constants used as data (a per-channel scale, a bias added
after ``MatMul``) become trainable parameters, listed in :attr:`OnnxModule.unwrapped` with their
channel axis so pruning keeps them consistent.

The batch dimension is treated as free: a ``Reshape`` that keeps it keeps it for any batch
size (``[1, -1]`` becomes ``flatten(x, 1)``), so the student trains on batches although the
teacher's input has a static batch of 1. :func:`check_against_onnxruntime` proves the
conversion on real inputs (two samples at once, so an op that mixes the batch is caught).

Failure policy: a node that cannot be represented raises :class:`UnsupportedModelError`
naming its op and node; callers keep the teacher as the only stage and record why.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgec.compiler.students.context import ConversionContext, OnnxModule, UnsupportedModelError
from edgec.compiler.students.ops import TRANSLATORS
from edgec.runtime.loaders import session_options


def onnx_to_torch(model: onnx.ModelProto) -> OnnxModule:
    """Convert a shape-inferred ONNX model into an :class:`OnnxModule`.

    Raises:
        UnsupportedModelError: A node (named, with its op) has no translation.
    """
    ctx = ConversionContext(model)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    ctx.module.input_names = tuple(i.name for i in graph.input if i.name not in initializers)
    if len(ctx.module.input_names) != 1:
        raise UnsupportedModelError(
            "model", "", f"has {len(ctx.module.input_names)} inputs; students need exactly one"
        )
    ctx.module.output_names = tuple(o.name for o in graph.output)
    for node in graph.node:
        ctx.node = node
        if node.domain not in ("", "ai.onnx"):
            ctx.unsupported(f"is in domain '{node.domain}', which edgec cannot train")
        if node.op_type == "Constant":
            continue
        if all(ctx.constant(name) is not None for name in node.input if name):
            ctx.fold(node)  # e.g. a weight reshaped by a node too big for the canonical folding
            continue
        translate = TRANSLATORS.get(node.op_type)
        if translate is None:
            ctx.unsupported("has no torch translation in edgec's converter")
        translate(ctx, node)
    for name in ctx.module.output_names:
        if name in initializers or name in ctx.module.input_names:
            raise UnsupportedModelError("model", "", f"output '{name}' is not computed")
    ctx.module.head = _head_layers(ctx.module)
    return ctx.module


def _head_layers(module: OnnxModule) -> tuple[str, ...]:
    """The layers nearest to each output, walking back through weightless steps."""
    producer = {out: step for step in module.steps for out in step.outputs}
    head: list[str] = []
    pending, seen = list(module.output_names), set()
    while pending:
        name = pending.pop()
        step = producer.get(name)
        if step is None or name in seen:
            continue
        seen.add(name)
        if step.layer is not None:
            if step.layer not in head:
                head.append(step.layer)
            continue
        pending.extend(step.inputs)
    return tuple(head)


def check_against_onnxruntime(
    module: OnnxModule, model: onnx.ModelProto, x: np.ndarray, rtol: float = 1e-3
) -> float:
    """Compare the module (on a batch) with ONNX Runtime (one sample at a time) on ``x``.

    Returns:
        The largest absolute difference, relative to the largest reference magnitude.

    Raises:
        UnsupportedModelError: The outputs differ by more than ``rtol`` (relative to the
            largest output magnitude) or the module cannot run on a batch.
    """
    session = ort.InferenceSession(
        model.SerializeToString(), session_options("all"), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    reference = np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    module.eval()
    try:
        with torch.no_grad():
            got = module(torch.from_numpy(np.ascontiguousarray(x)))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UnsupportedModelError(
            "model", "", f"cannot run on a batch of {len(x)} after conversion ({first})"
        ) from None
    got = (got[0] if isinstance(got, tuple) else got).numpy()
    if got.shape != reference.shape:
        raise UnsupportedModelError(
            "model",
            "",
            f"gives shape {list(got.shape)} on a batch of {len(x)} after conversion, "
            f"not {list(reference.shape)} (it mixes the batch dimension)",
        )
    scale = max(float(np.abs(reference).max()), 1e-6)
    error = float(np.abs(got - reference).max()) / scale
    if error > rtol:
        raise UnsupportedModelError(
            "model", "", f"converted to torch differs from ONNX Runtime by {error:.2e} (relative)"
        )
    return error
