"""Students: smaller models derived from the teacher by structured pruning and distillation.

Public API: :func:`derive_students` (what the compile driver calls), :class:`StudentsResult`,
:class:`Student`, and :func:`plan_ladder`. Modules:

* ``ladder`` — how many students and how small (MAC ratios), sized from the target;
* ``convert`` / ``ops`` / ``shape_ops`` — ONNX -> torch (``nn.Module`` with real layers) for
  training; ``context`` holds the module being built and what the op translators see;
* ``prune`` — structured pruning to a MAC ratio with torch-pruning;
* ``distill`` — knowledge distillation by function matching (the training loop);
* ``augment`` — the views teacher and student share (by the input's kind, with mixup);
* ``teacher_cache`` — the teacher's logits on those views: one batched ONNX Runtime session,
  cached per run;
* ``export`` — back to ONNX, checked against torch;
* ``derive`` — the orchestration and the manifest record.

Only ``ladder`` and ``derive`` are imported here; the modules that need torch are imported when
students are actually trained, so the core install (no torch) can still compile.
"""

from __future__ import annotations

from edgec.compiler.students.derive import Student, StudentsResult, derive_students
from edgec.compiler.students.ladder import Ladder, Rung, plan_ladder

__all__ = ["Ladder", "Rung", "Student", "StudentsResult", "derive_students", "plan_ladder"]
