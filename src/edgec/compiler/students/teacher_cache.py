"""The teacher's logits on the views students train on: ONNX Runtime, batched, cached per run.

Function matching (:mod:`~edgec.compiler.students.augment`) asks the teacher for its logits on
every augmented view a student sees, so the teacher runs as often as the students train. One
:class:`TeacherCache` per compile holds one ONNX Runtime session and answers each batch of views
with one ``run`` (the teacher's batch dimension is made symbolic for that: see
:func:`batched_teacher`). Views are keyed by a hash of their bytes, so a view the teacher has
already seen in this run — the same seeded view stream for the next student of the ladder, or the
validation split every epoch — is looked up, not recomputed.

The session uses one intra-op thread: its results then do not depend on how many threads the
machine has, and the students train on one thread too.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from edgec.runtime.loaders import session_options

MAX_ENTRIES = 2_000_000
CHECK_ROWS = 4
TOLERANCE = 1e-4


def batched_teacher(teacher: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``teacher`` whose first input and output take any batch, or ``None``.

    A teacher exported at batch 1 often flattens with a ``Reshape`` to ``[1, -1]`` or
    ``[1, features]``; such a leading 1 becomes 0 (copy the input's batch). Whether the result
    really computes per-sample what the original does is checked by :class:`TeacherCache`.
    """
    model = onnx.ModelProto()
    model.CopyFrom(teacher)
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        return None
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        if not dims:
            return None
        dims[0].Clear()
        dims[0].dim_param = "batch"
    del graph.value_info[:]  # shapes inferred at batch 1 would contradict a larger batch
    initializers = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        init = initializers[node.input[1]]
        shape = numpy_helper.to_array(init).copy()
        if shape.ndim == 1 and len(shape) and shape[0] == 1:
            shape[0] = 0
            init.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), init.name))
    return model


class TeacherCache:
    """The teacher's logits on arrays of views, batched through ONNX Runtime and cached.

    Attributes:
        batched: Whether views run as one batch (else one at a time: the teacher's batch is
            fixed and could not be freed).
        computed: Views the teacher ran on.
        reused: Views answered from the cache.
        seconds: Wall time spent in ONNX Runtime.
    """

    def __init__(self, teacher: onnx.ModelProto, max_entries: int = MAX_ENTRIES):
        self._max_entries = max_entries
        self._index: dict[bytes, int] = {}
        self._rows = np.zeros((0, 0), dtype=np.float32)
        self._count = 0
        self.computed = 0
        self.reused = 0
        self.seconds = 0.0
        self._single = self._session(teacher)
        self._input = self._single.get_inputs()[0].name
        self._batched = None
        candidate = batched_teacher(teacher)
        if candidate is not None:
            try:
                self._batched = self._session(candidate)
            except Exception:  # ORT refuses the model: stay at batch 1
                self._batched = None
        self.batched = self._batched is not None
        self._checked = False

    @staticmethod
    def _session(model: onnx.ModelProto) -> ort.InferenceSession:
        return ort.InferenceSession(
            model.SerializeToString(),
            session_options("all", 1),
            providers=["CPUExecutionProvider"],
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The teacher's logits on ``x`` (float32, batch first), one row per view."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in x]
        found = [self._index.get(key) for key in keys]
        missing = [i for i, at in enumerate(found) if at is None]
        fresh = self._run(x[missing]) if missing else None
        self.reused += len(x) - len(missing)
        self.computed += len(missing)
        out = None
        for j, i in enumerate(missing):
            found[i] = -1 - j  # negative: a row of ``fresh``
        if fresh is not None:
            out = np.empty((len(x), fresh.shape[1]), dtype=np.float32)
            out[missing] = fresh
            self._store([keys[i] for i in missing], fresh)
        hits = [i for i, at in enumerate(found) if at >= 0]
        if hits:
            rows = self._rows[[found[i] for i in hits]]
            if out is None:
                out = np.empty((len(x), rows.shape[1]), dtype=np.float32)
            out[hits] = rows
        if out is None:  # an empty batch
            return np.zeros((0, self._rows.shape[1]), dtype=np.float32)
        return out

    def _run(self, x: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            if self._batched is not None and not self._checked:
                self._check_batched(x)
            if self._batched is not None:
                out = self._batched.run(None, {self._input: x})[0]
            else:
                out = np.concatenate(
                    [self._single.run(None, {self._input: x[i : i + 1]})[0] for i in range(len(x))]
                )
        finally:
            self.seconds += time.perf_counter() - started
        return np.asarray(out, dtype=np.float32).reshape(len(x), -1)

    def _check_batched(self, x: np.ndarray) -> None:
        """Keep the batched session only if it gives what batch 1 gives on a few rows."""
        self._checked = True
        rows = x[:CHECK_ROWS]
        reference = np.concatenate(
            [self._single.run(None, {self._input: rows[i : i + 1]})[0] for i in range(len(rows))]
        )
        try:
            batched = self._batched.run(None, {self._input: rows})[0]
            same = batched.shape == reference.shape and np.allclose(
                batched, reference, rtol=TOLERANCE, atol=TOLERANCE
            )
        except Exception:  # a shape the graph hard-codes: stay at batch 1
            same = False
        if not same:
            self._batched = None
            self.batched = False

    def _store(self, keys: list[bytes], rows: np.ndarray) -> None:
        if self._count + len(rows) > self._max_entries:
            return  # full: later views are computed again rather than growing without bound
        if self._rows.shape[1] != rows.shape[1] or self._count + len(rows) > len(self._rows):
            grown = np.zeros((max(1024, 2 * (self._count + len(rows))), rows.shape[1]), np.float32)
            if self._count:
                grown[: self._count] = self._rows[: self._count]
            self._rows = grown
        self._rows[self._count : self._count + len(rows)] = rows
        for offset, key in enumerate(keys):
            self._index.setdefault(key, self._count + offset)
        self._count += len(rows)

    def stats(self) -> dict:
        """Counts for the manifest (no wall time: bundles stay reproducible)."""
        return {
            "batched": self.batched,
            "views_computed": self.computed,
            "views_reused": self.reused,
        }
