"""Shared helpers for the rewrite-rule passes: refusals with reasons, constants, rule runs.

A rule's ``check`` that rejects a match for a reason a user may care about (a BatchNormalization
that stays because its weight is shared) calls :func:`refuse`, which logs the reason at
``debug`` and returns the failed :class:`MatchResult`. :func:`apply_rules` runs rules one at a
time so a pass can report how often each fired. :class:`RulesPass` is the pass around a rule
set: apply, tidy up, say what changed in one line, report ``modified`` honestly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.rewriter import MatchResult, RewriteRule, RewriteRuleSet

from edgec.passes.instrument import count_nodes
from edgec.passes.opset_forms import OpsetGuardedRule

logger = logging.getLogger("edgec.passes")


def refuse(node: ir.Node | None, reason: str, *, log: bool = True) -> MatchResult:
    """A failed match whose reason is logged at debug as '<op> '<name>' kept: <reason>'."""
    if log and node is not None:
        logger.debug("%s '%s' kept: %s", node.op_type, node.name or "?", reason)
    return MatchResult().fail(reason)


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant array (initializer or folded Constant), else ``None``."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def other_users(value: ir.Value, allowed: set[ir.Node]) -> list[ir.Node]:
    """Consumers of ``value`` outside ``allowed``."""
    return [user for user, _ in value.uses() if user not in allowed]


def used_elsewhere(node: ir.Node, first: int = 1) -> bool:
    """Whether any output of ``node`` from index ``first`` on is consumed or a graph output."""
    return any(out.uses() or out.is_graph_output() for out in node.outputs[first:])


def opset_version(model: ir.Model, domain: str = "") -> int:
    """The model's opset version for ``domain`` (the default domain unless given)."""
    return model.opset_imports.get(domain, model.opset_imports.get("ai.onnx", 0))


def apply_rules(model: ir.Model, rules: Iterable[RewriteRule]) -> dict[str, int]:
    """Apply each rule to the model (one rule at a time); return how often each fired.

    Each rule is guarded (:class:`OpsetGuardedRule`): a replacement that is invalid in the
    model's opset is not applied.
    """
    counts: dict[str, int] = {}
    for rule in rules:
        count = RewriteRuleSet([OpsetGuardedRule(rule)]).apply_to_model(model)
        if count:
            name = rule.name or type(rule).__name__
            counts[name] = counts.get(name, 0) + count
    return counts


class RulesPass(ir.passes.InPlacePass):
    """An in-place pass that applies a rewrite rule set: the rewrite tail, written once.

    A subclass sets :attr:`rules` and, where the defaults do not fit, the other class
    attributes. One run applies the rules (up to :attr:`rounds` times, until none fires), runs
    the :attr:`finish` passes, and, when a rule fired, the :attr:`cleanup` passes. ``modified``
    is true exactly when a rule fired or a ``finish`` pass changed the model; one line at
    ``info`` on the subclass's module logger counts what went (``FoldPadIntoConvPass: folded
    2 PadIntoConv``), and nothing is logged when nothing did.

    Attributes:
        rules: The rules, applied one at a time so each one's count can be reported.
        verb: What the rules do to the nodes they match, for the summary line.
        rounds: Apply the rules again while they fire, at most this many times (a rewrite can
            enable another that the same round cannot see).
        finish: ``(label, pass class)`` run after the rules every time; the nodes each removes
            are reported under its label.
        cleanup: Pass classes run after :attr:`finish` when a rule fired (the rewrites leave
            unused nodes and Identity nodes behind).
    """

    rules: ClassVar[Iterable[RewriteRule]]
    verb: ClassVar[str] = "rewrote"
    rounds: ClassVar[int] = 1
    finish: ClassVar[tuple[tuple[str, type[ir.passes.PassBase]], ...]] = ()
    cleanup: ClassVar[tuple[type[ir.passes.PassBase], ...]] = (common.RemoveUnusedNodesPass,)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Apply the rules, then the finishing and clean-up passes; see the class docstring."""
        counts: dict[str, int] = {}
        for _ in range(self.rounds):
            this_round = apply_rules(model, self.rules)
            if not this_round:
                break
            for name, n in this_round.items():
                counts[name] = counts.get(name, 0) + n
        fired = modified = bool(counts)
        for label, finishing in self.finish:
            before = count_nodes(model)
            if finishing()(model).modified:
                modified = True
                removed = before - count_nodes(model)
                if removed:
                    counts[label] = counts.get(label, 0) + removed
        if fired:
            for tidy in self.cleanup:
                tidy()(model)
        if counts:
            logging.getLogger(type(self).__module__).info(
                "%s: %s %s",
                type(self).__name__,
                self.verb,
                ", ".join(f"{n} {name}" for name, n in counts.items()),
            )
        return ir.passes.PassResult(model, modified=modified)
