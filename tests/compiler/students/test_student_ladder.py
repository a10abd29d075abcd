"""The student ladder: --students parsing, explicit ratios, and the default sized from the
target's cost model and the budget (no torch needed)."""

from __future__ import annotations

import pytest

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.loading import load_model
from edgec.compiler.planning.cost_model import layer_costs
from edgec.compiler.students.ladder import (
    MIN_RATIO,
    SMALL_RATIO,
    TINY_BUDGET_SHARE,
    TINY_RATIO,
    plan_ladder,
    stage_names,
)
from edgec.config import CompileConfig, parse_students
from edgec.errors import BadInputError
from edgec.targets import load_target


@pytest.fixture(scope="module")
def teacher(request):
    path = request.config.rootpath / "examples" / "digits" / "teacher.onnx"
    return canonicalize(load_model(path, {}).proto)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("auto", "auto"), ("None", "none"), ("0.3,0.1", (0.1, 0.3)), (" 0.05 ", (0.05,))],
)
def test_students_flag_parses(text, parsed):
    assert parse_students(text) == parsed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0", "between 0 and 1"),
        ("0.2,1.5", "between 0 and 1"),
        ("small", "not 'auto'"),
        ("0.1,0.1", "twice"),
    ],
)
def test_bad_students_flag_is_one_sentence(text, fragment):
    with pytest.raises(BadInputError, match=fragment):
        parse_students(text)


@pytest.mark.parametrize(
    ("field", "value"),
    [("distill_epochs", 0), ("distill_patience", 0), ("temperature", 0.0), ("alpha", 1.5)],
)
def test_bad_distillation_settings_are_refused(tmp_path, field, value):
    with pytest.raises(BadInputError, match=field.replace("_", "-")):
        CompileConfig(model=tmp_path / "m.onnx", target="host", output=tmp_path, **{field: value})


@pytest.mark.parametrize(("given", "classifier", "detector"), [(None, 20, 10), (4, 4, 4)])
def test_distill_patience_defaults_per_kind_of_student(tmp_path, given, classifier, detector):
    """Without ``--distill-patience`` classifier students wait 20 epochs (measured on
    benchmarks/distill.py) and detection students the 10 their benchmark was measured with;
    a given value reaches both."""
    pytest.importorskip("torch")
    from edgec.compiler.detection.students import detection_patience
    from edgec.compiler.students.derive import distill_settings

    config = CompileConfig(
        model=tmp_path / "m.onnx", target="host", output=tmp_path, distill_patience=given
    )
    assert distill_settings(config).patience == classifier
    assert detection_patience(config) == detector


def test_explicit_ratios_become_named_rungs_smallest_first(teacher):
    ladder = plan_ladder(
        (0.05, 0.2, 0.5), teacher, load_target("jetson-nano"), "onnxruntime", "fp32", None
    )
    assert [(r.name, r.mac_ratio) for r in ladder.rungs] == [
        ("tiny", 0.05),
        ("small", 0.2),
        ("medium", 0.5),
    ]
    assert stage_names(5)[-1] == "student-5"
    assert (
        plan_ladder("none", teacher, load_target("jetson-nano"), "onnxruntime", "fp32", None).rungs
        == ()
    )


def test_default_ladder_without_a_budget(teacher):
    ladder = plan_ladder(
        "auto", teacher, load_target("raspberry-pi-4"), "onnxruntime", "fp32", None
    )
    assert [r.mac_ratio for r in ladder.rungs] == [TINY_RATIO, SMALL_RATIO]
    assert "no --budget-ms" in ladder.sized_by


def test_tiny_student_is_sized_to_a_share_of_the_budget(teacher):
    """Between the clamps, the cost model's fixed + ratio * variable latency equals the share
    of the budget; tighter budgets give smaller tiny students, down to the floor."""
    target = load_target("raspberry-pi-4")
    costs = layer_costs(teacher, target, "onnxruntime", "fp32")
    total = sum(c.latency_ms for c in costs)
    fixed = len(costs) * target.cost_model.op_overhead_us / 1e3
    budget = (fixed + 0.05 * (total - fixed)) / TINY_BUDGET_SHARE
    tiny = plan_ladder("auto", teacher, target, "onnxruntime", "fp32", budget).rungs[0]
    assert tiny.name == "tiny" and tiny.mac_ratio == pytest.approx(0.05, abs=1e-3)
    ratios = [
        plan_ladder("auto", teacher, target, "onnxruntime", "fp32", b).rungs[0].mac_ratio
        for b in (0.01, budget / 2, budget, budget * 2, 100.0)
    ]
    assert ratios == sorted(ratios)
    assert ratios[0] == MIN_RATIO and ratios[-1] == TINY_RATIO
