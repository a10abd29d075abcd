"""Detections as a stage outputs them, and the cascade's rule for a detection frame.

Shared with the compiler and copied verbatim into every detection bundle's runtime (it imports
nothing from edgec). A detection stage outputs one row, ``[1, 1 + 6 * max]`` float32 (the
post-processing edgec appends to its graph packs it, so every stage has one output and the
gateway's wire format carries it unchanged):

* element 0: the highest class probability over every candidate box (before NMS);
* then ``max`` slots of ``x1, y1, x2, y2, score, class``, best first; unused slots hold ``-1``
  in every field.

A stage answers a frame *empty* when that highest score is below its low threshold, *sure* when
it kept at least one detection and every kept detection scores above its high threshold, and
hands the frame on otherwise (:func:`decide`).
"""

from __future__ import annotations

import numpy as np

FIELDS = 6


def packed_width(max_detections: int) -> int:
    """Elements of a stage's output row for ``max_detections`` slots."""
    return 1 + FIELDS * max_detections


def unpack(row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Boxes ``[n, 4]`` (xyxy), scores ``[n]``, classes ``[n]`` (int64) and the highest score
    from one packed output (any leading batch dimension of 1 is dropped)."""
    flat = np.asarray(row, dtype=np.float32).reshape(-1)
    slots = flat[1:].reshape(-1, FIELDS)
    used = slots[slots[:, 4] >= 0]
    return used[:, :4], used[:, 4], used[:, 5].astype(np.int64), float(flat[0])


def decide(max_score: float, scores: np.ndarray, low: float, high: float) -> str:
    """``empty``, ``sure`` or ``unsure`` (hand the frame on) for one stage's answer."""
    if max_score < low:
        return "empty"
    if len(scores) and float(np.min(scores)) > high:
        return "sure"
    return "unsure"


def detections_json(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> dict:
    """The JSON form of one frame's detections (boxes rounded to 0.01 pixel)."""
    return {
        "boxes": [[round(float(v), 2) for v in box] for box in boxes],
        "classes": [int(c) for c in classes],
        "scores": [round(float(s), 6) for s in scores],
    }
