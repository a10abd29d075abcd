"""edgec: compile a trained model into a latency-budgeted bundle for an edge device.

The Python API mirrors the CLI: :func:`compile_model` (``edgec compile``),
:func:`check_bundle` (``edgec check``), :func:`load_target` (``edgec targets show``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edgec.errors import BadInputError, EdgecError, GateFailedError

if TYPE_CHECKING:
    from edgec.compiler import CompileResult, GateResult, check_bundle, compile_model
    from edgec.config import CompileConfig
    from edgec.targets import load_target

# Imported on first use, so light commands (`edgec install`, `verify`, `--help`) do not pay
# for onnx and onnxruntime at start.
_LAZY = {
    "CompileConfig": "edgec.config",
    "CompileResult": "edgec.compiler",
    "GateResult": "edgec.compiler",
    "check_bundle": "edgec.compiler",
    "compile_model": "edgec.compiler",
    "load_target": "edgec.targets",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgec' has no attribute {name!r}")


__all__ = [
    "BadInputError",
    "CompileConfig",
    "CompileResult",
    "EdgecError",
    "GateFailedError",
    "GateResult",
    "check_bundle",
    "compile_model",
    "load_target",
]
