"""ONNX Runtime stages on GPU targets record the execution providers the runtime tries.

Real compiles of the digits teacher with ``--backend onnxruntime`` for t4-gateway (INT8, and
FP32) and jetson-nano (FP32), plus the ONNX Runtime TensorRT calibration table against ONNX
Runtime's own writer. No GPU or TensorRT here: these check the recorded options and files,
never a TensorRT run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgec.compiler import compile_model
from edgec.config import CompileConfig
from edgec.passes.calibration_table import CalibrationTable, parse_ort_tensorrt_table
from edgec.targets.descriptor import load_target
from edgec.targets.onnxruntime import providers

TEACHER = Path(__file__).resolve().parents[2] / "examples" / "digits" / "teacher.onnx"
ORDER = [providers.TENSORRT, providers.CUDA, providers.CPU]
LATENCY_SOURCES = {"measured-host", "measured-device", "estimated"}


def _compile(tmp_path_factory, target: str, precision: str) -> Path:
    root = tmp_path_factory.mktemp(f"{target}-{precision}")
    result = compile_model(
        CompileConfig(
            model=TEACHER,
            target=target,
            output=root / "bundle",
            backend="onnxruntime",
            data="digits",
            students="none",
            precision=precision,
            measure_seconds=0.2,
        )
    )
    return result.bundle


@pytest.fixture(scope="module")
def t4_int8(tmp_path_factory) -> Path:
    return _compile(tmp_path_factory, "t4-gateway", "int8")


@pytest.fixture(scope="module")
def nano_fp32(tmp_path_factory) -> Path:
    return _compile(tmp_path_factory, "jetson-nano", "fp32")


def _stage(bundle: Path) -> dict:
    (stage,) = json.loads((bundle / "manifest.json").read_text())["stages"]
    return stage


def _latency_sources(value) -> list[str]:
    """Every ``source`` anywhere in the manifest."""
    if isinstance(value, dict):
        found = [value["source"]] if isinstance(value.get("source"), str) else []
        return found + [s for v in value.values() for s in _latency_sources(v)]
    if isinstance(value, list):
        return [s for v in value for s in _latency_sources(v)]
    return []


def test_an_int8_qdq_stage_on_t4_gets_tensorrt_int8_without_a_table(t4_int8):
    """A Q/DQ INT8 stage: TensorRT FP16+INT8 (explicit quantization, so no calibration table,
    which TensorRT refuses for Q/DQ models), engine cache template, then CUDA, then CPU."""
    stage = _stage(t4_int8)
    assert stage["precision"] == "int8"
    options = stage["backend_options"]
    plan = options["execution_providers"]
    assert [p["name"] for p in plan] == ORDER
    assert plan[0]["options"] == {
        "trt_fp16_enable": True,
        "trt_int8_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": "engines/{gpu}/{trt_version}/{stage_sha256}",
    }
    assert plan[1]["options"] == plan[2]["options"] == {}
    assert options["optimization_level"] == "basic"
    assert options["session_optimization_level"] == "extended"
    # The basic level keeps the Q/DQ nodes TensorRT quantizes from (no CPU-only fusions).
    artifact = onnx.load(t4_int8 / stage["artifact"])
    assert providers.has_qdq(artifact)
    assert not any(n.domain == "com.microsoft" for n in artifact.graph.node)
    assert not (t4_int8 / "stages" / "teacher" / providers.ORT_TABLE_NAME).exists()


def test_the_plan_reaches_the_generated_runtime(t4_int8):
    """bundle_config.py carries the providers list (the renderer keeps it, not only scalars)."""
    text = (t4_int8 / "runtime" / "bundle_config.py").read_text()
    assert '"name": "TensorrtExecutionProvider"' in text
    assert '"trt_engine_cache_path": "engines/{gpu}/{trt_version}/{stage_sha256}"' in text


def test_an_fp32_stage_on_jetson_nano_gets_tensorrt_fp16_and_no_int8(nano_fp32):
    """The Nano lists fp16: TensorRT may use FP16 for an FP32 stage; no INT8, no table."""
    stage = _stage(nano_fp32)
    assert stage["precision"] == "fp32"
    plan = stage["backend_options"]["execution_providers"]
    assert [p["name"] for p in plan] == ORDER
    trt = plan[0]["options"]
    assert trt["trt_fp16_enable"] is True and trt["trt_int8_enable"] is False
    assert "trt_int8_calibration_table_name" not in trt
    assert sorted(p.name for p in (nano_fp32 / "stages" / "teacher").iterdir()) == [
        "model.onnx",
        "model.ort.onnx",
    ]


@pytest.mark.parametrize("fixture", ["t4_int8", "nano_fp32"])
def test_no_latency_in_the_manifest_claims_tensorrt(fixture, request):
    """Latencies say measured-host, measured-device or estimated; never TensorRT."""
    bundle = request.getfixturevalue(fixture)
    manifest = json.loads((bundle / "manifest.json").read_text())
    sources = _latency_sources(manifest)
    assert sources and set(sources) <= LATENCY_SOURCES
    assert "tensorrt" not in json.dumps(manifest.get("stages")[0].get("latency_ms", {})).lower()


def test_a_cpu_target_records_no_providers(tmp_path):
    """raspberry-pi-4 has no GPU: no providers list, the portable extended level as before."""
    from edgec.targets.base import BuildOptions
    from edgec.targets.onnxruntime import OnnxRuntimeBackend

    artifact = OnnxRuntimeBackend().build(
        TEACHER, load_target("raspberry-pi-4"), tmp_path, BuildOptions()
    )
    assert "execution_providers" not in artifact.metadata
    assert artifact.metadata["optimization_level"] == "extended"
    assert not providers.is_gpu_target(load_target("raspberry-pi-4"))
    assert providers.is_gpu_target(load_target("jetson-nano"))


def test_an_int8_stage_without_qdq_gets_the_ort_table_it_reads(tmp_path):
    """An INT8 stage with no Q/DQ nodes (TensorRT calibrates it from a table): the table is
    written as calibration.flatbuffers from calibration.json and named in the options."""
    table = CalibrationTable(
        method="minmax", samples=8, ranges={"input": (-1.0, 2.5), "logits": (-7.0, 3.0)}
    )
    (tmp_path / "calibration.json").write_text(table.dumps())
    plan, written = providers.provider_plan(load_target("t4-gateway"), "int8", TEACHER, tmp_path)
    trt = plan[0]["options"]
    assert trt["trt_int8_enable"] is True
    assert trt["trt_int8_calibration_table_name"] == "calibration.flatbuffers"
    assert trt["trt_int8_use_native_calibration_table"] is False
    assert written == (tmp_path / "calibration.flatbuffers",)
    ranges = parse_ort_tensorrt_table(written[0].read_bytes())
    assert ranges == {"input": 2.5, "logits": 7.0}


def test_the_ort_table_matches_onnxruntimes_own_writer(tmp_path):
    """For symmetric ranges edgec's calibration.flatbuffers is byte-identical to what
    onnxruntime.quantization's write_calibration_table writes."""
    from onnxruntime.quantization.calibrate import TensorData
    from onnxruntime.quantization.quant_utils import write_calibration_table

    ranges = {"a": (-0.5, 0.5), "conv/out": (-3.25, 3.25), "z": (-1e-3, 1e-3)}
    cache = {
        name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        for name, (lo, hi) in ranges.items()
    }
    write_calibration_table(cache, dir=str(tmp_path))
    theirs = (tmp_path / "calibration.flatbuffers").read_bytes()
    table = CalibrationTable(
        method="minmax",
        samples=1,
        ranges={
            k: (float(np.float32(lo)), float(np.float32(hi))) for k, (lo, hi) in ranges.items()
        },
    )
    assert table.ort_tensorrt_table() == theirs
    assert parse_ort_tensorrt_table(theirs) == pytest.approx(
        {"a": 0.5, "conv/out": 3.25, "z": 1e-3}
    )


def test_a_broken_ort_table_is_one_sentence():
    """Bytes that are not a TrtTable are refused with BadInputError, not a traceback."""
    from edgec.errors import BadInputError

    with pytest.raises(BadInputError, match="not a TrtTable"):
        parse_ort_tensorrt_table(b"\x01\x02")
