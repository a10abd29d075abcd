"""The detection distillation loss: KD on class scores, L1 on matched boxes only."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="students need the train extra")

from edgec.compiler.detection.distill_loss import DetectionLoss, detection_kd_loss  # noqa: E402


def test_loss_is_lowest_when_the_student_copies_the_teacher():
    gen = torch.Generator().manual_seed(0)
    boxes = torch.rand(2, 8, 4, generator=gen) * 60
    scores = torch.rand(2, 8, 3, generator=gen)
    settings = DetectionLoss("probabilities")
    same = detection_kd_loss((boxes, scores), (boxes, scores), settings)
    worse = detection_kd_loss((boxes + 4, 1 - scores), (boxes, scores), settings)
    assert float(same) < float(worse)


def test_boxes_count_only_where_the_teacher_sees_an_object():
    """A box far off on an unmatched candidate costs nothing; on a matched one it does."""
    boxes = torch.zeros(1, 2, 4)
    scores = torch.tensor([[[0.9, 0.0], [0.1, 0.1]]])  # candidate 0 matched, 1 not
    settings = DetectionLoss("probabilities")
    base = float(detection_kd_loss((boxes, scores), (boxes, scores), settings))
    moved = boxes.clone()
    moved[0, 1] += 50
    assert float(detection_kd_loss((moved, scores), (boxes, scores), settings)) == pytest.approx(
        base
    )
    moved[0, 0] += 8
    assert float(detection_kd_loss((moved, scores), (boxes, scores), settings)) > base + 0.5
