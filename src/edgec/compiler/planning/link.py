"""The price of one request from the device to its gateway, for both planners.

The cascade planner (:mod:`~edgec.compiler.planning.cascade`, through
:mod:`~edgec.compiler.planning.policy`) and the partition planner
(:mod:`~edgec.compiler.planning.partition`) both send a tensor over the link and both price it
here, alike::

    request_ms = rtt + overhead + batch_wait + bytes * 8 / bandwidth

The RTT and bandwidth come from the device descriptor's ``gateway.link``; the overhead
(:data:`DEFAULT_OVERHEAD_MS`) is the allowance for HTTP framing and server dispatch per
request; the batch wait is the longest a request waits at the gateway for others to batch
with (:func:`gateway_batch_wait_ms`: the generated gateway's default ``--batch-wait-ms`` when
its stages take a batch, else nothing). The answer (a few logits) is small enough that its
transfer is covered by the RTT.

What a tensor weighs on the link comes from the runtime's own wire format
(:mod:`edgec.runtime.codec`, which ships inside the bundle): :func:`payload_bytes` is the
tensor itself, ``raw`` or ``int8``-encoded (one byte per element plus the scale and zero
point), and :func:`request_bytes` the whole HTTP request that carries it. :func:`link_view` is
what the gateway receives after the encoding's round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgec.runtime import batcher, codec
from edgec.targets import Target, load_target
from edgec.targets.descriptor import Link

DEFAULT_OVERHEAD_MS = 1.0
DEFAULT_FALLBACK_MARGIN_MS = 1.0
# An int8-encoded tensor also carries its scale (float32) and zero point (int32).
INT8_PARAMS_BYTES = 8
ENCODINGS = codec.ENCODINGS


@dataclass(frozen=True)
class LinkModel:
    """The device–gateway link the planners budget for.

    Attributes:
        rtt_ms: Round-trip time of a small request (from the target descriptor).
        bandwidth_mbps: Uplink bandwidth in megabits per second.
        overhead_ms: HTTP framing and server dispatch per request, on top of the RTT.
        fallback_margin_ms: The device stops waiting for the gateway this long before the
            budget runs out, to answer on its own in time.
        batch_wait_ms: The longest a request waits at the gateway for a batch to fill.
    """

    rtt_ms: float
    bandwidth_mbps: float
    overhead_ms: float = DEFAULT_OVERHEAD_MS
    fallback_margin_ms: float = DEFAULT_FALLBACK_MARGIN_MS
    batch_wait_ms: float = 0.0

    @classmethod
    def from_link(cls, link: Link, batch_wait_ms: float = 0.0) -> LinkModel:
        """The model of a descriptor's link, with the default overhead and margin."""
        return cls(link.rtt_ms, link.bandwidth_mbps, batch_wait_ms=batch_wait_ms)

    @property
    def fixed_ms(self) -> float:
        """What every request costs whatever it carries: the round trip, the overhead and
        the wait for a batch."""
        return self.rtt_ms + self.overhead_ms + self.batch_wait_ms

    def transfer_ms(self, payload_bytes: int) -> float:
        """Time to push ``payload_bytes`` through the uplink."""
        return payload_bytes * 8 / (self.bandwidth_mbps * 1e3)

    def cost_ms(self, payload_bytes: int) -> float:
        """Round trip, overhead and transfer of one request carrying ``payload_bytes``."""
        return self.fixed_ms + self.transfer_ms(payload_bytes)

    def to_json(self, payload_bytes: int) -> dict:
        """The manifest form (the policy's ``link``)."""
        return {
            "rtt_ms": self.rtt_ms,
            "bandwidth_mbps": self.bandwidth_mbps,
            "overhead_ms": self.overhead_ms,
            "fallback_margin_ms": self.fallback_margin_ms,
            "batch_wait_ms": self.batch_wait_ms,
            "transfer_ms": round(self.transfer_ms(payload_bytes), 4),
        }


def gateway_target(device: Target) -> Target | None:
    """The target of the device's gateway (``None`` when it names none).

    Resolved once per compile by the driver (or once per ``inspect --partition``) and passed
    down, so every planner prices the same gateway.
    """
    return load_target(device.gateway.target) if device.gateway is not None else None


def gateway_batch_wait_ms(batch_sizes: Sequence[int]) -> float:
    """The wait the generated gateway adds by default for gateway stages that take at most
    ``batch_sizes`` rows each: its ``--batch-wait-ms`` when every one takes a batch (it then
    batches), else none (it runs one request at a time)."""
    if not batch_sizes or min(batch_sizes) <= 1:
        return 0.0
    return batcher.planned_wait_ms(batcher.DEFAULT_MAX_BATCH, batcher.DEFAULT_WAIT_MS)


def payload_bytes(
    shapes: Sequence[Sequence[int]], dtypes: Sequence[str], encoding: str = "raw"
) -> int:
    """Bytes of the tensors sent over the link with ``encoding`` (``none``: nothing is sent).

    ``raw`` is the tensors' own bytes (:func:`edgec.runtime.codec.body_bytes`); ``int8`` one
    byte per element plus :data:`INT8_PARAMS_BYTES` per tensor for its scale and zero point.
    """
    if encoding == "none":
        return 0
    params = INT8_PARAMS_BYTES if encoding == "int8" else 0
    return sum(
        codec.body_bytes(tuple(shape), dtype, encoding) + params
        for shape, dtype in zip(shapes, dtypes, strict=True)
    )


def request_bytes(shape: Sequence[int], dtype: str, encoding: str = "raw") -> int:
    """Bytes of the whole HTTP request the runtime sends to forward one tensor."""
    return codec.request_size(list(shape), dtype, encoding=encoding)


def link_view(x: np.ndarray, encoding: str) -> np.ndarray:
    """What the gateway receives for each sample of ``x`` (batch 1 per request)."""
    if encoding != "int8":
        return x
    return np.concatenate(
        [codec.decode_int8(*codec.encode_int8(x[i : i + 1])) for i in range(len(x))]
    )
