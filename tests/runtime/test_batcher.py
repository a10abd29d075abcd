"""The gateway's batcher (``runtime/batcher.py``): batch size, wait, deadlines, stopping.

Real queues and threads; waits are bounded to a fraction of a second.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest

from edgec.runtime import batcher


def _queue(*items) -> queue.Queue:
    jobs: queue.Queue = queue.Queue()
    for item in items:
        jobs.put(item)
    return jobs


def test_waiting_requests_are_taken_at_once_up_to_the_max_batch():
    """Ten queued jobs, max batch 4: batches of 4, 4, 2, each taken without waiting."""
    jobs = _queue(*range(10))
    take = batcher.Batcher(jobs, 4, wait_s=0.5)
    started = time.perf_counter()
    assert take.collect() == ([0, 1, 2, 3], False)
    assert take.collect() == ([4, 5, 6, 7], False)
    # The last batch is short: it waits for more, at most the wait.
    assert take.collect() == ([8, 9], False)
    assert time.perf_counter() - started < 0.5 + 0.3


def test_a_lone_request_waits_at_most_the_batch_wait_and_a_late_one_joins():
    """One job, then another 50 ms later, with a 300 ms wait: both in one batch, returned
    when the wait is over (the batch is not full); alone, a job waits the wait and no more."""
    jobs = _queue("a")
    take = batcher.Batcher(jobs, 8, wait_s=0.3)
    threading.Timer(0.05, jobs.put, args=("b",)).start()
    started = time.perf_counter()
    assert take.collect() == (["a", "b"], False)
    assert 0.25 < time.perf_counter() - started < 0.6
    jobs.put("c")
    started = time.perf_counter()
    assert take.collect() == (["c"], False)
    assert 0.25 < time.perf_counter() - started < 0.6


def test_the_max_batch_ends_the_wait_before_the_wait_is_over():
    """Max batch 2 and a 0.9 s wait: the batch leaves as soon as its second job arrives."""
    jobs = _queue("a")
    take = batcher.Batcher(jobs, 2, wait_s=0.9)
    threading.Timer(0.05, jobs.put, args=("b",)).start()
    started = time.perf_counter()
    assert take.collect() == (["a", "b"], False)
    assert time.perf_counter() - started < 0.5


def test_no_job_waits_past_its_own_latest_start():
    """A 0.9 s wait, but the first job must start within 100 ms: the batch leaves by then;
    a later job with a nearer deadline shortens the wait further."""
    now = time.perf_counter
    jobs = _queue(("a", now() + 0.1))
    take = batcher.Batcher(jobs, 8, wait_s=0.9, latest_start=lambda job: job[1])
    started = now()
    batch, stop = take.collect()
    assert [job[0] for job in batch] == ["a"] and not stop
    assert time.perf_counter() - started < 0.5
    jobs.put(("b", None))
    threading.Timer(0.02, jobs.put, args=(("c", now() + 0.08),)).start()
    started = now()
    batch, _ = take.collect()
    assert [job[0] for job in batch] == ["b", "c"]
    assert now() - started < 0.5


def test_max_batch_one_never_waits():
    """Without batching a job is handed over alone, at once."""
    jobs = _queue("a", "b")
    take = batcher.Batcher(jobs, 1, wait_s=0.9)
    started = time.perf_counter()
    assert take.collect() == (["a"], False)
    assert time.perf_counter() - started < 0.1


def test_a_stop_signal_ends_the_batch_and_the_worker():
    """``None`` (a worker's stop) inside a batch: the jobs before it are returned with stop;
    ``None`` first: an empty batch and stop."""
    take = batcher.Batcher(_queue("a", None, "b"), 8, wait_s=0.5)
    assert take.collect() == (["a"], True)
    assert batcher.Batcher(_queue(None), 8, wait_s=0.5).collect() == ([], True)


@pytest.mark.parametrize(
    ("max_batch", "wait_ms", "message"),
    [(0, 1.0, "max batch"), (2000, 1.0, "max batch"), (8, -1.0, "batch wait"), (8, 5000, "wait")],
)
def test_settings_out_of_range_are_refused(max_batch, wait_ms, message):
    """A batch size of 0 or a negative wait is one sentence, not a worker that spins."""
    with pytest.raises(ValueError, match=message):
        batcher.check_settings(max_batch, wait_ms)


def test_the_planned_wait_is_the_wait_only_when_batching():
    """The planner budgets the batch wait when the gateway batches, nothing otherwise."""
    assert batcher.planned_wait_ms(8, 2.0) == 2.0
    assert batcher.planned_wait_ms(1, 2.0) == 0.0


def _collect_in_thread(take: batcher.Batcher, results: list) -> threading.Thread:
    """A worker that collects one batch and notes it with the time it was returned."""

    def work() -> None:
        batch, _ = take.collect()
        results.append((batch, time.perf_counter()))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def _wait_idle(take: batcher.Batcher, count: int) -> None:
    deadline = time.perf_counter() + 5.0
    while take.idle < count:
        assert time.perf_counter() < deadline, "the workers did not start waiting"
        time.sleep(0.005)


def test_a_worker_does_not_wait_for_company_while_another_worker_is_idle():
    """Two workers waiting, one job, a 0.5 s wait: the worker that takes it runs it at once
    (the next job would go to the idle worker, so waiting could not grow the batch); the
    other one, now the only worker waiting, still waits for company as before."""
    jobs: queue.Queue = queue.Queue()
    take = batcher.Batcher(jobs, 8, wait_s=0.5)
    results: list = []
    threads = [_collect_in_thread(take, results) for _ in range(2)]
    _wait_idle(take, 2)
    started = time.perf_counter()
    jobs.put("a")
    deadline = time.perf_counter() + 5.0
    while not results:
        assert time.perf_counter() < deadline
        time.sleep(0.002)
    assert results[0][0] == ["a"]
    assert results[0][1] - started < 0.25  # before: the full 0.5 s wait
    started = time.perf_counter()
    jobs.put("b")  # the other worker: every other worker is busy now, so it waits
    for thread in threads:
        thread.join(5.0)
    assert results[1][0] == ["b"]
    assert 0.4 < results[1][1] - started < 1.5


def test_a_batch_is_no_larger_than_its_jobs_allow():
    """Eight jobs queued, max batch 8, but each job can be answered in time only in a batch
    of at most 3 (``max_rows``): batches of 3, 3, 2; the rest stays queued meanwhile."""
    jobs = _queue(*range(8))
    take = batcher.Batcher(jobs, 8, wait_s=0.05, max_rows=lambda job: 3)
    assert take.collect() == ([0, 1, 2], False)
    assert jobs.qsize() == 5
    assert take.collect() == ([3, 4, 5], False)
    assert take.collect() == ([6, 7], False)


def test_a_job_with_room_for_fewer_rows_ends_the_batch_there():
    """Job 2 allows a batch of 3 at most: the batch stops growing at 3 (the others allow 8)."""
    jobs = _queue(*range(6))
    take = batcher.Batcher(jobs, 8, wait_s=0.05, max_rows=lambda job: 3 if job == 2 else 8)
    assert take.collect() == ([0, 1, 2], False)


def test_a_worker_leaves_an_idle_worker_its_share_of_the_queue():
    """Eight jobs land at once while two workers wait (as if the second had not woken yet):
    the worker that takes them takes four, not eight, and leaves at once; the other worker
    takes the other four. Before, one worker ran all eight while the other stayed idle."""
    jobs: queue.Queue = queue.Queue()
    take = batcher.Batcher(jobs, 8, wait_s=0.5)
    results: list = []
    threads = [_collect_in_thread(take, results) for _ in range(2)]
    _wait_idle(take, 2)
    time.sleep(0.05)  # both are inside the queue's wait now
    started = time.perf_counter()
    with jobs.not_empty:  # one burst, one wake-up: the second worker sleeps on
        jobs.queue.extend(range(8))
        jobs.unfinished_tasks += 8
        jobs.not_empty.notify()
    deadline = time.perf_counter() + 5.0
    while not results:
        assert time.perf_counter() < deadline
        time.sleep(0.002)
    assert results[0][0] == [0, 1, 2, 3]
    assert results[0][1] - started < 0.25  # it did not wait: a worker is idle
    jobs.put(None)  # wakes the other worker, which finds the rest
    for thread in threads:
        thread.join(5.0)
    assert results[1][0] == [4, 5, 6, 7]
