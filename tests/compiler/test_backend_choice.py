"""Backend choice per stage and the cost model's view of TVM builds.

The measured choice itself (ONNX Runtime against a tuned TVM build on this machine) runs in
``tests/targets/tvm/test_tvm_rpc_tuning.py``, next to the tuning it depends on.
"""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from edgec.cli import main
from edgec.compiler.planning.cost_model import _peaks, estimate_latency
from edgec.targets import load_target


def test_tvm_on_a_cuda_target_is_estimated_on_the_gpu():
    """The TVM backend builds CUDA for the Jetson Nano, so the cost model uses its GPU peak;
    on the Raspberry Pi (no accelerator) and for ONNX Runtime it uses the CPU."""
    nano, pi = load_target("jetson-nano"), load_target("raspberry-pi-4")
    gpu_fp32 = nano.accelerator.peak_tflops_fp32 * 1e12
    assert _peaks(nano, "tvm", "fp32") == (gpu_fp32, nano.accelerator.memory_bandwidth_gbps * 1e9)
    assert _peaks(nano, "onnxruntime", "fp32")[0] == nano.cpu.peak_gflops_fp32 * 1e9
    assert _peaks(pi, "tvm", "fp32")[0] == pi.cpu.peak_gflops_fp32 * 1e9


def test_gpu_estimate_is_faster_than_the_cpu_estimate(teacher_path):
    """Same model, same board: the CUDA build's estimate is below the CPU build's."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(teacher_path))
    nano = load_target("jetson-nano")
    gpu = estimate_latency(model, nano, "tvm", "fp32")
    cpu = estimate_latency(model, nano, "onnxruntime", "fp32")
    assert gpu.source == cpu.source == "estimated"
    assert gpu.p50 < cpu.p50


@pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="the tvm extra is missing")
def test_tuning_for_a_board_without_its_device_exits_2(tmp_path, teacher_path):
    """Candidates can only be timed where they run: tuning for the Pi needs --device."""
    out = tmp_path / "b"
    result = CliRunner().invoke(
        main,
        ["compile", str(teacher_path), "-t", "raspberry-pi-4", "-o", str(out),
         "--tune-trials", "4", "--students", "none", "--precision", "fp32"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: --tune-trials for raspberry-pi-4 needs the device")
    assert "--device rpc://HOST:PORT" in lines[-1]
    assert not out.exists()
