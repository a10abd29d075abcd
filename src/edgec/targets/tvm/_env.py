"""Importing Apache TVM the way edgec needs it: thread count first, quietly, and fast.

* ``TVM_NUM_THREADS`` is read when TVM's thread pool starts, so it is set before the first
  ``import tvm``; when TVM was already imported with another count, the running pool is
  reconfigured through ``runtime.config_threadpool``.
* ``TVM_BIND_THREADS=0``: otherwise TVM pins the calling thread to one core, and every thread
  created afterwards (ONNX Runtime's too) inherits it.
* ``TVM_FFI_DISABLE_TORCH_C_DLPACK=1``: ``tvm_ffi`` otherwise tries to JIT-compile a torch
  DLPack add-on at import when the installed torch lacks one. edgec never hands torch tensors
  to TVM, so that compile would be pure cost.
* TVMScript's ``@T.prim_func`` calls :func:`inspect.stack` for every function it parses, which
  resolves the source file of every frame through ``inspect.getmodule`` — a scan of
  ``sys.modules`` per frame. Importing ``tvm.s_tir.tensor_intrin`` (hundreds of intrinsics, done
  by MetaSchedule in the tuner and in every builder worker) therefore took 30–90 s here once
  torch was loaded. :func:`import_tensor_intrin` swaps in a stack walk that reads the same
  frames and source lines through :mod:`linecache` during that one import (3.5 s).
"""

from __future__ import annotations

import importlib
import inspect
import linecache
import os
import sys
import threading

from edgec.runtime.loaders import usable_cores

_LOCK = threading.Lock()


#: CPU cores this process may use: the runtime's count, the one definition edgec has.
local_cores = usable_cores


def import_tvm(threads: int | None = None):
    """Import and return the ``tvm`` module with ``threads`` worker threads.

    Raises:
        ImportError: TVM (the ``tvm`` extra) is not installed.
    """
    os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
    # TVM's thread pool pins the calling thread to core 0 by default; every thread it (or
    # ONNX Runtime, measured next in the same process) creates afterwards would inherit that
    # one-core affinity. edgec leaves placement to the OS.
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    already = "tvm" in sys.modules
    if threads and not already:
        os.environ["TVM_NUM_THREADS"] = str(threads)
    tvm = importlib.import_module("tvm")
    if threads and already and os.environ.get("TVM_NUM_THREADS") != str(threads):
        configure = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
        if configure is not None:
            configure(0, threads)  # 0: keep the default affinity mode
            os.environ["TVM_NUM_THREADS"] = str(threads)
    return tvm


def _stack_without_module_lookup(context: int = 1) -> list[inspect.FrameInfo]:
    """:func:`inspect.stack` minus the per-frame ``sys.modules`` scan (same frames, same lines)."""
    frame = sys._getframe(1)
    frames = []
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno) if context else ""
        frames.append(
            inspect.FrameInfo(
                frame,
                code.co_filename,
                frame.f_lineno,
                code.co_name,
                [line] if line else None,
                0 if line else None,
            )
        )
        frame = frame.f_back
    return frames


def import_tensor_intrin() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` with the fast stack walk (see the module docstring)."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    import_tvm()
    with _LOCK:
        original = inspect.stack
        inspect.stack = _stack_without_module_lookup
        try:
            importlib.import_module("tvm.s_tir.tensor_intrin")
        finally:
            inspect.stack = original


def worker_initializer() -> None:
    """Run in MetaSchedule's builder processes before their first build."""
    import_tensor_intrin()


def worker_ready() -> bool:
    """A no-op job that makes a builder pool start a worker (and run its initializer) early."""
    return True
