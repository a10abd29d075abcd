"""mAP@0.5 of decoded detections, COCO-style, computed by faster-coco-eval.

The planner, the students' report and the benchmark all score detections here, so a number in
a manifest means the same as one in a benchmark table: COCO's average precision (101-point
interpolated precision, all areas, up to 100 detections per frame) at IoU 0.5, averaged over the
classes that have a ground-truth object. faster-coco-eval (the ``detection`` extra) is a
C++ reimplementation of pycocotools' ``COCOeval`` with the same results.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgec.errors import MissingDependencyError

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]
"""One frame's detections: boxes ``[n, 4]`` (xyxy), scores ``[n]``, classes ``[n]`` (int)."""


def _coco():
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:  # pragma: no cover - the detection extra is installed in CI
        raise MissingDependencyError(
            "Scoring detections needs faster-coco-eval: pip install 'edgec[detection]'."
        ) from None
    return COCO, COCOeval_faster


def ground_truth(boxes: np.ndarray, classes: np.ndarray) -> dict:
    """A COCO annotation dict for padded ``boxes`` ``[N, M, 4]`` / ``classes`` ``[N, M]``."""
    annotations = []
    for n, m in zip(*np.nonzero(classes >= 0), strict=True):
        x1, y1, x2, y2 = (float(v) for v in boxes[n, m])
        annotations.append({
            "id": len(annotations) + 1, "image_id": int(n) + 1,
            "category_id": int(classes[n, m]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
        })  # fmt: skip
    top = int(classes.max(initial=-1)) + 1
    return {
        "images": [{"id": n + 1, "width": 0, "height": 0} for n in range(len(boxes))],
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": str(c)} for c in range(top)],
    }


def mean_average_precision(
    detections: Sequence[Detections], boxes: np.ndarray, classes: np.ndarray
) -> float:
    """COCO AP at IoU 0.5 of ``detections`` (one per frame) against padded ground truth.

    Returns 0.0 when nothing is detected or there is no ground-truth object.
    """
    if len(detections) != len(boxes):
        raise ValueError(f"{len(detections)} frames of detections for {len(boxes)} frames")
    coco_cls, coco_eval = _coco()
    gt = ground_truth(boxes, classes)
    if not gt["annotations"]:
        return 0.0
    results = []
    for n, (b, s, c) in enumerate(detections):
        for box, score, cls in zip(b, s, c, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append({"image_id": n + 1, "category_id": int(cls) + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})  # fmt: skip
    if not results:
        return 0.0
    truth = coco_cls(gt, print_function=_quiet)
    found = truth.loadRes(results)
    evaluation = coco_eval(truth, found, "bbox", print_function=_quiet)
    evaluation.params.iouThrs = np.array([0.5])
    evaluation.evaluate()
    evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, -1]  # [recall, class] at all areas
    valid = precision > -1
    if not valid.any():
        return 0.0
    per_class = [
        precision[valid[:, k], k].mean() for k in range(precision.shape[1]) if valid[:, k].any()
    ]
    return float(np.mean(per_class))


def _quiet(*_args, **_kwargs) -> None:
    """faster-coco-eval's progress messages go nowhere."""
