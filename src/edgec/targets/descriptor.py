"""The device capability descriptor: a validated, frozen description of a target.

A target is data with a name. Shipped descriptors live in ``targets/descriptors/<name>.yaml``;
a user may pass the path of their own file with the same schema. ``host`` is not a file: it is
detected from the machine edgec runs on (see :mod:`edgec.targets.host`).

Every figure in a shipped descriptor comes from the vendor's published specifications, cited in
its ``sources`` list. Peak throughputs are the vendor's dense numbers (no structured sparsity).
"""

from __future__ import annotations

import difflib
import functools
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgec.errors import BadInputError
from edgec.targets.host import host_fields

Precision = Literal["fp32", "fp16", "int8"]
BackendName = str


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cpu(_Frozen):
    """The application CPU.

    Attributes:
        arch: ``x86_64`` or ``aarch64`` (``armv7l`` for 32-bit boards).
        model: Core name, e.g. ``Cortex-A72``.
        cores: Cores usable for inference (inference threads default to this).
        clock_ghz: Sustained clock.
        isa_features: ISA extensions relevant to inference (``neon``, ``dotprod``, ``avx2``,
            ``avx512f``, ``avx512_vnni``, ``amx_int8`` ...).
        peak_gflops_fp32: Peak FP32 throughput of all cores (FMA counted as 2 FLOPs).
        peak_gops_int8: Peak INT8 throughput of all cores (a multiply-accumulate is 2 ops).
    """

    arch: str
    model: str
    cores: int = Field(gt=0)
    clock_ghz: float = Field(gt=0)
    isa_features: tuple[str, ...] = ()
    peak_gflops_fp32: float = Field(gt=0)
    peak_gops_int8: float = Field(gt=0)


class Accelerator(_Frozen):
    """An inference accelerator next to the CPU (GPU, NPU, TPU).

    Attributes:
        kind: ``gpu``, ``npu`` or ``tpu``.
        model: Product name, e.g. ``128-core Maxwell``.
        arch: Architecture tag the compilers use (``sm_53``, ``edgetpu``).
        peak_tops_int8: Dense INT8 peak (TOPS), when the accelerator has INT8.
        peak_tflops_fp16: Dense FP16 peak (TFLOPS), when it has FP16.
        peak_tflops_fp32: FP32 peak (TFLOPS), when it has FP32.
        memory_bandwidth_gbps: Bandwidth of the memory it reads (GB/s).
    """

    kind: Literal["gpu", "npu", "tpu"]
    model: str
    arch: str
    peak_tops_int8: float | None = Field(default=None, gt=0)
    peak_tflops_fp16: float | None = Field(default=None, gt=0)
    peak_tflops_fp32: float | None = Field(default=None, gt=0)
    memory_bandwidth_gbps: float = Field(gt=0)


class Memory(_Frozen):
    """RAM and storage.

    Attributes:
        ram_gb: Main memory (shared with the GPU on Jetsons).
        bandwidth_gbps: Main memory bandwidth (GB/s).
        flash_gb: Storage for the bundle (eMMC, SD card, SSD); ``None`` when user-supplied.
    """

    ram_gb: float = Field(gt=0)
    bandwidth_gbps: float = Field(gt=0)
    flash_gb: float | None = Field(default=None, gt=0)


class Power(_Frozen):
    """Power envelope in watts (typical inference load and the board's maximum mode)."""

    typical_w: float = Field(gt=0)
    max_w: float = Field(gt=0)


class Link(_Frozen):
    """The network link from a device to its gateway.

    Attributes:
        rtt_ms: Round-trip time of a small request.
        bandwidth_mbps: Usable uplink bandwidth in megabits per second.
    """

    rtt_ms: float = Field(ge=0)
    bandwidth_mbps: float = Field(gt=0)


class Gateway(_Frozen):
    """Where a device offloads: the gateway's target name and the link to it."""

    target: str
    link: Link


class CostModel(_Frozen):
    """Efficiency factors of the roofline estimate (see :mod:`edgec.compiler.planning.cost_model`).

    Attributes:
        compute_efficiency: Share of peak compute a tuned backend reaches on real layers.
        memory_efficiency: Share of peak bandwidth reached when streaming tensors.
        op_overhead_us: Fixed cost per operator launch (kernel dispatch, scheduling).
    """

    compute_efficiency: float = Field(default=0.35, gt=0, le=1)
    memory_efficiency: float = Field(default=0.6, gt=0, le=1)
    op_overhead_us: float = Field(default=5.0, ge=0)


class Target(_Frozen):
    """A device, gateway or the host, as frozen data.

    Attributes:
        name: Registry name (``jetson-nano``); the file stem for shipped descriptors.
        kind: ``device`` (runs the first stages), ``gateway`` (receives offloads) or ``host``.
        description: One line for listings.
        sources: Where the figures come from (vendor pages, datasheets).
        cpu: The application CPU.
        accelerator: The inference accelerator, if any.
        memory: RAM and storage.
        power: Power envelope.
        precisions: Precisions the hardware runs natively.
        backends: Backend preference, best first (``tensorrt``, ``tvm``, ``onnxruntime``).
        toolchain: Versions of the vendor toolchain the device is stuck with
            (``tensorrt: "8.2"`` on the Jetson Nano).
        tvm_target: TVM target dict for the preferred TVM build (``{"kind": "cuda", ...}``).
        tvm_host: TVM target dict for the host code of accelerator builds.
        gateway: The gateway this device offloads to; ``None`` for gateways and the host.
        cost_model: Efficiency factors for latency estimates.
    """

    name: str
    kind: Literal["device", "gateway", "host"]
    description: str
    sources: tuple[str, ...] = Field(min_length=1)
    cpu: Cpu
    accelerator: Accelerator | None = None
    memory: Memory
    power: Power
    precisions: tuple[Precision, ...] = Field(min_length=1)
    backends: tuple[BackendName, ...] = Field(min_length=1)
    toolchain: dict[str, str] = Field(default_factory=dict)
    tvm_target: dict[str, str | int] | None = None
    tvm_host: dict[str, str | int] | None = None
    gateway: Gateway | None = None
    cost_model: CostModel = CostModel()

    @property
    def is_host(self) -> bool:
        """Whether this target is the machine edgec runs on (latency can be measured)."""
        return self.kind == "host"

    def summary(self) -> dict:
        """A JSON-friendly summary for manifests and listings."""
        return {
            "name": self.name,
            "kind": self.kind,
            "gateway": self.gateway.target if self.gateway else None,
        }


def _descriptor_dir() -> Path:
    return Path(str(resources.files("edgec.targets") / "descriptors"))


def shipped_target_names() -> list[str]:
    """Names of the shipped descriptors plus ``host``, sorted."""
    names = {p.stem for p in _descriptor_dir().glob("*.yaml")}
    return sorted(names | {"host"})


def _format_validation_error(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        what = "is not a known field (check its spelling against `edgec targets show host`)"
    elif first["type"] == "missing":
        what = "is required but missing"
    else:
        what = f"is invalid: {first['msg'].lower()} (got {first.get('input')!r})"
    return f"Target descriptor {path}: field '{field}' {what}."


def load_target_file(path: Path) -> Target:
    """Load and validate a descriptor YAML file.

    Raises:
        BadInputError: The file is missing, is not YAML, or does not match the schema; the
            message names the file, the field and what was expected.
    """
    if not path.is_file():
        raise BadInputError(f"Target descriptor {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BadInputError(f"Target descriptor {path} is not valid YAML{where}.") from None
    if not isinstance(data, dict):
        raise BadInputError(f"Target descriptor {path} must be a YAML mapping of fields.")
    data.setdefault("name", path.stem)
    try:
        return Target.model_validate(data)
    except ValidationError as err:
        raise BadInputError(_format_validation_error(path, err)) from None


@functools.cache
def detect_host() -> Target:
    """Describe this machine as a :class:`Target` named ``host`` (see :mod:`edgec.targets.host`)."""
    return Target.model_validate(host_fields())


def load_target(name_or_path: str) -> Target:
    """Resolve a target by registry name, ``host``, or a path to a descriptor file.

    Raises:
        BadInputError: Unknown name (the message suggests the closest names) or invalid file.
    """
    if name_or_path == "host":
        return detect_host()
    looks_like_path = name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path
    if looks_like_path:
        return load_target_file(Path(name_or_path))
    shipped = _descriptor_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return load_target_file(shipped)
    names = shipped_target_names()
    close = difflib.get_close_matches(name_or_path, names, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise BadInputError(
        f"Unknown target '{name_or_path}'.{hint} Run `edgec targets` for the list, "
        "or pass the path of a descriptor YAML file."
    )
