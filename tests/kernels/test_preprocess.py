"""The fused pre-processing kernel against its NumPy reference, on real photos.

Photos: scikit-image's bundled ``astronaut`` (512x512 RGB) and ``camera`` (512x512 grey). The
kernel (ONNX ops on ONNX Runtime) must match :func:`preprocess_reference` within 1/1000 of a
grey level: ``atol = 1e-3 * max|scale|`` (measured worst case: 9e-5 grey levels). Both resize
implementations are covered: ``Resize`` (opset 13) and the interpolation-matrix ``MatMul``
form (opset 9, no Resize with half-pixel centres there). The reference's bilinear resize is
also checked against scikit-image's own (independent) implementation.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import skimage.data
import skimage.transform
from onnx import TensorProto, helper

from edgec.compiler.preprocess import attach_preprocess
from edgec.errors import BadInputError
from edgec.kernels.preprocess import (
    parse_preprocess,
    plan_preprocess,
    preprocess_reference,
    resize_reference,
)
from edgec.passes.fuse_preprocess import FusePreprocessPass

RGB = skimage.data.astronaut()  # (512, 512, 3) uint8
GREY = skimage.data.camera()  # (512, 512) uint8


def _passthrough(channels: int, opset: int, layout: str = "NCHW") -> onnx.ModelProto:
    """A model whose output is its input tensor, so the kernel's result is visible."""
    shape = [1, channels, 224, 224] if layout == "NCHW" else [1, 224, 224, channels]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "passthrough",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def _frame(spec) -> np.ndarray:
    image = GREY[..., None] if spec.color == "gray" else RGB
    if spec.color == "bgr":
        image = image[..., ::-1]
    if spec.size and spec.size != image.shape[:2]:
        image = image[: spec.size[0], : spec.size[1]]  # a crop of the photo at the frame size
    frame = image[None]
    if spec.layout == "NCHW":
        frame = frame.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(frame.astype(spec.dtype))


def _kernel_vs_reference(text: str, opset: int, model_layout: str = "NCHW"):
    spec = parse_preprocess(text)
    channels = 1 if spec.color == "gray" else 3
    shape = (1, channels, 224, 224) if model_layout == "NCHW" else (1, 224, 224, channels)
    plan = plan_preprocess(spec, "x", shape, "float32", model_layout)
    model = attach_preprocess(_passthrough(channels, opset, model_layout), plan)
    frame = _frame(spec)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": frame})[0]
    want = preprocess_reference(frame, plan)
    assert got.shape == want.shape == shape
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * float(np.abs(plan.scale).max()))
    return model


CASES = [
    "uint8,nhwc,bgr,size=512x512,resize=bilinear,mean=127.5,scale=0.0078125",
    "uint8,nhwc,rgb,size=512x512,resize=nearest,mean=123.675/116.28/103.53,scale=0.0171/0.0175/0.0174",
    "uint8,nchw,bgr,size=480x400,resize=bilinear,mean=127.5,scale=0.0078125",
    "uint8,nchw,rgb,size=300x200,resize=nearest",
    "float,nhwc,rgb,size=512x512,resize=bilinear,mean=0.5,scale=2",
    "float,nchw,bgr,size=224x224,resize=none,model=bgr,mean=100",
    "uint8,nhwc,gray,size=512x512,resize=bilinear,scale=0.00392156862745098",
    "uint8,nchw,gray,size=100x150,resize=bilinear,mean=128,scale=0.01",
]  # fmt: skip


@pytest.mark.parametrize("opset", [13, 9])
@pytest.mark.parametrize("text", CASES)
def test_kernel_matches_reference_on_photos(text, opset):
    """Each layout/colour/type/resize option: ONNX kernel == NumPy reference (Resize, MatMul)."""
    model = _kernel_vs_reference(text, opset)
    resize_ops = {n.op_type for n in model.graph.node} & {"Resize", "MatMul"}
    if "size=224x224" not in text:
        assert resize_ops == ({"Resize"} if opset >= 11 else {"MatMul"})


def test_kernel_feeds_an_nhwc_model():
    """A model that takes NHWC tensors gets NHWC out of the kernel."""
    _kernel_vs_reference("uint8,nhwc,bgr,size=512x512,mean=127.5,scale=0.0078125", 13, "NHWC")


def test_reference_bilinear_matches_scikit_image():
    """The reference's half-pixel bilinear resize agrees with skimage's (independent) one."""
    x = RGB.astype(np.float32).transpose(2, 0, 1)[None]
    ours = resize_reference(x, (224, 300), "bilinear")[0].transpose(1, 2, 0)
    theirs = skimage.transform.resize(
        RGB.astype(np.float64), (224, 300), order=1, mode="edge", anti_aliasing=False,
        preserve_range=True,
    )  # fmt: skip
    # ours computes weights in float32, skimage in float64: within 1/100 of a grey level
    np.testing.assert_allclose(ours, theirs, atol=1e-2)


def test_fusing_twice_changes_nothing():
    """The pass marks the frame input; running it again reports no change."""
    spec = parse_preprocess("uint8,nhwc,rgb,size=480x640")
    plan = plan_preprocess(spec, "x", (1, 3, 224, 224), "float32", "NCHW")
    model = ir.serde.deserialize_model(_passthrough(3, 13))
    assert FusePreprocessPass(plan)(model).modified
    nodes = len(model.graph)
    assert not FusePreprocessPass(plan)(model).modified
    assert len(model.graph) == nodes
    assert model.graph.inputs[0].dtype == ir.DataType.UINT8
    assert list(model.graph.inputs[0].shape) == [1, 480, 640, 3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("uint8,nhwc,bgr,sharpen", "not understood"),
        ("uint8,float", "twice"),
        ("mean=1/2", "channel"),
        ("mean=a", "number"),
        ("size=0x10", "positive"),
        ("gray", "channel"),
        ("rgb,size=100x100,resize=none", "resize=bilinear"),
    ],
)
def test_bad_descriptions_are_refused_with_one_sentence(text, message):
    """Unknown tokens, repeats, wrong channel counts and impossible resizes are bad input."""
    with pytest.raises(BadInputError, match=message):
        spec = parse_preprocess(text)
        plan_preprocess(spec, "x", (1, 3, 224, 224), "float32", "NCHW")


def test_non_image_input_is_refused():
    """A 2-D input has no channel axis to pre-process."""
    with pytest.raises(BadInputError, match="4-D image input"):
        plan_preprocess(parse_preprocess("rgb"), "x", (1, 64), "float32", None)
