"""edgec: compile a trained model into a latency-budgeted bundle for an edge device.

The Python API mirrors the CLI: :func:`compile_model` (``edgec compile``),
:func:`check_bundle` (``edgec check``), :func:`load_target` (``edgec targets show``).
"""

from __future__ import annotations

from edgec.compiler import CompileResult, GateResult, check_bundle, compile_model
from edgec.config import CompileConfig
from edgec.errors import BadInputError, EdgecError, GateFailedError
from edgec.targets import load_target

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
