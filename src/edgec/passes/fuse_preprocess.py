"""Prepend the camera-frame pre-processing kernel to a model, so its backend runs it.

The model input named by the plan is replaced by a frame input of the same name (the frame's
shape and element type); the kernel's ops (:func:`edgec.kernels.preprocess.build_preprocess`)
turn the frame into the tensor the rest of the graph consumed. The frame input carries
``metadata_props["edgec.preprocess"]`` with the spec text, which is how a second run sees that
the kernel is already there and changes nothing.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from edgec.kernels.preprocess import PreprocessPlan, build_preprocess
from edgec.passes._rewrite import opset_version

logger = logging.getLogger(__name__)

MARK = "edgec.preprocess"
_DTYPES = {"uint8": ir.DataType.UINT8, "float32": ir.DataType.FLOAT}


class FusePreprocessPass(ir.passes.InPlacePass):
    """Replace input ``plan.input_name`` by a frame input plus the pre-processing ops.

    Attributes:
        plan: The resolved ``--preprocess`` description.

    Raises (from ``call``):
        ValueError: The model has no input of that name (a bug: the plan came from it).
    """

    def __init__(self, plan: PreprocessPlan) -> None:
        super().__init__()
        self.plan = plan

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        plan = self.plan
        index = next((i for i, v in enumerate(graph.inputs) if v.name == plan.input_name), None)
        if index is None:
            raise ValueError(f"model has no input '{plan.input_name}' to pre-process")
        tensor = graph.inputs[index]
        if tensor.metadata_props.get(MARK) == plan.spec.text():
            return ir.passes.PassResult(model, modified=False)
        frame = ir.Value(
            name=plan.input_name,
            shape=ir.Shape(plan.frame_shape),
            type=ir.TensorType(_DTYPES[plan.spec.dtype]),
        )
        frame.metadata_props[MARK] = plan.spec.text()
        nodes, initializers, out = build_preprocess(plan, frame, opset_version(model))
        ir.convenience.replace_all_uses_with(tensor, out)
        graph.inputs[index] = frame
        out.name = f"{plan.input_name}_tensor"
        for init in initializers:
            graph.register_initializer(init)
        if len(graph):
            graph.insert_before(next(iter(graph)), nodes)
        else:
            graph.extend(nodes)
        logger.info(
            "%s: %s -> %d ops in front of '%s'",
            type(self).__name__,
            plan.spec.text(),
            len(nodes),
            plan.input_name,
        )
        return ir.passes.PassResult(model, modified=True)
