"""From a target descriptor to a TVM target (JSON dict form) and the linker that exports it.

TVM 0.27 targets are dicts (``{"kind": "llvm", "mtriple": ..., "mcpu": ...}``); strings with
``-mcpu=`` flags are rejected. Descriptors carry them as ``tvm_target`` (and ``tvm_host``, the
CPU code of accelerator builds). Two gaps are filled here:

* ``host`` cannot name its CPU in a file: ``mcpu`` comes from LLVM's own detection
  (``tvm.target.codegen.llvm_get_system_cpu``; ``native`` is rejected by TVM).
* A CPU target needs ``num-cores`` for MetaSchedule; the descriptor's core count is used.

Shared objects for another architecture are linked with that architecture's GCC cross
compiler and its C library (Debian: ``gcc-aarch64-linux-gnu``, which only *recommends*
``libc6-dev-arm64-cross``: without it every link fails on ``crti.o``). A missing one is a
:class:`~edgec.errors.MissingDependencyError` naming the packages to install, never a linker
traceback; ``--backend auto`` then falls back to the target's next backend. Nothing here
imports TVM at module import.
"""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgec.errors import MissingDependencyError
from edgec.targets.descriptor import Target

# Target triple architecture -> (GCC cross compiler, the Debian packages a link needs: the
# compiler and the C library it links against).
_CROSS_COMPILERS = {
    "aarch64": ("aarch64-linux-gnu-gcc", ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross")),
    "arm": ("arm-linux-gnueabihf-gcc", ("gcc-arm-linux-gnueabihf", "libc6-dev-armhf-cross")),
    "armv7": ("arm-linux-gnueabihf-gcc", ("gcc-arm-linux-gnueabihf", "libc6-dev-armhf-cross")),
    "x86_64": ("x86_64-linux-gnu-gcc", ("gcc-x86-64-linux-gnu", "libc6-dev-amd64-cross")),
}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class TvmTarget:
    """What a TVM build for one descriptor needs.

    Attributes:
        spec: The TVM target dict (with ``host`` nested for accelerator builds).
        device: ``cpu`` or ``cuda``: where the compiled code runs.
        arch: The CPU architecture of the (host) code, from its triple (``x86_64``, ``aarch64``).
        cross_compiler: The GCC that links the shared object, or ``None`` for this machine's.
        threads: CPU threads the runtime uses (the descriptor's core count).
    """

    spec: dict
    device: str
    arch: str
    cross_compiler: str | None
    threads: int

    @property
    def cuda_arch(self) -> str | None:
        """``sm_XX`` of a CUDA build, else ``None``."""
        return str(self.spec["arch"]) if self.device == "cuda" else None


def this_machine_arch() -> str:
    """The architecture edgec runs on, in target-triple spelling."""
    machine = platform.machine().lower()
    return _MACHINE_ALIASES.get(machine, machine)


def _cpu_spec(base: dict | None, target: Target) -> dict:
    spec = dict(base or {"kind": "llvm"})
    if spec.get("kind") != "llvm":
        raise MissingDependencyError(
            f"Target '{target.name}': TVM CPU code needs an llvm target, "
            f"but its descriptor gives kind '{spec.get('kind')}'."
        )
    spec.setdefault("num-cores", target.cpu.cores)
    if "mtriple" not in spec and "mcpu" not in spec:
        if target.cpu.arch.replace("-", "_") != this_machine_arch():
            raise MissingDependencyError(
                f"Target '{target.name}' is a {target.cpu.arch} CPU but its descriptor has no "
                "tvm_target with an mtriple and mcpu; add one to build for it with TVM."
            )
        from edgec.targets.tvm._env import import_tvm, local_cores

        import_tvm(local_cores())  # TVM_NUM_THREADS first, should this be the first import
        from tvm.target import codegen

        spec["mcpu"] = codegen.llvm_get_system_cpu()
    return spec


def _triple_arch(spec: dict) -> str:
    triple = str(spec.get("mtriple", ""))
    return triple.split("-", 1)[0] if triple else this_machine_arch()


def install_hint(arch: str) -> str:
    """What to install to link shared objects for ``arch`` on a Debian/Ubuntu machine."""
    packages = _CROSS_COMPILERS.get(arch, (None, ()))[1]
    if packages:
        return f"apt-get install {' '.join(packages)}"
    return f"install a {arch} GCC cross compiler and its C library"


@functools.cache
def _links(compiler: str) -> bool:
    """Whether the compiler at path ``compiler`` finds the C start files (``crti.o``) a shared
    object links against (asked once per compiler)."""
    try:
        found = subprocess.run(
            [compiler, "-print-file-name=crti.o"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return Path(found).is_absolute() and Path(found).is_file()


def _cross_compiler(arch: str) -> str | None:
    if arch == this_machine_arch():
        return None
    compiler = _CROSS_COMPILERS.get(arch, (f"{arch}-linux-gnu-gcc", ()))[0]
    found = shutil.which(compiler)
    if found is None:
        raise MissingDependencyError(
            f"Linking TVM code for {arch} needs the cross compiler {compiler}, which is not "
            f"on PATH: {install_hint(arch)}."
        )
    if not _links(found):
        raise MissingDependencyError(
            f"Linking TVM code for {arch} needs the {arch} C library, which {compiler} does "
            f"not find (no crti.o): {install_hint(arch)}."
        )
    return compiler


def tvm_target_for(target: Target) -> TvmTarget:
    """The TVM target dict, device and linker for a descriptor.

    Raises:
        MissingDependencyError: The descriptor cannot be built with TVM here (no usable
            ``tvm_target``, or the cross compiler it needs is missing).
    """
    base = dict(target.tvm_target) if target.tvm_target else None
    if base is not None and base.get("kind") == "cuda":
        if "arch" not in base:
            raise MissingDependencyError(
                f"Target '{target.name}': a CUDA tvm_target needs an arch such as sm_87."
            )
        host = _cpu_spec(dict(target.tvm_host) if target.tvm_host else None, target)
        arch = _triple_arch(host)
        spec = {**base, "host": host}
        threads = int(host["num-cores"])
        device = "cuda"
    else:
        spec = _cpu_spec(base, target)
        arch = _triple_arch(spec)
        threads = int(spec["num-cores"])
        device = "cpu"
    return TvmTarget(
        spec=spec,
        device=device,
        arch=arch,
        cross_compiler=_cross_compiler(arch),
        threads=threads,
    )
