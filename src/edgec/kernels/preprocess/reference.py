"""NumPy reference of the frame -> tensor kernel: the definition the ONNX graph is tested against.

Steps, in order: cast to float32; to NCHW; resize; reverse channels when the frame's order is not
the model's; ``(x - mean) * scale`` per channel; to the model's layout.

Resize follows the ONNX ``Resize`` definitions with ``scale = out / in`` as float32 (what ONNX
Runtime computes, so nearest-neighbour picks the same source pixel at exact boundaries):

* ``bilinear``: ``half_pixel`` centres, ``src = (dst + 0.5) / scale - 0.5`` clamped to
  ``[0, in - 1]``, then linear interpolation between ``floor(src)`` and the next pixel (clamped);
* ``nearest``: ``asymmetric`` coordinates with ``floor``: ``src = floor(dst / scale)``.
"""

from __future__ import annotations

import numpy as np

from edgec.kernels.preprocess.spec import PreprocessPlan


def _linear_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    in_size = x.shape[axis]
    scale = np.float32(out_size) / np.float32(in_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) / scale - np.float32(0.5)
    src = np.clip(src, 0, in_size - 1)
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    weight = (src - low).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = out_size
    weight = weight.reshape(shape)
    return np.take(x, low, axis=axis) * (1 - weight) + np.take(x, high, axis=axis) * weight


def _nearest_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    in_size = x.shape[axis]
    scale = np.float32(out_size) / np.float32(in_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) / scale).astype(np.int64)
    return np.take(x, np.clip(src, 0, in_size - 1), axis=axis)


def resize_reference(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resize an NCHW float32 array to ``size`` (height, width) with ``bilinear``/``nearest``."""
    step = _linear_axis if mode == "bilinear" else _nearest_axis
    if x.shape[2] != size[0]:
        x = step(x, 2, size[0])
    if x.shape[3] != size[1]:
        x = step(x, 3, size[1])
    return x.astype(np.float32)


def preprocess_reference(frame: np.ndarray, plan: PreprocessPlan) -> np.ndarray:
    """The model tensor for ``frame`` under ``plan`` (any number of frames on axis 0).

    Raises:
        ValueError: ``frame`` does not have the plan's frame shape (after the batch axis) or
            element type.
    """
    shape_ok = frame.ndim == 4 and tuple(frame.shape[1:]) == plan.frame_shape[1:]
    if not shape_ok or frame.dtype != np.dtype(plan.spec.dtype):
        raise ValueError(
            f"frame must be {plan.spec.dtype} [N, {', '.join(map(str, plan.frame_shape[1:]))}], "
            f"got {frame.dtype} {list(frame.shape)}"
        )
    x = frame.astype(np.float32)
    if plan.spec.layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    if plan.resizes:
        x = resize_reference(x, plan.target_hw, plan.spec.resize)
    if plan.swap_rb:
        x = x[:, ::-1]
    shape = (1, plan.channels, 1, 1)
    x = (x - plan.mean.reshape(shape)) * plan.scale.reshape(shape)
    if plan.tensor_layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x, dtype=np.float32)
