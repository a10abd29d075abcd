"""Append the decoding and NMS to a detector's graph, so the stage outputs decoded detections.

Like the fused pre-processing (:mod:`edgec.compiler.preprocess`), the post-processing becomes
ONNX ops in the stage's own graph, run by the stage's backend on its accelerator. In order:

1. the boxes to ``xyxy``: as they are, from ``cxcywh`` (``Slice``, ``Mul``, ``Sub``/``Add``,
   ``Concat``), or from SSD offsets to ``--anchors`` (the anchors become constants; the encoding
   is :func:`edgec.compiler.detection.contract.decode_anchors`);
2. the scores to probabilities (``Sigmoid``) when they are logits;
3. ``NonMaxSuppression`` per class (``max_output_boxes_per_class = max``), then ``GatherND``
   and ``Gather`` for the kept scores, classes and boxes, and a ``TopK`` that keeps the best
   ``max`` over all classes, best first.

4. the packing: ``Concat`` of boxes, scores and classes (``Cast`` to float) into ``[n, 6]``
   rows, ``Pad`` with ``-1`` to ``max`` rows, and the highest class probability over every
   candidate (``ReduceMax``) in front.

The stage's one output becomes :data:`OUTPUT`, ``[1, 1 + 6 * max]``, in the layout
:mod:`edgec.runtime.detection` documents and unpacks: one output per stage keeps the loaders,
the evaluation and the gateway's wire format unchanged. The highest score is what the cascade's
*empty* test reads, so a low threshold under NMS's ``score`` still works. The result is held to
:func:`edgec.compiler.detection.reference.nms_reference` by the tests.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common

from edgec.compiler.detection.contract import (
    CENTRE_VARIANCE,
    SIZE_VARIANCE,
    DetectionContract,
)
from edgec.errors import BadInputError
from edgec.runtime.detection import packed_width

MIN_OPSET = 11
OUTPUT = "detections"


def outputs_json(contract: DetectionContract) -> tuple[dict, ...]:
    """The manifest's ``outputs`` for stages with the post-processing attached."""
    top = contract.postprocess.max_detections
    return (
        {
            "name": OUTPUT,
            "shape": [1, packed_width(top)],
            "dtype": "float32",
            "task": "detection",
            "layout": f"max_score, then {top} x [x1, y1, x2, y2, score, class] (xyxy, input "
            "pixels, best first; unused slots -1)",
            "classes": contract.classes,
            "max_detections": top,
            "postprocess": contract.postprocess.text(),
        },
    )


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def attach_postprocess(model: onnx.ModelProto, contract: DetectionContract) -> onnx.ModelProto:
    """``model`` with the decoding and NMS behind its boxes and scores (shape-inferred, checked).

    Raises:
        BadInputError: The model's opset has no ``NonMaxSuppression`` with these inputs.
    """
    if _opset(model) < MIN_OPSET:
        raise BadInputError(
            f"Detection post-processing needs ONNX opset {MIN_OPSET} or newer; the model has "
            f"opset {_opset(model)} (re-export it with a newer opset)."
        )
    ir_model = ir.serde.deserialize_model(model)
    graph = ir_model.graph
    by_name = {value.name: value for value in graph.outputs}
    boxes, scores = by_name[contract.boxes], by_name[contract.scores]
    tape = ir.tape.Tape()
    spec = contract.postprocess

    def const(array, name: str) -> ir.Value:
        return tape.initializer(ir.tensor(np.asarray(array), name=f"postprocess_{name}"))

    xyxy = _decode(tape, boxes, contract, const)
    probs = tape.op("Sigmoid", [scores]) if contract.score_kind == "logits" else scores
    per_class = tape.op("Transpose", [probs], attributes={"perm": [0, 2, 1]})  # [1, C, K]
    selected = tape.op(
        "NonMaxSuppression",
        [
            xyxy,
            per_class,
            const(np.array([spec.max_detections], np.int64), "max"),
            const(np.array([spec.iou], np.float32), "iou"),
            const(np.array([spec.score], np.float32), "score"),
        ],
    )  # [N, 3]: (batch, class, box)
    classes = tape.op("Gather", [selected, const(np.array(1, np.int64), "one")], {"axis": 1})
    index = tape.op("Gather", [selected, const(np.array(2, np.int64), "two")], {"axis": 1})
    kept_scores = tape.op("GatherND", [per_class, selected])
    all_boxes = tape.op(
        "Reshape", [xyxy, const(np.array([contract.candidates, 4], np.int64), "kx4")]
    )
    kept_boxes = tape.op("Gather", [all_boxes, index], {"axis": 0})
    k = tape.op(
        "Min",
        [tape.op("Shape", [kept_scores]), const(np.array([spec.max_detections], np.int64), "k")],
    )
    top_scores, order = tape.op_multi_out(
        "TopK", [kept_scores, k], {"axis": 0, "largest": 1, "sorted": 1}, num_outputs=2
    )
    out_boxes = tape.op("Gather", [kept_boxes, order], {"axis": 0})
    out_classes = tape.op("Gather", [classes, order], {"axis": 0})
    column = const(np.array([-1, 1], np.int64), "column")
    rows = tape.op(
        "Concat",
        [
            out_boxes,
            tape.op("Reshape", [top_scores, column]),
            tape.op("Reshape", [tape.op("Cast", [out_classes], {"to": ir.DataType.FLOAT}), column]),
        ],
        {"axis": 1},
    )  # [n, 6]
    missing = tape.op("Sub", [const(np.array([spec.max_detections], np.int64), "slots"), k])
    zero = const(np.array([0, 0], np.int64), "zero2")
    pads = tape.op("Concat", [zero, missing, const(np.array([0], np.int64), "zero1")], {"axis": 0})
    slots = tape.op("Pad", [rows, pads, const(np.array(-1, np.float32), "unused")])
    flat = tape.op("Reshape", [slots, const(np.array([1, -1], np.int64), "row")])
    top = tape.op("ReduceMax", [probs], {"keepdims": 0})
    max_score = tape.op("Reshape", [top, const(np.array([1, 1], np.int64), "one_by_one")])
    packed = tape.op("Concat", [max_score, flat], {"axis": 1})
    for node in tape.nodes:
        graph.append(node)
    for init in tape.initializers:
        graph.register_initializer(init)
    graph.outputs.clear()
    packed.name = OUTPUT
    graph.outputs.append(packed)
    common.NameFixPass()(ir_model)
    result = ir.serde.serialize_model(ir_model)
    result = onnx.shape_inference.infer_shapes(result, strict_mode=False, data_prop=True)
    onnx.checker.check_model(result)
    return result


def _decode(tape: ir.tape.Tape, boxes: ir.Value, contract: DetectionContract, const):
    """The boxes as xyxy (see the module docstring)."""
    if contract.box_format == "xyxy":
        return boxes

    def part(start: int, name: str) -> ir.Value:
        return tape.op(
            "Slice",
            [
                boxes,
                const(np.array([start], np.int64), f"{name}_start"),
                const(np.array([start + 2], np.int64), f"{name}_end"),
                const(np.array([2], np.int64), f"{name}_axis"),
            ],
        )

    centre, size = part(0, "centre"), part(2, "size")
    if contract.box_format == "anchors":
        a = contract.anchors[None]  # [1, K, 4]
        scale = (a[..., 2:] * CENTRE_VARIANCE).astype(np.float32)
        centre = tape.op(
            "Add",
            [
                tape.op("Mul", [centre, const(scale, "anchor_scale")]),
                const(a[..., :2], "anchor_xy"),
            ],
        )
        stretch = tape.op("Exp", [tape.op("Mul", [size, const(np.float32(SIZE_VARIANCE), "var")])])
        size = tape.op("Mul", [stretch, const(a[..., 2:].astype(np.float32), "anchor_wh")])
    half = tape.op("Mul", [size, const(np.float32(0.5), "half")])
    return tape.op(
        "Concat", [tape.op("Sub", [centre, half]), tape.op("Add", [centre, half])], {"axis": 2}
    )
