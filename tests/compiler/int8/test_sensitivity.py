"""Per-layer INT8 sensitivity (``edgec inspect --precision int8 --data D --sensitivity``).

The fragile teacher (conv 1's channel 0 scaled x1000, conv 2's input channel scaled back) has
one tensor INT8 cannot hold, between conv 1 and conv 2: quantizing either of them alone
quantizes it, so they must come out worst, far below the other layers.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from int8_helpers import TEACHER, fragile_teacher

from edgec.cli import main
from edgec.compiler.int8.sensitivity import layer_sensitivity
from edgec.data import load_dataset
from edgec.passes.quantize import Int8Flavour, calibrate, preprocess


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_fragile_layers_come_out_worst():
    """conv1 and conv2 (either quantizes the outlier tensor) rank first with output SQNR
    under 3 dB alone; every other layer alone stays above 25 dB; the order is worst first."""
    model, conv = fragile_teacher()
    data = load_dataset("digits")
    pre = preprocess(model)
    report = layer_sensitivity(
        pre, calibrate(pre, data.x_train[:100]), data.x_val[:100], Int8Flavour(reduce_range=True)
    )
    names = [layer.node for layer in report.layers]
    assert set(names[:2]) == {conv, "/conv2/Conv"}
    assert len(names) == 5 and report.samples == 100
    assert all(layer.alone_sqnr_db < 3.0 for layer in report.layers[:2])
    assert all(layer.alone_sqnr_db > 25.0 for layer in report.layers[2:])
    alone = [layer.alone_sqnr_db for layer in report.layers]
    assert alone == sorted(alone)
    assert report.full_sqnr_db < 3.0
    assert report.to_json()["layers"][0]["node"] == names[0]


@pytest.mark.slow
def test_cli_reports_every_compute_layer_in_json():
    """The CLI adds ``int8_sensitivity`` to the JSON: one row per compute layer of the
    example teacher, and the flavour it was read with."""
    result = run(
        "inspect", str(TEACHER), "--precision", "int8", "--data", "digits", "--sensitivity",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["int8_sensitivity"]
    assert len(report["layers"]) == 5  # three Convs, two Gemms
    assert {row["op"] for row in report["layers"]} == {"Conv", "Gemm"}
    assert report["flavour"].startswith(("u8s8", "s8s8"))


@pytest.mark.parametrize(
    "args", [("--sensitivity", "--data", "digits"), ("--precision", "int8", "--sensitivity")]
)
def test_cli_sensitivity_without_int8_or_data_is_refused(args):
    """--sensitivity without --precision int8, or without --data: exit 2, one sentence."""
    result = run("inspect", str(TEACHER), *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "--sensitivity needs --precision int8 and --data" in result.output
