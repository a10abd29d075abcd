"""Which models are detectors, and how their outputs are read: ``--task``, ``--postprocess``,
``--anchors``.

A detector hands edgec its candidates *before* non-maximum suppression, as two outputs:

* boxes ``[1, K, 4]``: ``xyxy`` (corners) or ``cxcywh`` (centre and size), in input pixels — or,
  with ``--anchors FILE.npy``, SSD-style offsets to the anchors (see :func:`decode_anchors`);
* class scores ``[1, K, C]``: probabilities (each in [0, 1]; the score of a class is read as
  is) or logits (a sigmoid makes them probabilities). ``scores=auto`` reads probabilities when
  the output comes out of a ``Sigmoid`` or ``Softmax`` node, else logits.

``--task auto`` (the default) infers detection when the model has exactly these two outputs
(when both could be the boxes, ``C == 4``, the one whose name contains ``box`` is), and
classification otherwise; ``--task detection`` on a model whose outputs fit neither form is
refused in one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgec.errors import BadInputError

TASKS = ("auto", "classification", "detection")
BOX_FORMATS = ("xyxy", "cxcywh")
SCORE_KINDS = ("auto", "logits", "probabilities")
# SSD's variances: offsets are scaled by these before they move and stretch an anchor.
CENTRE_VARIANCE = 0.1
SIZE_VARIANCE = 0.2


@dataclass(frozen=True)
class PostprocessSpec:
    """``--postprocess "iou=0.45,score=0.25,max=100,boxes=xyxy,scores=auto"``.

    Attributes:
        iou: Boxes of one class overlapping a better one by more than this are suppressed.
        score: Candidates scoring at or below this are dropped before NMS.
        max_detections: Most detections kept per frame (and per class).
        box_format: ``xyxy`` or ``cxcywh`` (ignored with ``--anchors``: offsets then).
        scores: ``auto``, ``logits`` or ``probabilities``.
    """

    iou: float = 0.45
    score: float = 0.25
    max_detections: int = 100
    box_format: str = "xyxy"
    scores: str = "auto"

    def text(self) -> str:
        """The flag's text form."""
        return (
            f"iou={self.iou:g},score={self.score:g},max={self.max_detections},"
            f"boxes={self.box_format},scores={self.scores}"
        )


def parse_postprocess(text: str) -> PostprocessSpec:
    """Parse ``--postprocess``; unknown keys or bad values are refused in one sentence.

    Raises:
        BadInputError: A malformed or out-of-range setting.
    """
    values: dict = {}
    keys = {"iou": "iou", "score": "score", "max": "max_detections", "boxes": "box_format",
            "scores": "scores"}  # fmt: skip
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in keys:
            raise BadInputError(
                f"--postprocess: '{item}' is not one of {', '.join(k + '=' for k in keys)} "
                "(e.g. 'iou=0.45,score=0.25,max=100')."
            )
        values[keys[key.strip()]] = value.strip()
    try:
        spec = PostprocessSpec(
            iou=float(values.get("iou", 0.45)),
            score=float(values.get("score", 0.25)),
            max_detections=int(values.get("max_detections", 100)),
            box_format=values.get("box_format", "xyxy"),
            scores=values.get("scores", "auto"),
        )
    except ValueError:
        raise BadInputError(
            f"--postprocess '{text}': iou and score must be numbers and max an integer."
        ) from None
    if not (0 < spec.iou <= 1 and 0 <= spec.score < 1 and spec.max_detections >= 1):
        raise BadInputError(
            f"--postprocess '{text}': iou must be in (0, 1], score in [0, 1) and max >= 1."
        )
    if spec.box_format not in BOX_FORMATS or spec.scores not in SCORE_KINDS:
        raise BadInputError(
            f"--postprocess '{text}': boxes must be {' or '.join(BOX_FORMATS)} and scores "
            f"{', '.join(SCORE_KINDS)}."
        )
    return spec


@dataclass(frozen=True)
class DetectionContract:
    """How a detector's outputs are read.

    Attributes:
        boxes: Name of the boxes output ``[1, K, 4]``.
        scores: Name of the class scores output ``[1, K, C]``.
        candidates: ``K``.
        classes: ``C``.
        box_format: ``xyxy``, ``cxcywh`` or ``anchors`` (SSD offsets to ``anchors``).
        score_kind: ``logits`` or ``probabilities`` (``auto`` resolved).
        postprocess: The NMS settings.
        anchors: ``[K, 4]`` anchors (cx, cy, w, h in pixels) with ``box_format == "anchors"``.
    """

    boxes: str
    scores: str
    candidates: int
    classes: int
    box_format: str
    score_kind: str
    postprocess: PostprocessSpec
    anchors: np.ndarray | None = None

    def to_json(self) -> dict:
        """The manifest's record of the contract (the anchors by count, not value)."""
        return {
            "boxes": self.boxes,
            "scores": self.scores,
            "candidates": self.candidates,
            "classes": self.classes,
            "box_format": self.box_format,
            "score_kind": self.score_kind,
            "postprocess": self.postprocess.text(),
        }


def _dims(value: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    return tuple(
        d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
    )


def head_layout(model: onnx.ModelProto) -> tuple[str, str, int, int] | None:
    """``(boxes, scores, K, C)`` when the outputs are a box and a score tensor, else ``None``."""
    outputs = list(model.graph.output)
    if len(outputs) != 2:
        return None
    shapes = [_dims(o) for o in outputs]
    if any(len(s) != 3 or s[0] != 1 or None in s for s in shapes) or shapes[0][1] != shapes[1][1]:
        return None
    boxes = [i for i, s in enumerate(shapes) if s[2] == 4]
    if not boxes:
        return None
    if len(boxes) == 2:  # C == 4: the name decides, or nothing does
        named = [i for i in boxes if "box" in outputs[i].name.lower()]
        if len(named) != 1:
            return None
        boxes = named
    b = boxes[0]
    return outputs[b].name, outputs[1 - b].name, shapes[b][1], shapes[1 - b][2]


def infer_task(model: onnx.ModelProto, task: str) -> str:
    """``classification`` or ``detection`` for ``--task`` (``auto`` inferred, see module doc).

    Raises:
        BadInputError: ``--task detection`` for outputs that fit no detection form.
    """
    if task not in TASKS:
        raise BadInputError(f"--task must be one of {', '.join(TASKS)}, got '{task}'.")
    found = head_layout(model)
    if task == "detection" and found is None:
        described = ", ".join(f"{o.name} {list(_dims(o))}" for o in model.graph.output)
        raise BadInputError(
            f"--task detection needs two outputs, boxes [1, K, 4] and class scores [1, K, C] "
            f"before NMS (docs/detection.md), but the model outputs {described}."
        )
    if task == "auto":
        return "detection" if found is not None else "classification"
    return task


def _producer(model: onnx.ModelProto, name: str) -> str | None:
    for node in model.graph.node:
        if name in node.output:
            return node.op_type
    return None


def load_anchors(path: Path, candidates: int) -> np.ndarray:
    """``--anchors FILE.npy``: ``[K, 4]`` float anchors (cx, cy, w, h), positive sizes.

    Raises:
        BadInputError: Missing or unreadable file, wrong shape, or non-positive sizes.
    """
    try:
        anchors = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        raise BadInputError(f"--anchors {path} is not a readable .npy file.") from None
    if anchors.shape != (candidates, 4) or not np.issubdtype(anchors.dtype, np.floating):
        raise BadInputError(
            f"--anchors {path} must hold float [{candidates}, 4] anchors (cx, cy, w, h), one "
            f"per candidate box of the model; it holds {anchors.dtype} {list(anchors.shape)}."
        )
    if not np.isfinite(anchors).all() or (anchors[:, 2:] <= 0).any():
        raise BadInputError(f"--anchors {path}: widths and heights must be finite and > 0.")
    return anchors.astype(np.float32)


def resolve_contract(
    model: onnx.ModelProto, spec: PostprocessSpec | None, anchors: Path | None
) -> DetectionContract:
    """The contract of a detector ``model`` (its outputs were checked by :func:`infer_task`)."""
    found = head_layout(model)
    if found is None:  # callers check first; this keeps the sentence if one does not
        infer_task(model, "detection")
    boxes, scores, k, c = found
    spec = spec or PostprocessSpec()
    kind = spec.scores
    if kind == "auto":
        kind = "probabilities" if _producer(model, scores) in ("Sigmoid", "Softmax") else "logits"
    return DetectionContract(
        boxes=boxes,
        scores=scores,
        candidates=k,
        classes=c,
        box_format="anchors" if anchors is not None else spec.box_format,
        score_kind=kind,
        postprocess=spec,
        anchors=load_anchors(anchors, k) if anchors is not None else None,
    )


def decode_anchors(offsets: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """SSD decoding, the documented encoding of ``--anchors``, to xyxy boxes.

    With anchor ``(acx, acy, aw, ah)`` and offsets ``(tx, ty, tw, th)``::

        cx = acx + tx * 0.1 * aw        w = aw * exp(tw * 0.2)
        cy = acy + ty * 0.1 * ah        h = ah * exp(th * 0.2)

    The graph (:mod:`edgec.compiler.detection.postprocess`) computes the same.
    """
    centre = anchors[:, :2] + offsets[..., :2] * CENTRE_VARIANCE * anchors[:, 2:]
    size = anchors[:, 2:] * np.exp(offsets[..., 2:] * SIZE_VARIANCE)
    return np.concatenate([centre - size / 2, centre + size / 2], axis=-1)
