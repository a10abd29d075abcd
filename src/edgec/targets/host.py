"""Detect the ``host`` target: the machine edgec runs on.

Cores come from the process's CPU affinity (what a container really gets), the clock and ISA
flags from ``/proc/cpuinfo`` on Linux (``platform`` elsewhere). Peak throughputs are derived
from the widest vector unit present, assuming two FMA pipes per core as on current x86 server
cores: AVX-512 gives 64 FP32 FLOP/cycle/core, AVX2 32, anything else 8; VNNI quadruples INT8.
They only feed the cost model: latency on the host is always measured.

Detection returns plain data (the descriptor's fields); :func:`edgec.targets.descriptor.detect_host`
validates it into a :class:`~edgec.targets.descriptor.Target`, so this module imports no
descriptor code.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from edgec.runtime.loaders import usable_cores

_INTERESTING_FLAGS = (
    "neon",
    "asimd",
    "asimddp",
    "sse4_2",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_int8",
    "amx_bf16",
)


def _cpuinfo() -> dict[str, str]:
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return {}
    fields: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def _ram_gb() -> float:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return 1.0


def _flops_per_cycle(flags: set[str]) -> tuple[int, int]:
    """FP32 FLOP/cycle/core and INT8 op/cycle/core for the widest vector unit present."""
    if "avx512f" in flags:
        fp32 = 64
    elif "avx2" in flags and "fma" in flags:
        fp32 = 32
    else:
        fp32 = 8
    int8 = fp32 * (4 if flags & {"avx512_vnni", "avx_vnni", "asimddp"} else 2)
    return fp32, int8


def host_fields() -> dict:
    """This machine's descriptor fields (a target named ``host``), as plain data."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    cores = usable_cores()
    clock_ghz = float(info.get("cpu MHz", "2000")) / 1000.0
    fp32, int8 = _flops_per_cycle(flags)
    arch = platform.machine() or "unknown"
    has_vnni = bool(flags & {"avx512_vnni", "avx_vnni", "asimddp"})
    return {
        "name": "host",
        "kind": "host",
        "description": f"this machine ({info.get('model name', arch)}, {cores} cores)",
        "sources": ("detected at run time from /proc/cpuinfo and the process affinity",),
        "cpu": {
            "arch": arch,
            "model": info.get("model name", platform.processor() or arch),
            "cores": cores,
            "clock_ghz": round(clock_ghz, 2),
            "isa_features": tuple(sorted(flags & set(_INTERESTING_FLAGS))),
            "peak_gflops_fp32": round(cores * clock_ghz * fp32, 1),
            "peak_gops_int8": round(cores * clock_ghz * int8, 1),
        },
        # Memory bandwidth is not detectable without a benchmark; 20 GB/s per core is a
        # typical share of a server socket. Only the cost model reads it.
        "memory": {"ram_gb": _ram_gb(), "bandwidth_gbps": 20.0 * cores},
        "power": {"typical_w": 15.0 * cores, "max_w": 25.0 * cores},
        "precisions": ("fp32", "int8") if has_vnni or "avx2" in flags else ("fp32",),
        # Under --backend auto every usable one is built and timed here; the fastest ships.
        "backends": ("onnxruntime", "litert", "tvm"),
        "toolchain": {"python": platform.python_version()},
        "tvm_target": {"kind": "llvm", "num-cores": cores},
    }
