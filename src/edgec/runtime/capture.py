"""Capture: spool the frames worth annotating to a directory, bounded by count and bytes.

Self-contained (NumPy and the standard library only): the runtime generator copies it verbatim
into a bundle's ``runtime/``, and ``edgec captures`` reads what it writes. Off unless the
device runtime is given a directory (``--capture DIR``): frames may be private.

A frame is kept when its confidence (the cascade's measure) is under the capture threshold
(``low-confidence``) or when the gateway overruled the device (``overruled``: the gateway's
prediction differs from the last device stage's). Each kept frame is two files in ``DIR``::

    frame-00000042.npy    the input tensor as the cascade got it (batch 1, the bundle's layout)
    frame-00000042.json   time, stage, confidence, prediction, gateway prediction, reason...

and ``DIR/index.json`` says what is there (:data:`FORMAT`, the input's name, shape and dtype,
the frames kept, their bytes, and how many were captured and dropped in all). When the spool
holds more than ``max_frames`` frames or ``max_bytes`` bytes, the oldest are deleted and
counted as dropped; a frame larger than ``max_bytes`` on its own is dropped at once. A spool
that already holds captures is continued, not overwritten. Files are created readable by
their owner only.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np

FORMAT = "edgec.captures/1"
INDEX = "index.json"
DEFAULT_MAX_FRAMES = 1000
DEFAULT_MAX_MB = 100.0
REASONS = ("low-confidence", "overruled")
_FRAME = re.compile(r"^frame-(\d{8})\.npy$")


class CaptureError(RuntimeError):
    """The capture directory cannot be used (not a directory, unwritable, not a spool)."""


def frame_paths(directory: Path) -> list[tuple[int, Path]]:
    """The spooled frames in ``directory`` as ``(sequence number, .npy path)``, oldest first."""
    found = []
    for path in Path(directory).iterdir():
        match = _FRAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_index(directory: Path) -> dict:
    """``directory``'s index.

    Raises:
        CaptureError: There is none, or it is not a capture index.
    """
    path = Path(directory) / INDEX
    try:
        index = json.loads(path.read_text())
    except OSError as err:
        raise CaptureError(f"{directory} is not a capture directory (no {INDEX})") from err
    except ValueError as err:
        raise CaptureError(f"{path} is not valid JSON") from err
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CaptureError(f"{path} is not an edgec capture index ({FORMAT})")
    return index


def reason_for(
    confidence: float,
    threshold: float | None,
    device_prediction: int | None,
    gateway_prediction: int | None,
) -> str | None:
    """Why a frame is kept (``overruled`` first), or ``None``."""
    if (
        device_prediction is not None
        and gateway_prediction is not None
        and device_prediction != gateway_prediction
    ):
        return "overruled"
    if threshold is not None and confidence < threshold:
        return "low-confidence"
    return None


class CaptureSpool:
    """Frames and their metadata in a directory, bounded by count and bytes.

    Args:
        directory: Where the frames go (created, owner-only, if missing).
        input_spec: The bundle's input (``name``, ``shape``, ``dtype``), recorded in the index.
        threshold: Confidence under which a frame is kept (``None``: overruled frames only).
        max_frames: Most frames kept.
        max_mb: Most megabytes (MiB) kept, frames and sidecars together.

    Raises:
        CaptureError: The directory cannot be created or written, or holds something else.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        input_spec: dict,
        threshold: float | None,
        max_frames: int = DEFAULT_MAX_FRAMES,
        max_mb: float = DEFAULT_MAX_MB,
    ):
        if max_frames < 1 or not max_mb > 0:
            raise CaptureError("capture limits must be at least 1 frame and more than 0 MB")
        self.directory = Path(directory)
        self.threshold = threshold
        self.max_frames = int(max_frames)
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.input = {k: input_spec[k] for k in ("name", "shape", "dtype")}
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise CaptureError(f"cannot create {directory}: {err.strerror}") from None
        if not self.directory.is_dir():
            raise CaptureError(f"{directory} is not a directory")
        self.captured = self.dropped = 0
        try:
            if (self.directory / INDEX).exists():
                index = read_index(self.directory)
                self.captured, self.dropped = int(index["captured"]), int(index["dropped"])
            elif any(self.directory.iterdir()):
                raise CaptureError(f"{directory} is not empty and holds no capture index")
            self.kept = [(seq, _size(path)) for seq, path in frame_paths(self.directory)]
            self.next = self.kept[-1][0] + 1 if self.kept else 0
            self._evict()
        except OSError as err:
            raise CaptureError(f"cannot read {directory}: {err.strerror}") from None
        self._write_index()

    @property
    def bytes(self) -> int:
        """Bytes the kept frames take."""
        return sum(size for _, size in self.kept)

    def add(self, x: np.ndarray, metadata: dict) -> int:
        """Spool one frame with its ``metadata``; return how many old frames were dropped."""
        seq = self.next
        self.next += 1
        self.captured += 1
        stem = self.directory / f"frame-{seq:08d}"
        record = {"frame": seq, "time": round(time.time(), 6), **metadata}
        try:
            _write_private(stem.with_suffix(".npy"), _npy_bytes(np.asarray(x)))
            _write_private(stem.with_suffix(".json"), json.dumps(record).encode())
            self.kept.append((seq, _size(stem.with_suffix(".npy"))))
            dropped = self._evict()
        except OSError as err:
            raise CaptureError(f"cannot write to {self.directory}: {err.strerror}") from None
        self._write_index()
        return dropped

    def _evict(self) -> int:
        dropped = 0
        total = self.bytes
        while self.kept and (len(self.kept) > self.max_frames or total > self.max_bytes):
            seq, size = self.kept.pop(0)
            stem = self.directory / f"frame-{seq:08d}"
            for suffix in (".npy", ".json"):
                stem.with_suffix(suffix).unlink(missing_ok=True)
            total -= size
            dropped += 1
        self.dropped += dropped
        return dropped

    def _write_index(self) -> None:
        index = {
            "format": FORMAT,
            "input": self.input,
            "threshold": self.threshold,
            "max_frames": self.max_frames,
            "max_bytes": self.max_bytes,
            "frames": [seq for seq, _ in self.kept],
            "bytes": self.bytes,
            "captured": self.captured,
            "dropped": self.dropped,
        }
        tmp = self.directory / f".{INDEX}.tmp"
        try:
            _write_private(tmp, json.dumps(index, indent=1).encode())
            os.replace(tmp, self.directory / INDEX)
        except OSError as err:
            raise CaptureError(f"cannot write to {self.directory}: {err.strerror}") from None


def _npy_bytes(x: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, x, allow_pickle=False)
    return buffer.getvalue()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _size(npy: Path) -> int:
    """Bytes of one spooled frame: its tensor and its sidecar."""
    sidecar = npy.with_suffix(".json")
    return npy.stat().st_size + (sidecar.stat().st_size if sidecar.exists() else 0)
