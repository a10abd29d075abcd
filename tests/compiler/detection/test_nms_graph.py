"""The NMS appended to a detector's graph against the NumPy reference and the documented
box encodings, on random candidates run through real ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgec.compiler.detection.contract import (
    PostprocessSpec,
    decode_anchors,
    resolve_contract,
)
from edgec.compiler.detection.postprocess import OUTPUT, attach_postprocess
from edgec.compiler.detection.reference import nms_reference
from edgec.runtime.detection import packed_width, unpack

K, C = 40, 3


def passthrough(k: int = K, c: int = C, opset: int = 17) -> onnx.ModelProto:
    """A "detector" whose outputs are its inputs: boxes [1, K, 4] and scores [1, K, C]."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["b_in"], ["boxes"]),
         helper.make_node("Identity", ["s_in"], ["scores"])],
        "passthrough",
        [helper.make_tensor_value_info("b_in", TensorProto.FLOAT, [1, k, 4]),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, k, c])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, k, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, k, c])],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def random_candidates(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clustered boxes (so NMS has overlaps to suppress) and scores in [0, 1]."""
    centres = rng.uniform(10, 54, (5, 2))[rng.integers(0, 5, K)] + rng.normal(0, 2, (K, 2))
    size = rng.uniform(8, 20, (K, 2))
    boxes = np.concatenate([centres - size / 2, centres + size / 2], 1).astype(np.float32)
    return boxes, rng.uniform(0, 1, (K, C)).astype(np.float32)


def run(model: onnx.ModelProto, boxes: np.ndarray, scores: np.ndarray, top: int = 100):
    """The stage's one packed output, unpacked: boxes, scores, classes, highest score."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (row,) = session.run([OUTPUT], {"b_in": boxes[None], "s_in": scores[None]})
    assert row.shape == (1, packed_width(top))
    return unpack(row)


def same_detections(got: list[np.ndarray], want: tuple[np.ndarray, ...]) -> None:
    """Equal as sets of (class, score, box), and both sorted best first."""
    boxes, scores, classes = got[:3]
    assert np.all(np.diff(scores) <= 0)
    assert len(scores) == len(want[1])
    key = lambda s, c: np.lexsort((c, -s))  # noqa: E731
    g, w = key(scores, classes), key(want[1], want[2])
    np.testing.assert_allclose(scores[g], want[1][w], rtol=1e-6)
    np.testing.assert_array_equal(classes[g], want[2][w])
    np.testing.assert_allclose(boxes[g], want[0][w], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("iou", "score", "top"), [(0.45, 0.25, 100), (0.3, 0.5, 4)])
def test_nms_graph_matches_the_numpy_reference(seed, iou, score, top):
    """Per-class NMS, the score floor and the overall top-``max`` agree with the reference."""
    boxes, scores = random_candidates(np.random.default_rng(seed))
    spec = PostprocessSpec(iou=iou, score=score, max_detections=top, scores="probabilities")
    model = attach_postprocess(passthrough(), resolve_contract(passthrough(), spec, None))
    got = run(model, boxes, scores, top)
    same_detections(got, nms_reference(boxes, scores, iou, score, top))
    assert got[3] == pytest.approx(scores.max())


def test_no_candidate_above_the_score_gives_empty_outputs():
    """A frame with nothing above ``score`` yields zero detections, not an error."""
    boxes, scores = random_candidates(np.random.default_rng(0))
    contract = resolve_contract(passthrough(), PostprocessSpec(scores="probabilities"), None)
    got = run(attach_postprocess(passthrough(), contract), boxes, scores * 0.1)
    assert [a.shape for a in got[:3]] == [(0, 4), (0,), (0,)]
    assert got[3] == pytest.approx(0.1 * scores.max())


def test_logits_and_cxcywh_are_decoded_before_nms():
    """Logits go through a sigmoid; centre-size boxes become corners."""
    boxes, probs = random_candidates(np.random.default_rng(1))
    logits = np.log(probs / (1 - probs)).astype(np.float32)
    cxcywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    spec = PostprocessSpec(box_format="cxcywh", scores="logits")
    model = attach_postprocess(passthrough(), resolve_contract(passthrough(), spec, None))
    got = run(model, cxcywh.astype(np.float32), logits)
    same_detections(got, nms_reference(boxes, probs, 0.45, 0.25, 100))


def test_anchor_offsets_follow_the_documented_encoding(tmp_path):
    """SSD offsets to ``--anchors`` decode in the graph as ``decode_anchors`` documents."""
    rng = np.random.default_rng(2)
    _boxes, scores = random_candidates(rng)
    anchors = np.concatenate([rng.uniform(8, 56, (K, 2)), rng.uniform(6, 24, (K, 2))], 1)
    path = tmp_path / "anchors.npy"
    np.save(path, anchors.astype(np.float32))
    offsets = rng.normal(0, 1, (K, 4)).astype(np.float32)
    spec = PostprocessSpec(scores="probabilities")
    model = attach_postprocess(passthrough(), resolve_contract(passthrough(), spec, path))
    decoded = decode_anchors(offsets, anchors.astype(np.float32))
    same_detections(run(model, offsets, scores), nms_reference(decoded, scores, 0.45, 0.25, 100))
    cx = anchors[0, 0] + offsets[0, 0] * 0.1 * anchors[0, 2]
    w = anchors[0, 2] * np.exp(offsets[0, 2] * 0.2)
    assert decoded[0, 0] == pytest.approx(cx - w / 2, rel=1e-5)
