"""Shared helpers for the rewrite-rule passes: refusals with reasons, constants, rule runs.

A rule's ``check`` that rejects a match for a reason a user may care about (a BatchNormalization
that stays because its weight is shared) calls :func:`refuse`, which logs the reason at
``debug`` and returns the failed :class:`MatchResult`. :func:`apply_rules` runs rules one at a
time so a pass can report how often each fired.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRule, RewriteRuleSet

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


def is_graph_input(value: ir.Value) -> bool:
    """Whether ``value`` is a graph input (a user can feed it, so it is not constant)."""
    return value.is_graph_input()


def other_users(value: ir.Value, allowed: set[ir.Node]) -> list[ir.Node]:
    """Consumers of ``value`` outside ``allowed``."""
    return [user for user, _ in value.uses() if user not in allowed]


def used_elsewhere(node: ir.Node, first: int = 1) -> bool:
    """Whether any output of ``node`` from index ``first`` on is consumed or a graph output."""
    return any(out.uses() or out.is_graph_output() for out in node.outputs[first:])


def opset_version(model: ir.Model, domain: str = "") -> int:
    """The model's opset version for ``domain`` (the default domain unless given)."""
    return model.opset_imports.get(domain, model.opset_imports.get("ai.onnx", 0))


def fresh_name(graph: ir.Graph, base: str) -> str:
    """An initializer name based on ``base`` that the graph does not use yet."""
    name, index = base, 1
    while name in graph.initializers:
        name = f"{base}_{index}"
        index += 1
    return name


def apply_rules(model: ir.Model, rules: Sequence[RewriteRule]) -> dict[str, int]:
    """Apply each rule to the model (one rule at a time); return how often each fired."""
    counts: dict[str, int] = {}
    for rule in rules:
        count = RewriteRuleSet([rule]).apply_to_model(model)
        if count:
            name = rule.name or type(rule).__name__
            counts[name] = counts.get(name, 0) + count
    return counts
