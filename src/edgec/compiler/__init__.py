"""The compiler driver: loading, stage planning, bundle writing and the latency gate.

Public API: :func:`compile_model`, :class:`CompileResult`, :func:`check_bundle`,
:class:`GateResult`, :func:`load_model`, :func:`read_manifest`; trusted bundles:
:func:`generate_keys`, :func:`sign_bundle`, :func:`verify_bundle` (:class:`VerifyResult`),
:func:`install_bundle`, :func:`rollback` (:class:`InstallResult`); ``edgec inspect``:
:func:`inspect_model` (:class:`InspectReport`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgec.compiler.bundle import read_manifest
    from edgec.compiler.driver import CompileResult, compile_model
    from edgec.compiler.gate import GateResult, check_bundle
    from edgec.compiler.inspection import InspectReport, inspect_model
    from edgec.compiler.install import InstallResult, install_bundle, rollback
    from edgec.compiler.loading import load_model
    from edgec.compiler.trust import VerifyResult, generate_keys, sign_bundle, verify_bundle

# Imported on first use: `edgec.compiler.install` and `trust` must not pull in onnx at start.
_LAZY = {
    "CompileResult": "edgec.compiler.driver",
    "GateResult": "edgec.compiler.gate",
    "check_bundle": "edgec.compiler.gate",
    "compile_model": "edgec.compiler.driver",
    "load_model": "edgec.compiler.loading",
    "InspectReport": "edgec.compiler.inspection",
    "inspect_model": "edgec.compiler.inspection",
    "read_manifest": "edgec.compiler.bundle",
    "InstallResult": "edgec.compiler.install",
    "install_bundle": "edgec.compiler.install",
    "rollback": "edgec.compiler.install",
    "VerifyResult": "edgec.compiler.trust",
    "generate_keys": "edgec.compiler.trust",
    "sign_bundle": "edgec.compiler.trust",
    "verify_bundle": "edgec.compiler.trust",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgec.compiler' has no attribute {name!r}")


__all__ = [
    "CompileResult",
    "GateResult",
    "InspectReport",
    "InstallResult",
    "VerifyResult",
    "check_bundle",
    "compile_model",
    "generate_keys",
    "inspect_model",
    "install_bundle",
    "load_model",
    "read_manifest",
    "rollback",
    "sign_bundle",
    "verify_bundle",
]
