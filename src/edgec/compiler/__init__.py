"""The compiler driver: loading, stage planning, bundle writing and the latency gate.

Public API: :func:`compile_model`, :class:`CompileResult`, :func:`check_bundle`,
:class:`GateResult`, :func:`load_model`, :func:`read_manifest`.
"""

from __future__ import annotations

from edgec.compiler.bundle import read_manifest
from edgec.compiler.driver import CompileResult, compile_model
from edgec.compiler.gate import GateResult, check_bundle
from edgec.compiler.loading import load_model

__all__ = [
    "CompileResult",
    "GateResult",
    "check_bundle",
    "compile_model",
    "load_model",
    "read_manifest",
]
