"""A NumPy non-maximum suppression: what the NMS appended to a stage graph must compute.

Per class, candidates scoring above ``score`` are taken best first, and each suppresses the later
ones that overlap it by an IoU above ``iou``; the survivors of every class are then ranked by
score and the best ``max_detections`` kept. This is ONNX ``NonMaxSuppression`` (with
``max_output_boxes_per_class = max_detections``) followed by a top-k over all classes, which is
the graph :mod:`edgec.compiler.detection.postprocess` appends. The tests hold the graph to this
function on random and real detector outputs.
"""

from __future__ import annotations

import numpy as np


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy ``box`` with each of ``others`` ``[n, 4]`` (corners in any order)."""
    b = np.array(
        [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]
    )
    o = np.stack([np.minimum(others[:, 0], others[:, 2]), np.minimum(others[:, 1], others[:, 3]),
                  np.maximum(others[:, 0], others[:, 2]), np.maximum(others[:, 1], others[:, 3])],
                 axis=1)  # fmt: skip
    w = np.clip(np.minimum(b[2], o[:, 2]) - np.maximum(b[0], o[:, 0]), 0, None)
    h = np.clip(np.minimum(b[3], o[:, 3]) - np.maximum(b[1], o[:, 1]), 0, None)
    inter = w * h
    union = (b[2] - b[0]) * (b[3] - b[1]) + (o[:, 2] - o[:, 0]) * (o[:, 3] - o[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms_reference(
    boxes: np.ndarray, scores: np.ndarray, iou: float, score: float, max_detections: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class NMS of ``boxes`` ``[K, 4]`` (xyxy) with ``scores`` ``[K, C]``.

    Returns:
        Kept boxes ``[n, 4]``, their scores ``[n]`` and classes ``[n]``, best first.
    """
    kept_boxes, kept_scores, kept_classes = [], [], []
    for c in range(scores.shape[1]):
        candidates = np.flatnonzero(scores[:, c] > score)
        order = candidates[np.argsort(-scores[candidates, c], kind="stable")]
        keep: list[int] = []
        for k in order:
            if len(keep) >= max_detections:
                break
            if keep and (box_iou(boxes[k], boxes[keep]) > iou).any():
                continue
            keep.append(int(k))
        kept_boxes.extend(boxes[keep])
        kept_scores.extend(scores[keep, c])
        kept_classes.extend([c] * len(keep))
    if not kept_scores:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    s = np.asarray(kept_scores, np.float32)
    order = np.argsort(-s, kind="stable")[:max_detections]
    return (np.asarray(kept_boxes, np.float32)[order], s[order],
            np.asarray(kept_classes, np.int64)[order])  # fmt: skip
