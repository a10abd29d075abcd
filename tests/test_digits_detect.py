"""``--data digits-detect``: the generated detection set is deterministic, about half empty,
split like unlabelled data, and its boxes hold the digits' ink."""

from __future__ import annotations

import numpy as np

from edgec.data import DetectionDataset, load_dataset, split
from edgec.digits_detect import MAX_OBJECTS, SIZE, generate


def test_digits_detect_loads_split_and_is_deterministic():
    """Two loads give the same frames and hash; the split is the unlabelled one of ``split``."""
    first, second = load_dataset("digits-detect"), load_dataset("digits-detect")
    assert isinstance(first, DetectionDataset)
    assert first.sha256 == second.sha256
    np.testing.assert_array_equal(first.x_val, second.x_val)
    x, _, _ = generate()
    plain = split("digits-detect", x, None)
    np.testing.assert_array_equal(first.x_val, plain.x_val)
    assert first.x_val.shape[1:] == (1, SIZE, SIZE)
    assert first.boxes_val.shape == (len(first.x_val), MAX_OBJECTS, 4)
    summary = first.summary()
    assert summary["task"] == "detection" and summary["objects_validation"] > 0


def test_about_half_the_frames_are_empty_and_boxes_cover_ink():
    """0-3 digits a frame, ~half empty; each box lies in the frame, is bright inside and does
    not overlap another box of its frame."""
    x, boxes, classes = generate(300)
    counts = (classes >= 0).sum(axis=1)
    assert set(np.unique(counts)) <= {0, 1, 2, 3}
    assert 0.4 < (counts == 0).mean() < 0.6
    for n, m in zip(*np.nonzero(classes >= 0), strict=True):
        x1, y1, x2, y2 = boxes[n, m].astype(int)
        assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
        assert x[n, 0, y1:y2, x1:x2].max() > 0.5
        for other in range(m):
            b = boxes[n, other]
            assert b[2] <= x1 or x2 <= b[0] or b[3] <= y1 or y2 <= b[1]
