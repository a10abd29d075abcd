"""``edgec inspect`` and the pass options of ``edgec compile`` (--time-passes, --dump-ir,
--preprocess) through the CLI, including their bad input (exit 2, one sentence, no bundle)."""

from __future__ import annotations

import json

import onnx
from click.testing import CliRunner
from models import randomized_light_model

from edgec.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_bad_input(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and lines[-1].endswith("."), lines
    assert fragment in lines[-1]


def test_inspect_json_has_a_row_per_node_and_consistent_totals(teacher_path):
    """Per-layer rows cover every node of the canonical graph; totals are their sums."""
    result = run("inspect", str(teacher_path), "--target", "jetson-nano", "--json", "--top", "3")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    layers = report["layers"]
    assert report["canonical"] and report["backend"] == "tensorrt"
    assert "BatchNormalization" not in {x["op"] for x in layers}
    assert report["totals"]["nodes"] == len(layers) == 12
    assert report["totals"]["macs"] == sum(x["macs"] for x in layers) > 2_000_000
    assert report["totals"]["params"] == sum(x["params"] for x in layers)
    assert report["totals"]["latency_source"] == "estimated"
    by_cost = sorted(layers, key=lambda x: x["latency_ms"], reverse=True)
    assert report["top"] == [x["name"] for x in by_cost[:3]]
    assert all(all(x["backends"].values()) for x in layers)
    assert {x["fusion"] for x in layers} >= {"Conv+Relu"}


def test_inspect_table_names_ops_a_backend_lacks(tmp_path, teacher_path):
    """A bundle with a fused uint8 frame input: TensorRT 8.4 takes no UINT8, so its Cast is
    flagged for tensorrt only; the text table says so with the list's source."""
    out = tmp_path / "b"
    compiled = run(
        "compile", str(teacher_path), "--target", "raspberry-pi-4", "-o", str(out),
        "--students", "none", "--precision", "fp32", "--preprocess", "uint8,nhwc,gray",
    )  # fmt: skip
    assert compiled.exit_code == 0, compiled.output
    stage = str(out / "stages" / "teacher" / "model.onnx")
    report = json.loads(run("inspect", stage, "--raw", "--json").stdout)
    assert report["unsupported"] == {"tensorrt": ["Cast"]}
    cast = next(x for x in report["layers"] if x["op"] == "Cast")
    assert cast["backends"] == {"onnxruntime": True, "tvm": True, "tensorrt": False}
    table = run("inspect", stage, "--raw", "--target", "jetson-nano")
    assert table.exit_code == 0
    assert "tensorrt lacks: Cast (source: onnx/onnx-tensorrt" in " ".join(table.stdout.split())


def test_inspect_of_a_light_model_as_given_and_canonical(tmp_path):
    """squeezenet as given has a Dropout row; its canonical form has none and one node less."""
    path = tmp_path / "squeezenet.onnx"
    onnx.save(randomized_light_model("squeezenet"), path)
    raw = json.loads(run("inspect", str(path), "--raw", "--json").stdout)
    canonical = json.loads(run("inspect", str(path), "--json").stdout)
    assert "Dropout" in {x["op"] for x in raw["layers"]}
    assert "Dropout" not in {x["op"] for x in canonical["layers"]}
    assert canonical["totals"]["nodes"] == raw["totals"]["nodes"] - 1

    def conv_macs(report):
        return sum(x["macs"] for x in report["layers"] if x["op"] in ("Conv", "Gemm"))

    assert conv_macs(canonical) == conv_macs(raw) > 300_000_000


def test_inspect_bad_input(tmp_path, teacher_path):
    """A missing model, an unknown target and --top 0 are one-sentence errors."""
    assert_bad_input(run("inspect", str(tmp_path / "none.onnx")), "does not exist")
    assert_bad_input(run("inspect", str(teacher_path), "--target", "toaster"), "toaster")
    assert_bad_input(run("inspect", str(teacher_path), "--top", "0"), "--top")


def test_compile_time_passes_and_dump_ir(tmp_path, teacher_path):
    """--time-passes prints a row per pass run; --dump-ir writes one model per pass run."""
    dump = tmp_path / "ir"
    result = run(
        "compile", str(teacher_path), "--target", "host", "-o", str(tmp_path / "b"),
        "--students", "none", "--precision", "fp32", "--measure-seconds", "0.2",
        "--time-passes", "--dump-ir", str(dump),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stderr.splitlines() if line.startswith("canonical ")]
    assert any("FoldBatchNormPass" in row and "(-3)" in row for row in rows)
    assert "nodes 15 -> 12" in result.stderr
    dumps = sorted(dump.glob("*.onnx"))
    assert len(dumps) == len(rows) + sum(
        line.startswith("finalize ") for line in result.stderr.splitlines()
    )
    assert len(onnx.load(dumps[-1]).graph.node) == 12


def test_compile_pass_options_bad_input(tmp_path, teacher_path):
    """--dump-ir at a file, and --preprocess that does not fit, exit 2 and write no bundle."""
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    out = tmp_path / "b"
    common = ("compile", str(teacher_path), "--target", "host", "-o", str(out))
    assert_bad_input(run(*common, "--dump-ir", str(a_file)), "is a file")
    assert_bad_input(run(*common, "--preprocess", "uint8,nhwc,rgb"), "channel")
    assert_bad_input(run(*common, "--preprocess", "uint8,jpeg"), "not understood")
    assert not out.exists()


def test_compile_with_preprocess_describes_the_frame(tmp_path, teacher_path):
    """The manifest's input is the frame (uint8 NHWC, source size) with the preprocess spec."""
    out = tmp_path / "b"
    result = run(
        "compile", str(teacher_path), "--target", "raspberry-pi-4", "-o", str(out),
        "--students", "none", "--precision", "fp32",
        "--preprocess", "uint8,nhwc,gray,size=24x32,resize=bilinear,scale=0.0625", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    (frame,) = manifest["inputs"]
    assert (frame["shape"], frame["dtype"], frame["layout"]) == ([1, 24, 32, 1], "uint8", "NHWC")
    assert frame["preprocess"]["resize"] == "bilinear"
    assert frame["preprocess"]["tensor"]["shape"] == [1, 1, 8, 8]
