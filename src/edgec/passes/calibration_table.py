"""The calibration table: per-tensor activation ranges, as JSON and as a TensorRT 8 cache.

A :class:`CalibrationTable` holds what calibration measured: for every activation tensor the
lowest and highest value the calibration data produced (after the method's clipping for
``entropy``/``percentile``). It is written into the bundle twice where useful:

* ``calibration.json`` — edgec's own, documented form (schema ``edgec.calibration/1``) with the
  method, the number of samples and ``{"tensor": {"min": lo, "max": hi}}``.
* ``calibration.trt8.cache`` — the plain-text calibration cache TensorRT 8.x reads for implicit
  INT8 quantization (``IInt8Calibrator::readCalibrationCache``, ``trtexec --calib``)::

      TRT-8201-EntropyCalibration2
      input: 3c010a14
      /conv1/Conv_output_0: 3d9b6b2c

  The header is ``TRT-<NV_TENSORRT_VERSION>-<algorithm>`` where the version is
  ``major * 1000 + minor * 100 + patch`` of the TensorRT that will read it. Each line maps an
  ONNX tensor name to its symmetric INT8 scale ``max(|min|, |max|) / 127`` as the big-endian
  hex of its IEEE-754 float32 bits. The algorithm is always ``EntropyCalibration2``: that is
  the calibrator ``trtexec`` and most deployment code construct, and TensorRT ignores a cache
  whose algorithm does not match the calibrator reading it; the range computation edgec really
  used is recorded in the JSON. TensorRT 10 and later consume explicit Q/DQ ONNX instead (the
  stage's ``model.onnx``), so no cache is written for them.
* ``calibration.flatbuffers`` — the table ONNX Runtime's TensorRT execution provider reads
  (``trt_int8_calibration_table_name`` with ``trt_int8_use_native_calibration_table`` off):
  the FlatBuffers ``TrtTable`` schema ONNX Runtime ships
  (``onnxruntime.quantization.CalTableFlatBuffers``, the file its ``write_calibration_table``
  writes), one ``KeyValue`` per tensor whose value is the tensor's dynamic range as decimal
  text; the provider sets ``[-range, range]`` on the TensorRT tensor. It does not depend on
  the TensorRT version. edgec writes the symmetric range ``max(|min|, |max|)``.

This module only converts between data and text (or bytes); the callers write the files.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass

from edgec.errors import BadInputError

SCHEMA = "edgec.calibration/1"
TRT_ALGORITHM = "EntropyCalibration2"
_TRT_HEADER_RE = re.compile(r"^TRT-(\d+)-(\w+)$")
_TRT_LINE_RE = re.compile(r"^(.+): ([0-9a-fA-F]{8})$")


@dataclass(frozen=True)
class CalibrationTable:
    """Per-tensor activation ranges measured on calibration data.

    Attributes:
        method: ``minmax``, ``entropy`` or ``percentile``.
        samples: How many calibration inputs produced the ranges.
        ranges: ``{tensor name: (lowest, highest)}`` in the model's float units.
        data_sha256: Hash of the data set the samples came from (``""`` when unknown).
    """

    method: str
    samples: int
    ranges: dict[str, tuple[float, float]]
    data_sha256: str = ""

    def amax(self, name: str) -> float:
        """The symmetric range ``max(|lowest|, |highest|)`` of one tensor."""
        low, high = self.ranges[name]
        return max(abs(low), abs(high))

    def to_json(self) -> dict:
        """The ``calibration.json`` form."""
        return {
            "schema": SCHEMA,
            "method": self.method,
            "samples": self.samples,
            "data_sha256": self.data_sha256,
            "tensors": {
                name: {"min": float(low), "max": float(high)}
                for name, (low, high) in sorted(self.ranges.items())
            },
        }

    def dumps(self) -> str:
        """``calibration.json`` as text (sorted, indented, final newline)."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, data: dict) -> CalibrationTable:
        """Read the ``calibration.json`` form back.

        Raises:
            BadInputError: Not a calibration table of this schema.
        """
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise BadInputError(f"Not an edgec calibration table (schema {SCHEMA!r} expected).")
        ranges = {
            name: (float(item["min"]), float(item["max"]))
            for name, item in data.get("tensors", {}).items()
        }
        return cls(
            method=str(data["method"]),
            samples=int(data["samples"]),
            ranges=ranges,
            data_sha256=str(data.get("data_sha256", "")),
        )

    def tensorrt_cache(self, tensorrt_version: str) -> str:
        """The TensorRT 8.x calibration cache text for these ranges.

        Args:
            tensorrt_version: The version of the TensorRT that reads the cache (``"8.2.1"``;
                a missing patch counts as 0).

        Raises:
            BadInputError: The version is not a TensorRT 8 version.
        """
        number = tensorrt_version_number(tensorrt_version)
        lines = [f"TRT-{number}-{TRT_ALGORITHM}"]
        for name in sorted(self.ranges):
            # A tensor that never left 0 still needs a positive scale; TensorRT's own
            # calibrators write the smallest normal float in that case.
            scale = max(self.amax(name) / 127.0, _FLOAT32_TINY)
            lines.append(f"{name}: {_float_hex(scale)}")
        return "\n".join(lines) + "\n"

    def ort_tensorrt_table(self) -> bytes:
        """The ``calibration.flatbuffers`` bytes ONNX Runtime's TensorRT provider reads."""
        import flatbuffers
        from onnxruntime.quantization.CalTableFlatBuffers import KeyValue, TrtTable

        builder = flatbuffers.Builder(1024)
        entries = []
        for name in sorted(self.ranges):
            key = builder.CreateString(name)
            value = builder.CreateString(repr(float(self.amax(name))))
            KeyValue.KeyValueStart(builder)
            KeyValue.KeyValueAddKey(builder, key)
            KeyValue.KeyValueAddValue(builder, value)
            entries.append(KeyValue.KeyValueEnd(builder))
        TrtTable.TrtTableStartDictVector(builder, len(entries))
        for entry in entries:  # ORT's writer prepends in the same order
            builder.PrependUOffsetTRelative(entry)
        vector = builder.EndVector()
        TrtTable.TrtTableStart(builder)
        TrtTable.TrtTableAddDict(builder, vector)
        builder.Finish(TrtTable.TrtTableEnd(builder))
        return bytes(builder.Output())


def parse_ort_tensorrt_table(data: bytes) -> dict[str, float]:
    """Read ``calibration.flatbuffers`` back into ``{tensor name: dynamic range}``.

    Raises:
        BadInputError: The bytes are not such a table, or a range is not a positive number.
    """
    from onnxruntime.quantization.CalTableFlatBuffers import TrtTable

    try:
        table = TrtTable.TrtTable.GetRootAsTrtTable(bytearray(data), 0)
        pairs = [(table.Dict(i).Key(), table.Dict(i).Value()) for i in range(table.DictLength())]
        ranges = {key.decode(): float(value) for key, value in pairs}
    except Exception:  # flatbuffers raises struct/index/unicode errors on bad bytes
        raise BadInputError(
            "The ONNX Runtime TensorRT calibration table is not a TrtTable flatbuffer."
        ) from None
    if any(not math.isfinite(v) or v < 0 for v in ranges.values()):
        raise BadInputError("The ONNX Runtime TensorRT calibration table has a negative range.")
    return ranges


_FLOAT32_TINY = 1.1754943508222875e-38


def tensorrt_version_number(version: str) -> int:
    """``NV_TENSORRT_VERSION`` of a TensorRT 8 version string (``"8.2.1"`` -> 8201).

    Raises:
        BadInputError: Not of the form ``8.<minor>[.<patch>]``.
    """
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)?", version.strip())
    if not match or match.group(1) != "8":
        raise BadInputError(
            f"TensorRT version '{version}' is not 8.x; calibration caches are for TensorRT 8 "
            "(TensorRT 10 reads the explicit Q/DQ ONNX model instead)."
        )
    major, minor, patch = (int(g or 0) for g in match.groups())
    return major * 1000 + minor * 100 + patch


def _float_hex(value: float) -> str:
    return struct.pack(">f", value).hex()


def parse_tensorrt_cache(text: str) -> tuple[int, str, dict[str, float]]:
    """Parse a TensorRT calibration cache into ``(version number, algorithm, {name: scale})``.

    Raises:
        BadInputError: The header or a line is malformed, or a name appears twice.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise BadInputError("The TensorRT calibration cache is empty.")
    header = _TRT_HEADER_RE.match(lines[0].strip())
    if not header:
        raise BadInputError(
            f"TensorRT calibration cache header '{lines[0][:60]}' is not TRT-<version>-<algorithm>."
        )
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        match = _TRT_LINE_RE.match(line.rstrip())
        if not match:
            raise BadInputError(
                f"TensorRT calibration cache line {number} is not '<tensor>: <8 hex digits>'."
            )
        name, hex_bits = match.groups()
        if name in scales:
            raise BadInputError(f"TensorRT calibration cache lists tensor '{name}' twice.")
        (scale,) = struct.unpack(">f", bytes.fromhex(hex_bits))
        if not math.isfinite(scale) or scale <= 0:
            raise BadInputError(
                f"TensorRT calibration cache line {number} has a non-positive scale."
            )
        scales[name] = scale
    return int(header.group(1)), header.group(2), scales
