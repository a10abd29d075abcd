"""The wire format between the device runtime and the gateway server.

Self-contained (NumPy and the standard library only): the runtime generator copies it verbatim
into a bundle's ``runtime/``, and the cascade planner imports it to size a forwarded input, so
the payload the planner budgets for is the payload the runtime sends.

A request is ``POST /v1/infer`` with the raw little-endian bytes of one input tensor as its body
and three headers: ``X-Edgec-Shape`` (``1,1,8,8``), ``X-Edgec-Dtype`` (``float32``) and,
optionally, ``X-Edgec-Deadline-Ms``, the milliseconds the device will still wait. Raw bytes keep
the payload exact and small (no base64, no JSON numbers). The answer is JSON:
``{"stage": name, "probs": [...], "prediction": k, "confidence": p, "latency_ms": t}``.
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
DTYPES = ("float32", "float16", "uint8", "int8", "int32", "int64")
# Host header the planner assumes when it sizes a request (the real one is the gateway's).
NOMINAL_HOST = "gateway.local:8080"
NOMINAL_DEADLINE_MS = 100.0


class WireFormatError(ValueError):
    """A request or answer that does not follow the wire format; the message says why."""


def encode_tensor(
    x: np.ndarray, deadline_ms: float | None = None, device_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers that send ``x`` to the gateway."""
    array = np.ascontiguousarray(x)
    if array.dtype.name not in DTYPES:
        raise WireFormatError(f"cannot send dtype {array.dtype.name}; supported: {DTYPES}")
    body = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    headers = {
        "Content-Type": CONTENT_TYPE,
        "Content-Length": str(len(body)),
        HEADER_SHAPE: ",".join(str(d) for d in array.shape),
        HEADER_DTYPE: array.dtype.name,
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


def request_size(shape: tuple[int, ...] | list[int], dtype: str, device_id: str = "") -> int:
    """Bytes a forwarded input of ``shape``/``dtype`` costs on the link (nominal host)."""
    body, headers = encode_tensor(
        np.zeros(tuple(shape), dtype=dtype), NOMINAL_DEADLINE_MS, device_id or None
    )
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


def decode_tensor(
    body: bytes,
    shape_text: str | None,
    dtype_text: str | None,
    expected_shape: tuple[int, ...],
    expected_dtype: str,
) -> np.ndarray:
    """Check a request against the input the stages take and return the tensor.

    Raises:
        WireFormatError: A missing or wrong header, a body of the wrong size, or NaN/inf values.
    """
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
    """The gateway's JSON answer for one input."""
    row = np.asarray(probs, dtype=np.float64).reshape(-1)
    k = int(row.argmax())
    return json.dumps(
        {
            "stage": stage,
            "probs": [float(f"{p:.7g}") for p in row],
            "prediction": k,
            "confidence": float(row[k]),
            "latency_ms": round(latency_ms, 4),
        }
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
