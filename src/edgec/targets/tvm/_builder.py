"""A MetaSchedule candidate builder whose worker processes live for the whole tuning run.

MetaSchedule's ``LocalBuilder`` starts a fresh process pool for every batch of candidates (a
guard against a slow memory leak in long sessions). Each start imports TVM (and, through
``tvm_ffi``, torch when it is installed) plus TVM's tensor intrinsics: 10–20 s per batch on
this 2-core machine, against well under a second to build a small kernel. For the short
budgets edgec runs, that start-up dominated tuning, so this builder keeps one pool (same
worker function, same timeout and error reporting as ``LocalBuilder``) and shuts it down when
tuning ends. One worker is started right away so that its start-up overlaps the runner's
and the first search.
"""

from __future__ import annotations

from edgec.targets.tvm._env import worker_initializer, worker_ready


def persistent_builder(max_workers: int, timeout_sec: float, f_export, on_batch=None):
    """A ``PyBuilder`` with a long-lived pool, and that pool (``shutdown()`` it when done).

    ``on_batch(n)`` is called as each batch of ``n`` candidates is built: MetaSchedule reports
    measurements only when it collects them, often at the end, so builds show progress live.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import (
        _serialize_params,
        _worker_func,
    )
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    pool = PopenPoolExecutor(
        max_workers=max_workers, timeout=timeout_sec, initializer=worker_initializer
    )
    # Start one worker now: its start-up (seconds) overlaps the runner's and the search's.
    pool.submit(worker_ready)

    @derived_object
    class _PersistentBuilder(PyBuilder):
        def build(self, build_inputs):
            if on_batch is not None:
                on_batch(len(build_inputs))
            jobs = [
                (None, f_export, item.mod, item.target, _serialize_params(item.params))
                for item in build_inputs
            ]
            results = []
            for outcome in pool.map_with_error_catching(lambda x: _worker_func(*x), jobs):
                if outcome.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(outcome.value, None))
                elif outcome.status == StatusKind.TIMEOUT:
                    message = f"edgec builder: timeout, killed after {timeout_sec} s"
                    results.append(BuilderResult(None, message))
                else:
                    message = f"edgec builder: an exception occurred\n{outcome.value}"
                    results.append(BuilderResult(None, message))
            return results

    return _PersistentBuilder(), pool
