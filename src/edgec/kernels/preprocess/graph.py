"""The frame -> tensor kernel as ONNX ops, so the backend runs it on the accelerator.

Ops, in order (each only when needed): ``Cast`` to float; ``Transpose`` NHWC -> NCHW; the
resize; ``Gather`` on the channel axis to reverse BGR <-> RGB; ``Mul`` by ``scale`` and ``Add``
of ``-mean * scale`` (per-channel ``[1, C, 1, 1]`` constants); ``Transpose`` back to NHWC when
the model takes NHWC.

The resize is ``Resize`` (opset >= 11: ``linear`` + ``half_pixel`` or ``nearest`` +
``asymmetric`` + ``floor``). Opset < 11 has no Resize with those coordinate modes, so there it
is two ``MatMul`` with interpolation matrices, ``Ry @ x @ Rx`` — exact for both modes because
each is linear and separable, at ``C * (Hout * Hin * Win + Hout * Win * Wout)`` MACs instead of
about ``4 * C * Hout * Wout`` operations (measurable for big frames: prefer opset >= 11 models).
The definitions match :mod:`edgec.kernels.preprocess.reference`.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.kernels.preprocess.spec import PreprocessPlan

RESIZE_OPSET = 11


def _matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """``[out, in]`` interpolation matrix of one axis (rows sum to 1)."""
    matrix = np.zeros((out_size, in_size), np.float32)
    scale = np.float32(out_size) / np.float32(in_size)
    for dst in range(out_size):
        if mode == "nearest":
            src = int(np.floor(np.float32(dst) / scale))
            matrix[dst, min(max(src, 0), in_size - 1)] = 1.0
            continue
        pos = (np.float32(dst) + np.float32(0.5)) / scale - np.float32(0.5)
        pos = float(np.clip(pos, 0, in_size - 1))
        low = int(np.floor(pos))
        high = min(low + 1, in_size - 1)
        weight = np.float32(pos - low)
        matrix[dst, low] += 1 - weight
        matrix[dst, high] += weight
    return matrix


def build_preprocess(
    plan: PreprocessPlan, frame: ir.Value, opset: int
) -> tuple[list[ir.Node], list[ir.Value], ir.Value]:
    """Nodes and initializers that turn ``frame`` into the model tensor.

    Args:
        plan: The resolved description.
        frame: The graph input that receives the frame.
        opset: The model's default-domain opset (decides Resize vs MatMul).

    Returns:
        The nodes in order, the new initializers and the value holding the tensor.
    """
    tape = ir.tape.Tape()
    prefix = f"{plan.input_name}_preprocess"

    def const(array: np.ndarray, name: str) -> ir.Value:
        return tape.initializer(ir.tensor(array, name=f"{prefix}_{name}"))

    x = frame
    if plan.spec.dtype != "float32":
        x = tape.op("Cast", [x], attributes={"to": ir.DataType.FLOAT})
    if plan.spec.layout == "NHWC":
        x = tape.op("Transpose", [x], attributes={"perm": [0, 3, 1, 2]})
    if plan.resizes:
        x = _resize(tape, x, plan, opset, const)
    if plan.swap_rb:
        x = tape.op("Gather", [x, const(np.array([2, 1, 0], np.int64), "rgb")], {"axis": 1})
    shape = (1, plan.channels, 1, 1)
    if not np.all(plan.scale == 1):
        x = tape.op("Mul", [x, const(plan.scale.reshape(shape), "scale")])
    shift = (-plan.mean * plan.scale).astype(np.float32)
    if not np.all(shift == 0):
        x = tape.op("Add", [x, const(shift.reshape(shape), "shift")])
    if plan.tensor_layout == "NHWC":
        x = tape.op("Transpose", [x], attributes={"perm": [0, 2, 3, 1]})
    if x is frame:  # float NCHW frame of the right size, mean 0, scale 1: keep one node
        x = tape.op("Identity", [x])
    return list(tape.nodes), list(tape.initializers), x


def _resize(tape: ir.tape.Tape, x: ir.Value, plan: PreprocessPlan, opset: int, const):
    (src_h, src_w), (dst_h, dst_w) = plan.source_hw, plan.target_hw
    mode = plan.spec.resize
    if opset >= RESIZE_OPSET:
        sizes = const(
            np.array([plan.frame_shape[0], plan.channels, dst_h, dst_w], np.int64), "size"
        )
        # Opset 11-12 require the roi input (unused by these modes); 13+ make it optional.
        roi = const(np.zeros(0, np.float32), "roi") if opset < 13 else None
        attributes = (
            {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
            if mode == "bilinear"
            else {
                "mode": "nearest",
                "coordinate_transformation_mode": "asymmetric",
                "nearest_mode": "floor",
            }
        )
        return tape.op("Resize", [x, roi, None, sizes], attributes=attributes)
    if src_w != dst_w:
        x = tape.op("MatMul", [x, const(_matrix(src_w, dst_w, mode).T.copy(), "resize_w")])
    if src_h != dst_h:
        x = tape.op("MatMul", [const(_matrix(src_h, dst_h, mode), "resize_h"), x])
    return x
