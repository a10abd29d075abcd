"""Imports from ``ai-edge-litert`` (an optional extra): a missing install is one sentence."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgec.errors import MissingDependencyError


def litert_module(name: str) -> ModuleType:
    """The module ``ai_edge_litert.<name>``.

    Raises:
        MissingDependencyError: ``ai-edge-litert`` is not installed.
    """
    try:
        return importlib.import_module(f"ai_edge_litert.{name}")
    except ImportError:
        raise MissingDependencyError(
            "The litert backend needs ai-edge-litert: pip install 'edgec[litert]'."
        ) from None
