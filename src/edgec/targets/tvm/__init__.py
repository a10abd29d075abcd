"""The Apache TVM backend (extra ``tvm``): build, tune, cross-compile, measure here or on a device.

Public API: :class:`TvmBackend`. Importing this package does not import ``tvm``; the modules
that need it import it inside their functions (``TVM_NUM_THREADS`` must be set first, see
:mod:`edgec.targets.tvm._env`).

Modules: :mod:`.targets` (descriptor -> TVM target dict and linker), :mod:`.build` (ONNX ->
Relax -> shared object), :mod:`.tuning` (MetaSchedule, tuning database and cache),
:mod:`.runner` (runtime-only loading, what a device needs), :mod:`.rpc` (measuring and tuning
on a device through TVM RPC), :mod:`.ops` (the ONNX ops it imports), :mod:`.backend` (the
protocol).
"""

from __future__ import annotations

from edgec.targets.tvm.backend import TvmBackend

__all__ = ["TvmBackend"]
