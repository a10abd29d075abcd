"""The calibration table: its JSON form and the TensorRT 8 calibration cache parse back."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edgec.errors import BadInputError
from edgec.passes.calibration_table import (
    CalibrationTable,
    parse_tensorrt_cache,
    tensorrt_version_number,
)

TABLE = CalibrationTable(
    method="entropy",
    samples=300,
    ranges={"x": (0.0, 1.0), "/conv1/Conv_output_0": (-3.5, 12.25), "dead": (0.0, 0.0)},
    data_sha256="abc",
)


def test_json_form_round_trips_and_lists_every_tensor_range():
    data = json.loads(TABLE.dumps())
    assert data["schema"] == "edgec.calibration/1" and data["method"] == "entropy"
    assert data["tensors"]["/conv1/Conv_output_0"] == {"min": -3.5, "max": 12.25}
    assert CalibrationTable.from_json(data) == TABLE


def test_json_of_another_schema_is_refused():
    with pytest.raises(BadInputError, match="calibration table"):
        CalibrationTable.from_json({"schema": "something/1"})


@pytest.mark.parametrize(("version", "number"), [("8.2.1", 8201), ("8.2", 8200), ("8.6.1.6", 8601)])
def test_tensorrt_version_number_is_major_minor_patch(version, number):
    assert tensorrt_version_number(version) == number


@pytest.mark.parametrize("version", ["10.3", "7.1.3", "eight"])
def test_non_tensorrt_8_versions_get_no_cache(version):
    with pytest.raises(BadInputError, match=r"not 8\.x"):
        tensorrt_version_number(version)


def test_tensorrt_cache_parses_back_to_amax_over_127():
    """Header TRT-<version>-EntropyCalibration2, one '<name>: <hex float32 bits>' per tensor,
    scale = max(|min|, |max|) / 127 exactly as float32; a tensor that never left 0 gets the
    smallest positive normal float rather than a zero scale."""
    text = TABLE.tensorrt_cache("8.2.1")
    assert text.splitlines()[0] == "TRT-8201-EntropyCalibration2"
    number, algorithm, scales = parse_tensorrt_cache(text)
    assert (number, algorithm) == (8201, "EntropyCalibration2")
    assert set(scales) == set(TABLE.ranges)
    assert scales["/conv1/Conv_output_0"] == np.float32(12.25 / 127.0)
    assert scales["x"] == np.float32(1.0 / 127.0)
    assert 0 < scales["dead"] < 1e-37
    # The hex is the big-endian IEEE-754 bit pattern: 1/127 -> 0x3c010204.
    line = next(x for x in text.splitlines() if x.startswith("x: "))
    assert line == f"x: {struct.pack('>f', 1.0 / 127.0).hex()}" == "x: 3c010204"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("TRT8201\nx: 3c010204\n", "header"),
        ("TRT-8201-EntropyCalibration2\nx = 3c010204\n", "line 2"),
        ("TRT-8201-EntropyCalibration2\nx: 3c010204\nx: 3c010204\n", "twice"),
        ("TRT-8201-EntropyCalibration2\nx: bf800000\n", "non-positive"),
    ],
)
def test_malformed_tensorrt_caches_are_refused_with_the_reason(text, fragment):
    with pytest.raises(BadInputError, match=fragment):
        parse_tensorrt_cache(text)
