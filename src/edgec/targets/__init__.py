"""Targets (device descriptors) and the backends that build for them.

Public API: :func:`load_target`, :func:`shipped_target_names`, :class:`Target`,
:func:`get_backend`, :func:`choose_backend`, :func:`availability`, :class:`LatencyStats`.
"""

from __future__ import annotations

from edgec.targets.base import Artifact, BuildOptions, LatencyStats
from edgec.targets.descriptor import Target, load_target, shipped_target_names
from edgec.targets.registry import availability, backend_names, choose_backend, get_backend

__all__ = [
    "Artifact",
    "BuildOptions",
    "LatencyStats",
    "Target",
    "availability",
    "backend_names",
    "choose_backend",
    "get_backend",
    "load_target",
    "shipped_target_names",
]
