"""Custom kernels the backends run, each with a NumPy reference it is tested against.

Public API: :mod:`edgec.kernels.preprocess` (the fused camera-frame -> tensor kernel).
"""

from __future__ import annotations
