"""MetaSchedule autotuning: a trial budget, a database in the bundle, a reusable cache.

Tuning follows what works with TVM 0.27 (``tvm.s_tir.meta_schedule``): tasks are extracted from
the module fused exactly as ``compile_relax`` fuses it (:func:`.build.fused_for_tuning`), tuned
with the evolutionary search and the XGBoost cost model, and the database is applied by
``compile_relax``. ``--tune-trials N`` is MetaSchedule's global budget (``max_trials_global``):
with fewer trials than tasks only some tasks are tuned; the rest keep default schedules.

The database is written to ``stages/<name>/tuning/`` (``database_workload.json``,
``database_tuning_record.json``), so a bundle records how its schedules were found and can be
rebuilt from it. With ``--tuning-cache DIR`` the best record of every tuned task is also kept in
``DIR`` (the same JSON database) with a ledger ``edgec-tuning.json`` of (workloads, target,
trials) already run: a later compile of the same model for the same target with at most that
many trials re-tunes nothing (and needs no device); with more it tunes the tasks without
records, or every task (the search starting from the cached records) when all have one.

Candidates are measured on this machine (``LocalRunner``) or, with ``--device``, on the device
through its RPC server; candidates are linked as shared objects (cross-linked for other
architectures), so the device needs no compiler. Tuning for a target that is not this machine
needs ``--device``: a schedule can only be chosen where it runs.

MetaSchedule's console log goes to its own handler on stdout; it is silenced (its per-task logs
go to a temporary work directory) and replaced by :class:`TuningProgress` lines.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgec.errors import BadInputError
from edgec.targets.tvm._builder import persistent_builder
from edgec.targets.tvm._env import import_tensor_intrin, import_tvm, local_cores
from edgec.targets.tvm.build import fused_for_tuning, tvm_target
from edgec.targets.tvm.rpc import DeviceUrl, metaschedule_runner
from edgec.targets.tvm.targets import TvmTarget, this_machine_arch

logger = logging.getLogger(__name__)

DATABASE_DIR = "tuning"
LEDGER = "edgec-tuning.json"
_BUILD_TIMEOUT_S = 120.0
_RUN_TIMEOUT_S = 60.0


@dataclass
class TuningSummary:
    """What a tuning run did, for the manifest.

    Attributes:
        trials_requested: The budget (``--tune-trials``).
        trials_run: Candidates built and measured in this run (0 when all came from the cache).
        tasks: Tunable tasks (fused kernels) in the model.
        tasks_tuned: Tasks that got at least one trial in this run.
        tasks_from_cache: Tasks whose records came from the tuning cache.
        best_ms: Sum over measured tasks of weight x best kernel time (a lower bound of the
            model's latency: tasks without records are not in it), ``None`` before any result.
        seconds: Wall time of tuning.
        measured_on: ``this machine`` or the device URL.
        database: The database directory, relative to the stage directory.
        errors: Candidates that failed to build or run.
        first_error: The first failure's message, when there was one.
    """

    trials_requested: int
    trials_run: int = 0
    tasks: int = 0
    tasks_tuned: int = 0
    tasks_from_cache: int = 0
    best_ms: float | None = None
    seconds: float = 0.0
    measured_on: str = "this machine"
    database: str = DATABASE_DIR
    errors: int = field(default=0)
    first_error: str | None = None

    def to_json(self) -> dict:
        """The manifest form."""
        data = dict(self.__dict__)
        data["seconds"] = round(self.seconds, 2)
        data["best_ms"] = None if self.best_ms is None else round(self.best_ms, 6)
        return data


class TuningProgress:
    """Counts trials and best kernel times, and reports them through ``report`` (one line).

    Attributes:
        budget: The trial budget.
        weights: Task weights (how often each fused kernel runs in the model).
        names: Task names.
        trials: Candidates measured so far.
        errors: Candidates that failed to build or run.
        tried: Indices of the tasks that got at least one trial.
        best: Best mean run time (seconds) per task index.
    """

    def __init__(self, budget: int, names: list[str], weights: list[float], report) -> None:
        self.budget = budget
        self.names = names
        self.weights = weights
        self.report = report
        self.trials = 0
        self.errors = 0
        self.tried: set[int] = set()
        self.first_error: str | None = None
        self.built = 0
        self.best: dict[int, float] = {}

    def record(self, task_id: int, builder_results, runner_results) -> None:
        """Account for one measured batch of candidates of task ``task_id``."""
        self.tried.add(task_id)
        for built, ran in zip(builder_results, runner_results, strict=False):
            self.trials += 1
            if built.error_msg is not None or ran.error_msg is not None or not ran.run_secs:
                self.errors += 1
                if self.first_error is None:
                    self.first_error = _error_summary(built.error_msg or ran.error_msg)
                continue
            secs = [float(getattr(s, "value", s)) for s in ran.run_secs]
            mean = sum(secs) / len(secs)
            self.best[task_id] = min(self.best.get(task_id, float("inf")), mean)
        if self.report is not None:
            self.report(self.line(task_id))

    def building(self, count: int) -> None:
        """Account for ``count`` candidates sent to the builder."""
        self.built += count
        if self.report is not None:
            self.report(self.line())

    @property
    def best_ms(self) -> float | None:
        """Weighted sum of the best kernel times of the measured tasks, in milliseconds."""
        if not self.best:
            return None
        return 1000.0 * sum(self.weights[i] * t for i, t in self.best.items())

    def line(self, task_id: int | None = None) -> str:
        """``12/64 candidates built, 8 measured, 5/11 tasks, best 734.1 us (sum ...)``."""
        best = "—" if self.best_ms is None else format_ms(self.best_ms)
        last = f", last {self.names[task_id][:32]}" if task_id is not None else ""
        return (
            f"{self.built}/{self.budget} candidates built, {self.trials} measured, "
            f"{len(self.best)}/{len(self.names)} tasks, best {best} (sum of measured tasks){last}"
        )


def _error_summary(message: str | None) -> str:
    """The informative line of a MetaSchedule error (its last non-empty line)."""
    lines = [line.strip() for line in (message or "no result").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no result"


def format_ms(ms: float) -> str:
    """``0.0123`` -> ``12.3 us``; ``4.2`` -> ``4.200 ms``."""
    return f"{ms * 1000:.1f} us" if ms < 1 else f"{ms:.3f} ms"


def _progress_callback(progress: TuningProgress):
    """A MetaSchedule measure callback feeding ``progress`` (defined lazily: needs TVM)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, results):
            progress.record(int(task_id), builder_results, results)

    return _Progress()


def _workload_key(tasks, target_spec: dict) -> str:
    """A stable key for (the model's tunable kernels, the target)."""
    import_tvm()
    from tvm_ffi import structural_hash

    hashes = sorted(str(structural_hash(task.dispatched[0])) for task in tasks)
    text = json.dumps({"kernels": hashes, "target": target_spec}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_ledger(cache: Path) -> dict:
    path = cache / LEDGER
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("tuned", {})
    except (json.JSONDecodeError, AttributeError):
        raise BadInputError(
            f"--tuning-cache {cache}: {LEDGER} is not edgec's tuning ledger; "
            "point --tuning-cache at another directory."
        ) from None


def _write_ledger(cache: Path, ledger: dict) -> None:
    path = cache / LEDGER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"schema": "edgec.tuning-cache/1", "tuned": ledger}, indent=1))
    os.replace(tmp, path)


def _json_database(directory: Path):
    from tvm.s_tir import meta_schedule as ms

    directory.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(directory), allow_missing=True)


def _best_record(database, mod, target):
    if not database.has_workload(mod):
        return None
    records = database.get_top_k(database.commit_workload(mod), 1)
    return records[0] if records else None


def _copy_record(record, mod, into) -> None:
    from tvm.s_tir import meta_schedule as ms

    workload = into.commit_workload(mod)
    into.commit_tuning_record(
        ms.database.TuningRecord(
            record.trace,
            workload,
            record.run_secs,
            record.target,
            record.args_info,
        )
    )


def export_shared_object(mod, cross_compiler: str | None = None) -> str:
    """MetaSchedule export: link a candidate as a ``.so`` (the device needs no compiler)."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="edgec-candidate-"), "candidate.so")
    if cross_compiler:
        mod.export_library(path, fcompile=cc.cross_compiler(cross_compiler))
    else:
        mod.export_library(path)
    return path


def _search_strategy(trials: int, tasks: int):
    """Evolutionary search sized to the trials each task gets: MetaSchedule's defaults
    (population 512, 4 generations) from 64 trials per task, leaner below, where a search
    that costs seconds per task would dominate a budget of one or two measurements."""
    from tvm.s_tir import meta_schedule as ms

    per_task = trials / max(tasks, 1)
    if per_task >= 64:
        return ms.search_strategy.EvolutionarySearch()
    population = int(min(512, max(64, 32 * math.ceil(per_task))))
    return ms.search_strategy.EvolutionarySearch(
        population_size=population,
        init_min_unmeasured=min(50, population // 2),
        genetic_num_iters=4 if per_task >= 16 else 2,
    )


def _cost_model(trials: int) -> str:
    """XGBoost once there are enough measurements to learn from; random below 16 trials."""
    return "xgb" if trials >= 16 else "random"


@contextlib.contextmanager
def _quiet_metaschedule(work_dir: Path) -> Iterator[None]:
    """Keep MetaSchedule's console log off stdout; close its log files afterwards.

    MetaSchedule binds a console handler to ``sys.stdout`` when it creates its loggers (in
    ``extracted_tasks_to_tune_contexts``, the block this wraps). Stdout is redirected around
    that call only and the handler removed right after, so nothing else printed during tuning
    is swallowed; its log files (in the temporary ``work_dir``) are closed at the end.
    """
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        yield
    _close_handlers(lambda handler: getattr(handler, "stream", None) is sink)


def _close_handlers(matches: Callable[[logging.Handler], bool]) -> None:
    for name in list(logging.Logger.manager.loggerDict):
        if not name.startswith("tvm.s_tir.meta_schedule"):
            continue
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            if matches(handler):
                log.removeHandler(handler)
                handler.close()


def tune(
    mod,
    spec: TvmTarget,
    stage_dir: Path,
    trials: int,
    is_this_machine: bool,
    cache: Path | None = None,
    device: DeviceUrl | None = None,
    seed: int = 0,
    report: Callable[[str], None] | None = None,
):
    """Tune ``mod`` for ``spec``; return ``(database, summary)``.

    The database (this stage's records, from the cache or tuned now) is written under
    ``stage_dir / "tuning"``.

    Raises:
        BadInputError: Tuning needed for another machine without ``device`` (a cache that
            already holds the model and target needs no device), or an unusable cache.
    """
    started = time.perf_counter()
    import_tvm()
    from tvm.s_tir import meta_schedule as ms

    target = tvm_target(spec)
    fused = fused_for_tuning(mod, target)
    tasks = list(ms.relax_integration.extract_tasks(fused, target))
    database = _json_database(stage_dir / DATABASE_DIR)
    summary = TuningSummary(trials_requested=trials, tasks=len(tasks))
    summary.measured_on = str(device) if device else "this machine"
    if not tasks:
        summary.seconds = time.perf_counter() - started
        return database, summary

    cache_db = _json_database(cache) if cache is not None else None
    key = _workload_key(tasks, spec.spec)
    ledger = _read_ledger(cache) if cache is not None else {}
    cached = {}
    if cache_db is not None:
        for index, task in enumerate(tasks):
            record = _best_record(cache_db, task.dispatched[0], target)
            if record is not None:
                cached[index] = record
    done_before = ledger.get(key, {}).get("trials", 0)
    if done_before >= trials:
        to_tune = []
    else:
        to_tune = [t for i, t in enumerate(tasks) if i not in cached] or tasks
    for index, record in cached.items():
        _copy_record(record, tasks[index].dispatched[0], database)
    summary.tasks_from_cache = len(cached) if to_tune is not tasks else 0

    if to_tune and not is_this_machine and device is None:
        raise BadInputError(
            "Tuning measures candidates where they run: pass --device rpc://HOST:PORT (a TVM "
            "RPC server on the device) to tune for a target that is not this machine."
        )
    if to_tune:
        progress = TuningProgress(
            trials, [t.task_name for t in to_tune], [float(t.weight) for t in to_tune], report
        )
        _run_metaschedule(to_tune, spec, trials, database, device, seed, progress)
        summary.trials_run = progress.trials
        summary.errors = progress.errors
        summary.first_error = progress.first_error
        summary.tasks_tuned = len(progress.tried)
        summary.best_ms = progress.best_ms
    elif report is not None:
        report(
            f"already tuned with {done_before} trials in the tuning cache "
            f"({len(cached)} of {len(tasks)} tasks have records): nothing to tune"
        )

    if cache_db is not None:
        for task in to_tune:
            record = _best_record(database, task.dispatched[0], target)
            if record is not None:
                _copy_record(record, task.dispatched[0], cache_db)
        ledger[key] = {
            "trials": max(trials, done_before),
            "tasks": len(tasks),
            "target": json.dumps(spec.spec, sort_keys=True, default=str),
        }
        _write_ledger(cache, ledger)
    summary.seconds = time.perf_counter() - started
    return database, summary


def _run_metaschedule(tasks, spec, trials, database, device, seed, progress) -> None:

    cross = spec.cross_compiler if spec.arch != this_machine_arch() else None
    builder, pool = persistent_builder(
        max_workers=local_cores(),
        timeout_sec=_BUILD_TIMEOUT_S,
        f_export=functools.partial(export_shared_object, cross_compiler=cross),
        on_batch=progress.building,
    )
    runner = None
    try:
        # Worker processes take seconds to start: the builder's (started above) and the
        # runner's start while this process imports the tensor intrinsics.
        with concurrent.futures.ThreadPoolExecutor(1) as starter:
            runner_started = starter.submit(_runner, device)
            import_tensor_intrin()
            runner = runner_started.result()
        _tune_tasks(tasks, trials, database, seed, progress, builder, runner)
    finally:
        pool.shutdown()
        # MetaSchedule's runners keep a worker pool that only garbage collection would end
        # (the runner is held by TVM objects): end it here, so no worker outlives tuning.
        runner_pool = getattr(runner, "pool", None)
        if runner_pool is not None:
            runner_pool.shutdown()


def _runner(device: DeviceUrl | None):
    from tvm.s_tir import meta_schedule as ms

    if device is not None:
        return metaschedule_runner(device)
    return ms.runner.LocalRunner(
        timeout_sec=_RUN_TIMEOUT_S,
        evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0),
    )


def _tune_tasks(tasks, trials, database, seed, progress, builder, runner) -> None:
    from tvm.s_tir import meta_schedule as ms

    per_iter = max(1, min(64, trials // max(len(tasks), 1)))
    with tempfile.TemporaryDirectory(prefix="edgec-tune-") as tmp:
        work_dir = Path(tmp)
        with _quiet_metaschedule(work_dir):
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                tasks,
                str(work_dir),
                strategy=_search_strategy(trials, len(tasks)),
                num_threads=local_cores(),
                seed=seed,
            )
        try:
            ms.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=str(work_dir),
                max_trials_global=trials,
                num_trials_per_iter=per_iter,
                builder=builder,
                runner=runner,
                database=database,
                cost_model=_cost_model(trials),
                measure_callbacks=[
                    ms.measure_callback.AddToDatabase(),
                    ms.measure_callback.RemoveBuildArtifact(),
                    ms.measure_callback.UpdateCostModel(),
                    _progress_callback(progress),
                ],
            )
        except Exception as err:
            lines = [line for line in str(err).splitlines() if line.strip()]
            raise BadInputError(
                f"MetaSchedule tuning failed: {lines[-1] if lines else type(err).__name__}."
            ) from None
        finally:
            prefix = str(work_dir)
            _close_handlers(lambda h: str(getattr(h, "baseFilename", "")).startswith(prefix))
