"""Dynamic batching for the generated gateway: gather waiting requests into one batch.

Self-contained (standard library only): the runtime generator copies it verbatim into a
bundle's ``runtime/``, and the compiler's planner reads its defaults, so the plan budgets the
wait the gateway really adds.

A worker takes the first request waiting, then keeps taking requests until it holds
``max_batch`` of them or ``wait_s`` has passed since it took the first, whichever comes
first, and never past the latest moment any request it holds may still start (its deadline
less what the answer needs): a request's own deadline is never spent waiting for others.
Requests already queued are taken at once; the wait only applies while the queue is empty.
With ``max_batch`` 1 nothing waits: one request at a time, as without batching.

Work-conserving, for several workers on one queue:

* A worker waits for company only while every other worker is busy. When another worker is
  idle, the next request would go to that worker anyway, so waiting could only delay this
  batch, never grow it: the worker takes what is queued and runs at once.
* A worker leaves idle workers their share of the queue: it takes at most
  ``ceil(queued / ready workers)`` requests, so the batches run side by side instead of one
  worker running everything while the others wait (on a CPU, two batch-1 runs side by side
  often beat one batch of two).
* No request joins a batch that already holds as many as one of its requests allows
  (``max_rows``: how many rows can run before that request's deadline, from what batches
  have cost per row): a big batch never turns all of its requests into 504s. The others
  stay queued for the next free worker.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

# The gateway's defaults (``--max-batch``, ``--batch-wait-ms``) and what the planner assumes.
DEFAULT_MAX_BATCH = 8
DEFAULT_WAIT_MS = 2.0
MAX_BATCH_LIMIT = 1024
MAX_WAIT_MS = 1000.0


def check_settings(max_batch: int, wait_ms: float) -> None:
    """Raise ``ValueError`` (one sentence) for a batch size or wait out of range."""
    if not isinstance(max_batch, int) or not 1 <= max_batch <= MAX_BATCH_LIMIT:
        raise ValueError(f"the max batch must be from 1 to {MAX_BATCH_LIMIT}, got {max_batch}")
    if not (isinstance(wait_ms, int | float) and 0 <= wait_ms <= MAX_WAIT_MS):
        raise ValueError(f"the batch wait must be from 0 to {MAX_WAIT_MS:g} ms, got {wait_ms}")


def planned_wait_ms(max_batch: int, wait_ms: float) -> float:
    """The longest a request waits for others: ``wait_ms``, or nothing without batching."""
    return float(wait_ms) if max_batch > 1 else 0.0


class Batcher:
    """Takes batches of jobs off a queue shared by the workers.

    Args:
        jobs: The queue; ``None`` in it tells one worker to stop.
        max_batch: Most jobs per batch.
        wait_s: Longest wait for more jobs after the first.
        latest_start: The clock time by which a job must start to be of any use (``None``:
            no limit); the wait never goes past the earliest of the batch's.
        clock: The clock ``latest_start`` and the wait are on (monotonic seconds).
        max_rows: The largest batch a job may be in and still be answered in time (at
            least 1); no job joins a batch holding the smallest of its jobs' already.
    """

    def __init__(
        self,
        jobs: queue.Queue,
        max_batch: int,
        wait_s: float,
        latest_start: Callable[[Any], float | None] = lambda job: None,
        clock: Callable[[], float] = time.perf_counter,
        max_rows: Callable[[Any], int] | None = None,
    ):
        check_settings(max_batch, wait_s * 1000.0)
        self.jobs = jobs
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.latest_start = latest_start
        self.clock = clock
        self.max_rows = max_rows or (lambda job: max_batch)
        self._lock = threading.Lock()
        self._idle = 0  # workers waiting for the first job of their next batch

    @property
    def idle(self) -> int:
        """How many workers wait for a job right now."""
        with self._lock:
            return self._idle

    def collect(self) -> tuple[list, bool]:
        """The next batch (blocks for its first job) and whether this worker must stop after
        it (it took a ``None``); the batch is empty only when it must stop at once."""
        with self._lock:
            self._idle += 1
        try:
            first = self.jobs.get()
        finally:
            with self._lock:
                self._idle -= 1
        if first is None:
            return [], True
        batch = [first]
        if self.max_batch == 1:
            return batch, False
        limit = self._limit(self.max_batch, first)
        others = self.idle
        if others:
            # Idle workers take the next requests: leave them their share, and do not wait.
            share = math.ceil((1 + self.jobs.qsize()) / (1 + others))
            limit, until = min(limit, max(share, 1)), self.clock()
        else:
            until = self._bound(self.clock() + self.wait_s, first)
        while len(batch) < limit:
            left = until - self.clock()
            try:
                job = self.jobs.get(timeout=left) if left > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
            limit = self._limit(limit, job)
            until = self._bound(until, job)
            if self.idle:
                until = min(until, self.clock())  # a worker fell idle: stop waiting
        return batch, False

    def _limit(self, limit: int, job) -> int:
        return max(1, min(limit, int(self.max_rows(job))))

    def _bound(self, until: float, job) -> float:
        latest = self.latest_start(job)
        return until if latest is None else min(until, latest)
