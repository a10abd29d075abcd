"""What the camera frame looks like: the ``--preprocess`` description and its plan for a model.

``--preprocess`` is a comma-separated list; order does not matter::

    uint8,nhwc,bgr,size=480x640,resize=bilinear,mean=127.5,scale=0.0078125

=================  ==========================================================================
token              meaning
=================  ==========================================================================
``uint8|float``    element type of the frame (``float`` is float32); default ``uint8``
``nhwc|nchw``      frame layout; default ``nhwc`` (what cameras and OpenCV give)
``bgr|rgb|gray``   channel order of the frame; default ``rgb`` (``gray``: one channel)
``model=rgb|bgr``  channel order the model was trained on; default ``rgb``
``size=HxW``       frame height x width; default the model's input size (no resize)
``resize=MODE``    ``bilinear`` (default; half-pixel centres, like ``cv::resize`` INTER_LINEAR
                   without its uint8 rounding), ``nearest`` (floor, like INTER_NEAREST) or
                   ``none`` (the frame must already have the model's size)
``mean=M[/M/M]``   subtracted per channel, in the model's channel order; default 0
``scale=S[/S/S]``  multiplied after the mean, in the model's channel order; default 1
=================  ==========================================================================

The tensor is ``(resize(frame) - mean) * scale`` with channels reordered to the model's order —
what ``cv::dnn::blobFromImage(frame, scale, size, mean, swapRB=bgr != model)`` computes, except
that the resize runs on float values. :func:`plan_preprocess` checks the description against
the model's input and fixes every shape.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from edgec.errors import BadInputError

DTYPES = {"uint8": "uint8", "float": "float32", "float32": "float32"}
LAYOUTS = {"nhwc": "NHWC", "nchw": "NCHW"}
COLORS = ("rgb", "bgr", "gray")
RESIZES = ("bilinear", "nearest", "none")
_SIZE_RE = re.compile(r"^(\d+)\s*[x,]\s*(\d+)$")


@dataclass(frozen=True)
class PreprocessSpec:
    """A parsed ``--preprocess`` description (see the module docstring).

    Attributes:
        dtype: ``uint8`` or ``float32``.
        layout: ``NHWC`` or ``NCHW``.
        color: Frame channel order: ``rgb``, ``bgr`` or ``gray``.
        model_color: Channel order the model expects (``rgb`` or ``bgr``).
        size: Frame ``(height, width)``, or ``None`` for the model's own size.
        resize: ``bilinear``, ``nearest`` or ``none``.
        mean: One value, or one per channel in the model's order.
        scale: One value, or one per channel in the model's order.
    """

    dtype: str = "uint8"
    layout: str = "NHWC"
    color: str = "rgb"
    model_color: str = "rgb"
    size: tuple[int, int] | None = None
    resize: str = "bilinear"
    mean: tuple[float, ...] = (0.0,)
    scale: tuple[float, ...] = (1.0,)

    def text(self) -> str:
        """The canonical ``--preprocess`` text for this spec."""
        parts = ["uint8" if self.dtype == "uint8" else "float", self.layout.lower(), self.color]
        if self.color != "gray":
            parts.append(f"model={self.model_color}")
        if self.size:
            parts.append(f"size={self.size[0]}x{self.size[1]}")
        parts.append(f"resize={self.resize}")
        parts.append("mean=" + "/".join(f"{v:.9g}" for v in self.mean))
        parts.append("scale=" + "/".join(f"{v:.9g}" for v in self.scale))
        return ",".join(parts)

    def to_json(self) -> dict:
        """The manifest form."""
        return {
            "spec": self.text(),
            "dtype": self.dtype,
            "layout": self.layout,
            "color": self.color,
            "model_color": self.model_color,
            "size": list(self.size) if self.size else None,
            "resize": self.resize,
            "mean": list(self.mean),
            "scale": list(self.scale),
        }


def _floats(key: str, text: str, spec: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split("/"))
    except ValueError:
        raise BadInputError(
            f"--preprocess '{spec}': {key}= takes a number or one per channel separated by "
            f"'/', e.g. {key}=0.5/0.5/0.5; got '{text}'."
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise BadInputError(f"--preprocess '{spec}': {key} values must be finite.")
    return values


def parse_preprocess(spec: str) -> PreprocessSpec:
    """Parse a ``--preprocess`` description.

    Raises:
        BadInputError: An unknown token, a malformed value or a field given twice.
    """
    fields: dict[str, object] = {}

    def put(key: str, value: object) -> None:
        if key in fields:
            raise BadInputError(f"--preprocess '{spec}' sets {key} twice.")
        fields[key] = value

    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    if not tokens:
        raise BadInputError("--preprocess is empty; e.g. --preprocess uint8,nhwc,bgr.")
    for token in tokens:
        low = token.lower()
        key, _, value = low.partition("=")
        if low in DTYPES:
            put("dtype", DTYPES[low])
        elif low in LAYOUTS:
            put("layout", LAYOUTS[low])
        elif low in COLORS:
            put("color", low)
        elif key == "model" and value in ("rgb", "bgr"):
            put("model_color", value)
        elif key == "resize" and value in RESIZES:
            put("resize", value)
        elif key == "size" and (match := _SIZE_RE.match(value)):
            height, width = int(match.group(1)), int(match.group(2))
            if not height or not width:
                raise BadInputError(f"--preprocess '{spec}': size must be positive.")
            put("size", (height, width))
        elif key in ("mean", "scale") and value:
            put(key, _floats(key, value, spec))
        else:
            raise BadInputError(
                f"--preprocess '{spec}': '{token}' is not understood; use uint8|float, "
                "nhwc|nchw, rgb|bgr|gray, model=rgb|bgr, size=HxW, "
                "resize=bilinear|nearest|none, mean=M[/M/M], scale=S[/S/S]."
            )
    return PreprocessSpec(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PreprocessPlan:
    """A spec resolved against one model input: every shape and constant fixed.

    Attributes:
        spec: The description.
        input_name: The model input the frame replaces (the frame keeps this name).
        frame_shape: Shape of the frame in its own layout.
        tensor_shape: Shape of the model's input.
        tensor_layout: ``NCHW`` or ``NHWC``: the model input's layout.
        source_hw: Frame ``(height, width)``.
        target_hw: Model input ``(height, width)``.
        swap_rb: Whether channels are reversed (BGR <-> RGB).
        mean: Per-channel mean, float32 ``[C]``, model order.
        scale: Per-channel scale, float32 ``[C]``, model order.
    """

    spec: PreprocessSpec
    input_name: str
    frame_shape: tuple[int, ...]
    tensor_shape: tuple[int, ...]
    tensor_layout: str
    source_hw: tuple[int, int]
    target_hw: tuple[int, int]
    swap_rb: bool
    mean: np.ndarray
    scale: np.ndarray

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.mean.shape[0])

    @property
    def resizes(self) -> bool:
        """Whether the frame is resized."""
        return self.source_hw != self.target_hw

    def frame_json(self) -> dict:
        """The manifest's input entry for the frame."""
        return {
            "name": self.input_name,
            "shape": list(self.frame_shape),
            "dtype": self.spec.dtype,
            "layout": self.spec.layout,
            "preprocess": {
                **self.spec.to_json(),
                "tensor": {
                    "shape": list(self.tensor_shape),
                    "dtype": "float32",
                    "layout": self.tensor_layout,
                },
            },
        }


def _per_channel(key: str, values: tuple[float, ...], channels: int, spec: str) -> np.ndarray:
    if len(values) == 1:
        return np.full(channels, values[0], np.float32)
    if len(values) != channels:
        raise BadInputError(
            f"--preprocess '{spec}': {key} has {len(values)} values but the model's input has "
            f"{channels} channel(s); give one value or {channels}."
        )
    return np.asarray(values, np.float32)


def plan_preprocess(
    spec: PreprocessSpec,
    input_name: str,
    shape: tuple[int | None, ...],
    dtype: str,
    layout: str | None,
) -> PreprocessPlan:
    """Resolve ``spec`` against the model input ``input_name`` of ``shape``/``dtype``/``layout``.

    Raises:
        BadInputError: The input is not a float32 4-D image tensor whose channel axis is known,
            the colour does not fit its channel count, or the sizes need a resize that
            ``resize=none`` forbids.
    """
    text = spec.text()
    if len(shape) != 4 or any(not isinstance(d, int) for d in shape):
        raise BadInputError(
            f"--preprocess needs a 4-D image input with static shape; input '{input_name}' has "
            f"shape {list(shape)}."
        )
    if dtype != "float32":
        raise BadInputError(
            f"--preprocess produces float32 tensors but input '{input_name}' takes {dtype}."
        )
    if layout not in ("NCHW", "NHWC"):
        raise BadInputError(
            f"--preprocess cannot tell the channel axis of input '{input_name}' {list(shape)}: "
            "it has neither 1, 3 nor 4 channels on axis 1 or 3."
        )
    batch = int(shape[0])
    if layout == "NCHW":
        channels, height, width = (int(d) for d in shape[1:])
    else:
        height, width, channels = (int(d) for d in shape[1:])
    wanted = 1 if spec.color == "gray" else 3
    if channels != wanted:
        raise BadInputError(
            f"--preprocess '{text}' describes a {spec.color} frame ({wanted} channel(s)) but "
            f"input '{input_name}' has {channels}."
        )
    source = spec.size or (height, width)
    if source != (height, width) and spec.resize == "none":
        raise BadInputError(
            f"--preprocess '{text}': the frame is {source[0]}x{source[1]} but the model takes "
            f"{height}x{width}; use resize=bilinear or resize=nearest."
        )
    if spec.layout == "NHWC":
        frame_shape = (batch, source[0], source[1], channels)
    else:
        frame_shape = (batch, channels, source[0], source[1])
    return PreprocessPlan(
        spec=spec,
        input_name=input_name,
        frame_shape=frame_shape,
        tensor_shape=tuple(int(d) for d in shape),
        tensor_layout=layout,
        source_hw=source,
        target_hw=(height, width),
        swap_rb=channels == 3 and spec.color != spec.model_color,
        mean=_per_channel("mean", spec.mean, channels, text),
        scale=_per_channel("scale", spec.scale, channels, text),
    )
