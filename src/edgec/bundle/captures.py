"""Read what ``--capture`` spooled and export it as a data file the next compile takes.

The device runtime's capture spool (:mod:`edgec.runtime.capture`) leaves one ``.npy`` per
frame (batch 1, the bundle's input layout) with a JSON sidecar and an ``index.json``.
:func:`export_captures` stacks the kept frames, oldest first, into ``x`` of an ``.npz``
(no ``y``: nobody has labelled them yet), the layout ``--data`` takes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgec.errors import BadInputError
from edgec.runtime import capture


@dataclass(frozen=True)
class CaptureSet:
    """The frames of a capture directory.

    Attributes:
        x: The frames stacked ``[N, ...]`` (the bundle's input without its batch of 1).
        records: Each frame's sidecar (time, stage, confidence, prediction, reason...).
        index: The directory's ``index.json`` (captured and dropped counts, caps).
    """

    x: np.ndarray
    records: tuple[dict, ...]
    index: dict

    def summary(self) -> dict:
        """Counts for the command line."""
        reasons: dict[str, int] = {}
        for record in self.records:
            reason = record.get("reason", "unknown")
            reasons[reason] = reasons.get(reason, 0) + 1
        return {
            "frames": len(self.records),
            "shape": list(self.x.shape),
            "dtype": str(self.x.dtype),
            "captured": self.index["captured"],
            "dropped": self.index["dropped"],
            "reasons": dict(sorted(reasons.items())),
        }


def read_captures(directory: Path) -> CaptureSet:
    """Every kept frame of a capture directory, oldest first.

    Raises:
        BadInputError: Not a capture directory, no frames, or frames that do not stack.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInputError(f"Capture directory {directory} does not exist.")
    try:
        index = capture.read_index(directory)
    except capture.CaptureError as err:
        raise BadInputError(
            f"{str(err)[:1].upper()}{str(err)[1:]}; give the DIR that "
            "`edgec run --capture DIR` wrote."
        ) from None
    frames, records = [], []
    for _, path in capture.frame_paths(directory):
        try:
            x = np.load(path, allow_pickle=False)
            sidecar = path.with_suffix(".json")
            records.append(json.loads(sidecar.read_text()) if sidecar.exists() else {})
        except (OSError, ValueError) as err:
            raise BadInputError(f"Captured frame {path} cannot be read: {err}.") from None
        frames.append(x)
    if not frames:
        raise BadInputError(f"Capture directory {directory} holds no frames yet.")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1 or len({f.dtype for f in frames}) > 1:
        raise BadInputError(
            f"The frames in {directory} differ in shape or dtype (from different bundles?); "
            "export each bundle's captures from its own directory."
        )
    stacked = np.concatenate([f if f.ndim and f.shape[0] == 1 else f[None] for f in frames])
    return CaptureSet(stacked, tuple(records), index)


def export_captures(directory: Path, output: Path) -> CaptureSet:
    """Write the captured frames to ``output`` (``.npz`` with ``x`` only); return them.

    The file is written next to ``output`` and moved into place, so a failed export leaves
    nothing half-written.

    Raises:
        BadInputError: Bad capture directory, an output that is not ``.npz``, or an
            unwritable output.
    """
    output = Path(output)
    if output.suffix != ".npz":
        raise BadInputError(f"Export to a .npz file (got {output}); e.g. captures.npz.")
    found = read_captures(directory)
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, x=found.x)
        os.replace(tmp, output)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise BadInputError(f"Cannot write {output}: {err.strerror}.") from None
    return found
