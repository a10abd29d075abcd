"""mAP@0.5 through faster-coco-eval: perfect, missing and spurious detections."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faster_coco_eval", reason="the detection extra (faster-coco-eval)")

from edgec.compiler.detection.metrics import mean_average_precision

BOXES = np.array([[[2, 2, 12, 14], [30, 30, 44, 46], [0, 0, 0, 0]],
                  [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)  # fmt: skip
CLASSES = np.array([[3, 7, -1], [-1, -1, -1]])


def frame(boxes, scores, classes):
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
            np.asarray(classes, np.int64))  # fmt: skip


def test_perfect_detections_score_one_and_nothing_scores_zero():
    perfect = [frame(BOXES[0, :2], [0.9, 0.8], [3, 7]), frame([], [], [])]
    assert mean_average_precision(perfect, BOXES, CLASSES) == pytest.approx(1.0)
    nothing = [frame([], [], []), frame([], [], [])]
    assert mean_average_precision(nothing, BOXES, CLASSES) == 0.0


def test_a_confident_false_positive_on_an_empty_frame_costs_precision():
    """A box on the empty frame that outscores the true one halves class 3's precision."""
    spurious = [
        frame(BOXES[0, :2], [0.6, 0.8], [3, 7]),
        frame([[5, 5, 15, 15]], [0.95], [3]),
    ]
    score = mean_average_precision(spurious, BOXES, CLASSES)
    assert 0.6 < score < 0.8  # class 7: 1.0; class 3: precision 0.5 at full recall


def test_a_box_off_by_more_than_half_misses():
    shifted = [frame([[8, 8, 18, 20], BOXES[0, 1]], [0.9, 0.8], [3, 7]), frame([], [], [])]
    assert mean_average_precision(shifted, BOXES, CLASSES) == pytest.approx(0.5)
