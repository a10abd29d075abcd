"""The compiler: loading, canonicalising, stage planning, building and writing the bundle.

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
    from edgec.bundle.gate import GateResult, check_bundle
    from edgec.bundle.install import InstallResult, install_bundle, rollback
    from edgec.bundle.io import read_manifest
    from edgec.bundle.trust import VerifyResult, generate_keys, sign_bundle, verify_bundle
    from edgec.compiler.driver import CompileResult, compile_model
    from edgec.compiler.inspect.inspection import InspectReport, inspect_model
    from edgec.compiler.loading import load_model

# Imported on first use: `edgec.bundle.install` and `trust` must not pull in onnx at start.
_LAZY = {
    "CompileResult": "edgec.compiler.driver",
    "GateResult": "edgec.bundle.gate",
    "check_bundle": "edgec.bundle.gate",
    "compile_model": "edgec.compiler.driver",
    "load_model": "edgec.compiler.loading",
    "InspectReport": "edgec.compiler.inspect.inspection",
    "inspect_model": "edgec.compiler.inspect.inspection",
    "read_manifest": "edgec.bundle.io",
    "InstallResult": "edgec.bundle.install",
    "install_bundle": "edgec.bundle.install",
    "rollback": "edgec.bundle.install",
    "VerifyResult": "edgec.bundle.trust",
    "generate_keys": "edgec.bundle.trust",
    "sign_bundle": "edgec.bundle.trust",
    "verify_bundle": "edgec.bundle.trust",
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
