"""The wire format between the device runtime and the gateway server.

Self-contained (NumPy and the standard library only): the runtime generator copies it verbatim
into a bundle's ``runtime/``, and the cascade planner imports it to size a forwarded input, so
the payload the planner budgets for is the payload the runtime sends.

A request is ``POST /v1/infer`` with the raw little-endian bytes of one input tensor as its body
and three headers: ``X-Edgec-Shape`` (``1,1,8,8``), ``X-Edgec-Dtype`` (``float32``) and,
optionally, ``X-Edgec-Deadline-Ms``, the milliseconds the device will still wait. Raw bytes keep
the payload exact and small (no base64, no JSON numbers). The answer is JSON:
``{"stage": name, "probs": [...], "prediction": k, "confidence": p, "latency_ms": t}``.

A partitioned bundle sends the intermediate tensor its device prefix computed instead of the
input, either as it is (``raw``) or ``int8``-encoded: per-tensor asymmetric uint8 with
``X-Edgec-Scale`` and ``X-Edgec-Zero-Point`` headers, a quarter of the float32 bytes at an
error of at most half a step (``scale / 2``) per element.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np

PATH = "/v1/infer"
CONTENT_TYPE = "application/x-edgec-tensor"
HEADER_SHAPE = "X-Edgec-Shape"
HEADER_DTYPE = "X-Edgec-Dtype"
HEADER_DEADLINE = "X-Edgec-Deadline-Ms"
HEADER_DEVICE = "X-Edgec-Device"
HEADER_SCALE = "X-Edgec-Scale"
HEADER_ZERO_POINT = "X-Edgec-Zero-Point"
ENCODINGS = ("raw", "int8")
DTYPES = ("float32", "float16", "uint8", "int8", "int32", "int64")
# Host header the planner assumes when it sizes a request (the real one is the gateway's).
NOMINAL_HOST = "gateway.local:8080"
NOMINAL_DEADLINE_MS = 100.0


class WireFormatError(ValueError):
    """A request or answer that does not follow the wire format; the message says why."""


def encode_int8(tensor: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Per-tensor asymmetric uint8 encoding: ``(codes, scale, zero_point)``.

    The range always includes 0 (so 0 is exact), and a constant tensor gets scale 1.
    """
    low, high = float(min(tensor.min(), 0.0)), float(max(tensor.max(), 0.0))
    scale = (high - low) / 255.0 or 1.0
    zero_point = round(-low / scale)
    codes = np.clip(np.round(tensor / scale) + zero_point, 0, 255).astype(np.uint8)
    return codes, scale, zero_point


def decode_int8(codes: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Inverse of :func:`encode_int8` (error at most ``scale / 2`` per element)."""
    return ((codes.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)


def encode_tensor(
    x: np.ndarray,
    deadline_ms: float | None = None,
    device_id: str | None = None,
    encoding: str = "raw",
) -> tuple[bytes, dict[str, str]]:
    """The body and headers that send ``x`` to the gateway (``int8``: encoded, see above)."""
    array = np.ascontiguousarray(x)
    extra = {}
    if encoding == "int8":
        array, scale, zero_point = encode_int8(array.astype(np.float32, copy=False))
        extra = {HEADER_SCALE: repr(float(scale)), HEADER_ZERO_POINT: str(zero_point)}
    elif encoding != "raw":
        raise WireFormatError(f"unknown encoding {encoding!r}; supported: {ENCODINGS}")
    if array.dtype.name not in DTYPES:
        raise WireFormatError(f"cannot send dtype {array.dtype.name}; supported: {DTYPES}")
    body = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    headers = {
        "Content-Type": CONTENT_TYPE,
        "Content-Length": str(len(body)),
        HEADER_SHAPE: ",".join(str(d) for d in array.shape),
        HEADER_DTYPE: array.dtype.name,
        **extra,
    }
    if deadline_ms is not None:
        headers[HEADER_DEADLINE] = f"{max(deadline_ms, 0.0):.3f}"
    if device_id:
        headers[HEADER_DEVICE] = device_id
    return body, headers


def request_bytes(host: str, headers: Mapping[str, str], body: bytes) -> int:
    """Bytes of the HTTP/1.1 request that carries ``body``: request line, headers, body."""
    head = f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return len(head.encode("latin-1")) + 2 + len(body)


def request_size(
    shape: tuple[int, ...] | list[int], dtype: str, device_id: str = "", encoding: str = "raw"
) -> int:
    """Bytes a forwarded tensor of ``shape``/``dtype`` costs on the link (nominal host)."""
    # A scale with all 17 significant digits: the longest header the runtime can send.
    sample = np.full(tuple(shape), 0.1234567891234567, dtype=dtype)
    body, headers = encode_tensor(sample, NOMINAL_DEADLINE_MS, device_id or None, encoding)
    return request_bytes(NOMINAL_HOST, headers, body)


def _parse_shape(text: str | None) -> tuple[int, ...]:
    if not text:
        raise WireFormatError(f"the {HEADER_SHAPE} header is missing")
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise WireFormatError(
            f"{HEADER_SHAPE} {text[:40]!r} is not comma-separated integers"
        ) from None
    if any(d <= 0 for d in dims):
        raise WireFormatError(f"{HEADER_SHAPE} {text[:40]!r} has a non-positive dimension")
    return dims


def body_bytes(shape: tuple[int, ...] | list[int], dtype: str, encoding: str = "raw") -> int:
    """Body bytes of one tensor of ``shape``/``dtype`` sent with ``encoding``."""
    itemsize = 1 if encoding == "int8" else np.dtype(dtype).itemsize
    return math.prod(shape) * itemsize


def _parse_quantization(scale_text: str | None, zero_point_text: str | None) -> tuple[float, int]:
    try:
        scale = float(scale_text or "")
        zero_point = int(zero_point_text or "")
    except ValueError:
        raise WireFormatError(
            f"an int8 tensor needs numeric {HEADER_SCALE} and {HEADER_ZERO_POINT} headers"
        ) from None
    if not math.isfinite(scale) or scale <= 0 or not 0 <= zero_point <= 255:
        raise WireFormatError(
            f"{HEADER_SCALE} must be a positive number and {HEADER_ZERO_POINT} in 0..255"
        )
    return scale, zero_point


def decode_tensor(
    body: bytes,
    shape_text: str | None,
    dtype_text: str | None,
    expected_shape: tuple[int, ...],
    expected_dtype: str,
    encoding: str = "raw",
    scale_text: str | None = None,
    zero_point_text: str | None = None,
) -> np.ndarray:
    """Check a request against the tensor the stages take and return it (decoded: ``int8``
    requests carry uint8 codes plus their scale and zero point, see the module docstring).

    Raises:
        WireFormatError: A missing or wrong header, a body of the wrong size, or NaN/inf values.
    """
    if encoding == "int8":
        scale, zero_point = _parse_quantization(scale_text, zero_point_text)
        codes = decode_tensor(body, shape_text, dtype_text, expected_shape, "uint8")
        with np.errstate(over="ignore", invalid="ignore"):
            array = decode_int8(codes, scale, zero_point).astype(expected_dtype)
        # A finite scale can still overflow (1e38 * 255 is inf in float32).
        if not np.isfinite(array).all():
            raise WireFormatError(
                f"{HEADER_SCALE} {scale!r} overflows: the decoded tensor holds infinite values"
            )
        return array
    shape = _parse_shape(shape_text)
    if tuple(shape) != tuple(expected_shape):
        raise WireFormatError(
            f"input shape {list(shape)} does not match the model's {list(expected_shape)}"
        )
    if dtype_text != expected_dtype:
        raise WireFormatError(f"input dtype {dtype_text!r} is not the model's {expected_dtype!r}")
    dtype = np.dtype(expected_dtype).newbyteorder("<")
    expected_bytes = math.prod(shape) * dtype.itemsize
    if len(body) != expected_bytes:
        raise WireFormatError(
            f"the body has {len(body)} bytes; shape {list(shape)} of {expected_dtype} needs "
            f"{expected_bytes}"
        )
    array = np.frombuffer(body, dtype=dtype).reshape(shape).astype(expected_dtype)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise WireFormatError("the input holds NaN or infinite values")
    return array


def encode_answer(stage: str, probs: np.ndarray, latency_ms: float) -> bytes:
    """The gateway's JSON answer for one input.

    Raises:
        WireFormatError: ``probs`` holds NaN or infinite values (JSON has no such numbers:
            an answer never carries them).
    """
    row = np.asarray(probs, dtype=np.float64).reshape(-1)
    if not np.isfinite(row).all() or not math.isfinite(latency_ms):
        raise WireFormatError(f"stage {stage}'s output holds NaN or infinite values")
    k = int(row.argmax())
    return json.dumps(
        {
            "stage": stage,
            "probs": [float(f"{p:.7g}") for p in row],
            "prediction": k,
            "confidence": float(row[k]),
            "latency_ms": round(latency_ms, 4),
        },
        allow_nan=False,
    ).encode()


def decode_answer(body: bytes, classes: int) -> tuple[str, np.ndarray]:
    """The answering stage and its probabilities from a gateway answer.

    Raises:
        WireFormatError: Not JSON, or no stage name and ``classes`` finite probabilities.
    """
    try:
        data = json.loads(body)
        stage = data["stage"]
        probs = np.asarray(data["probs"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as err:
        raise WireFormatError(f"the gateway's answer is malformed: {err}") from None
    if not isinstance(stage, str) or probs.shape != (classes,) or not np.isfinite(probs).all():
        raise WireFormatError("the gateway's answer has no stage name or the wrong probabilities")
    return stage, probs[None, :]
