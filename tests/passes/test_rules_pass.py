"""RulesPass: the rewrite tail every rule pass shares (apply, tidy up, one line, honest flag)."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir.passes.common as common
from onnx import helper
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet
from pass_helpers import assert_same_outputs, make_model, ops, run_pass

from edgec.passes._rewrite import RulesPass
from edgec.passes.eliminate import EliminateNoOpsPass
from edgec.passes.fold_affine import FoldAffinePass


def _summary_lines(caplog) -> list[str]:
    """Info lines of edgec's passes (and of this module's pass), not onnx_ir's own."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and r.name.startswith(("edgec.", __name__))
    ]


def test_identity_only_model_is_modified_and_says_so_in_one_line(caplog):
    """An Identity removed by the finishing pass counts: modified, and one info line names it."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Identity", ["a"], ["b"]),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    model = make_model(nodes, {"x": [2, 3]}, ["y"], {})
    with caplog.at_level(logging.INFO, logger="edgec.passes"):
        after, modified = run_pass(model, EliminateNoOpsPass())
    assert modified and ops(after) == ["Relu", "Relu"]
    assert _summary_lines(caplog) == ["EliminateNoOpsPass: removed 1 Identity"]


def test_nothing_to_rewrite_is_not_modified_and_logs_nothing(caplog):
    """No rule fires and nothing is finished: ``modified`` is false and no line is logged."""
    nodes = [helper.make_node("Add", ["x", "z"], ["y"])]
    model = make_model(nodes, {"x": [3]}, ["y"], {"z": np.full(3, 0.5)})
    with caplog.at_level(logging.INFO, logger="edgec.passes"):
        after, modified = run_pass(model, EliminateNoOpsPass())
    assert not modified and ops(after) == ["Add"]
    assert _summary_lines(caplog) == []


def test_rule_and_finish_counts_share_one_line(caplog):
    """x*1 then an Identity: one line with both counts, the rule's first."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mul", ["r", "one"], ["m"]),
        helper.make_node("Identity", ["m"], ["i"]),
        helper.make_node("Relu", ["i"], ["y"]),
    ]
    model = make_model(nodes, {"x": [1, 4, 3, 3]}, ["y"], {"one": np.ones((4, 1, 1))})
    with caplog.at_level(logging.INFO, logger="edgec.passes"):
        after, modified = run_pass(model, EliminateNoOpsPass())
    assert modified and ops(after) == ["Relu", "Relu"]
    (line,) = _summary_lines(caplog)
    assert line.startswith("EliminateNoOpsPass: removed 1 ") and line.endswith(", 2 Identity")
    assert_same_outputs(model, after)


def test_rounds_repeat_until_nothing_fires(caplog):
    """A scale/shift chain needs several rounds; the counts of all rounds are in one line."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mul", ["r", "s1"], ["m1"]),
        helper.make_node("Add", ["m1", "t1"], ["a1"]),
        helper.make_node("Mul", ["a1", "s2"], ["m2"]),
        helper.make_node("Add", ["m2", "t2"], ["y"]),
    ]
    inits = {k: rng.standard_normal((4, 1, 1)) for k in ("s1", "t1", "s2", "t2")}
    model = make_model(nodes, {"x": [1, 4, 3, 3]}, ["y"], inits)
    with caplog.at_level(logging.INFO, logger="edgec.passes"):
        after, modified = run_pass(model, FoldAffinePass())
    assert modified and ops(after) == ["Relu", "Mul", "Add"]
    (line,) = _summary_lines(caplog)
    assert line.startswith("FoldAffinePass: folded ")
    assert_same_outputs(model, after)


class _NegNeg(RewriteRuleClassBase):
    """``Neg(Neg(x))`` -> ``x`` (through an Identity, which the clean-up removes)."""

    def pattern(self, op, x):
        return op.Neg(op.Neg(x))

    def check(self, context, x) -> MatchResult:
        return MatchResult()

    def rewrite(self, op, x):
        return op.Identity(x)


class _DropDoubleNegation(RulesPass):
    rules = RewriteRuleSet([_NegNeg.rule(name="DoubleNeg")])
    verb = "dropped"
    cleanup = (common.IdentityEliminationPass, common.RemoveUnusedNodesPass)


def test_a_pass_is_configured_by_its_rule_set_alone(caplog):
    """A new rule pass is a rule set, a verb and its clean-up: it counts, tidies and logs."""
    nodes = [
        helper.make_node("Neg", ["x"], ["a"]),
        helper.make_node("Neg", ["a"], ["b"]),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    model = make_model(nodes, {"x": [2, 3]}, ["y"], {})
    with caplog.at_level(logging.INFO):
        after, modified = run_pass(model, _DropDoubleNegation())
    assert modified and ops(after) == ["Relu"]
    assert _summary_lines(caplog) == ["_DropDoubleNegation: dropped 1 DoubleNeg"]
    _, again = run_pass(after, _DropDoubleNegation())
    assert not again
