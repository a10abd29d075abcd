"""Keep rewrites inside the model's opset: every node a rewrite emits must be valid there.

onnxscript's rewrite rules and its constant folder write the newest form of an op whatever
the model's opset: ``Gemm`` without ``C`` (``C`` is optional from opset 11),
``Unsqueeze``/``Squeeze``/``Split`` with ``axes``/``split`` as inputs (inputs from opset 13,
attributes before), ``Constant`` with ``value_ints`` (opset 12), ``Clip`` with ``min``/``max``
inputs (opset 11). In an older model each of these is an invalid node, and the compile failed
as an internal error.

Rather than a table of which rule needs which opset (which every onnxscript update can
silently outdate), every replacement is checked against ONNX's own schema for the op in the
model's default-domain opset:

* :func:`legalize` first rewrites the forms that have an exact older spelling: constant
  ``axes``/``split`` inputs (and an even Split's ``num_outputs``) become attributes before
  opset 13, ``Constant``'s ``value_*`` attributes become a ``value`` tensor before opset 12;
* :func:`form_error` then checks what remains (input and output counts, missing required
  inputs, unknown or missing attributes) and says why a node is invalid;
* a replacement with an invalid node is dropped (the matched nodes stay, which is always
  valid) and the reason is logged at ``debug``. :class:`OpsetGuardedRule` does this for a
  rewrite rule, :func:`replacement_error` for any list of new nodes (the constant folder).

Only the default domain is checked: other domains (``com.microsoft``) have no schema here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter import RewriteRule

logger = logging.getLogger("edgec.passes")

# Ops whose constant-list input was an attribute before opset 13: op -> (input index, attribute).
_INPUT_WAS_ATTRIBUTE = {"Squeeze": (1, "axes"), "Unsqueeze": (1, "axes"), "Split": (1, "split")}
_CONSTANT_VALUE_FORMS = {
    "value_int",
    "value_ints",
    "value_float",
    "value_floats",
    "value_string",
    "value_strings",
}


def default_opset(opsets: Mapping[str, int]) -> int | None:
    """The default-domain version in ``opsets`` (``""`` or ``"ai.onnx"``), else ``None``."""
    return opsets.get("", opsets.get("ai.onnx"))


def _is_default_domain(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def legalize(node: ir.Node, version: int) -> None:
    """Rewrite ``node`` in place into the older spelling of its form where one exists.

    Before opset 13 a constant ``axes`` (Squeeze, Unsqueeze) or ``split`` (Split) input becomes
    the attribute, and Split's ``num_outputs`` (opset 18) becomes ``split`` sizes when the split
    is even and static; before opset 12 a Constant's ``value_int(s)``/``value_float(s)``/
    ``value_string(s)`` becomes its ``value`` tensor. Anything else is left as it is (a
    non-constant ``axes`` input has no older spelling: :func:`form_error` reports it).
    """
    if not _is_default_domain(node):
        return
    moved = _INPUT_WAS_ATTRIBUTE.get(node.op_type)
    if version < 13 and moved is not None:
        index, name = moved
        given = node.inputs[index] if len(node.inputs) > index else None
        # A graph input with an initializer is a default the caller may override: not constant.
        if given is not None and not given.is_graph_input():
            tensor = ir.convenience.get_const_tensor(given)
            if tensor is not None and name not in node.attributes:
                values = [int(v) for v in np.atleast_1d(tensor.numpy()).reshape(-1)]
                node.resize_inputs(index)
                node.attributes[name] = ir.AttrInt64s(name, values)
    if version < 13 and node.op_type == "Split" and "num_outputs" in node.attributes:
        _split_sizes_from_count(node)
    if version < 12 and node.op_type == "Constant" and len(node.outputs) == 1:
        forms = _CONSTANT_VALUE_FORMS.intersection(node.attributes)
        if forms:
            tensor = ir.convenience.get_const_tensor(node.outputs[0])
            if tensor is not None:
                for form in forms:
                    node.attributes.pop(form)
                node.attributes["value"] = ir.AttrTensor("value", tensor)


def _split_sizes_from_count(node: ir.Node) -> None:
    """Split's ``num_outputs`` (opset 18) as the ``split`` attribute, for an even static split."""
    count = node.attributes["num_outputs"].as_int()
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
    shape = node.inputs[0].shape if node.inputs and node.inputs[0] is not None else None
    if shape is None or count <= 0 or not -len(shape) <= axis < len(shape):
        return
    size = shape[axis]
    if isinstance(size, int) and size % count == 0 and "split" not in node.attributes:
        node.attributes.pop("num_outputs")
        node.attributes["split"] = ir.AttrInt64s("split", [size // count] * count)


def form_error(node: ir.Node, version: int) -> str | None:
    """Why ``node`` is not a valid default-domain node at opset ``version``, else ``None``.

    Checks what changes between opsets: that the op exists, the number of inputs and outputs,
    required inputs left empty, and attributes the schema does not have or requires.
    """
    if not _is_default_domain(node):
        return None
    op = node.op_type
    try:
        schema = onnx.defs.get_schema(op, version, "")
    except onnx.defs.SchemaError:
        return f"{op} does not exist in opset {version}"
    where = f"{op}-{schema.since_version} (the form in force at opset {version})"
    inputs = list(node.inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    if not schema.min_input <= len(inputs) <= schema.max_input:
        expected = _count(schema.min_input, schema.max_input, "input")
        return f"{where} takes {expected}, not {len(inputs)}"
    for i, value in enumerate(inputs):
        formal = schema.inputs[min(i, len(schema.inputs) - 1)]
        if value is None and formal.option != onnx.defs.OpSchema.FormalParameterOption.Optional:
            return f"{where} needs input {formal.name}"
    outputs = len(node.outputs)
    if not schema.min_output <= outputs <= schema.max_output:
        expected = _count(schema.min_output, schema.max_output, "output")
        return f"{where} has {expected}, not {outputs}"
    for name in node.attributes:
        if name not in schema.attributes:
            return f"{where} has no attribute {name}"
    for name, attribute in schema.attributes.items():
        if attribute.required and name not in node.attributes:
            return f"{where} needs attribute {name}"
    return None


def _count(low: int, high: int, noun: str) -> str:
    """``1 input``, ``3 inputs``, ``2 to 3 inputs`` (an unbounded variadic max reads as such)."""
    if high >= 2**31 - 1:
        return f"{low} or more {noun}s"
    text = str(low) if low == high else f"{low} to {high}"
    return f"{text} {noun}{'' if text == '1' else 's'}"


def replacement_error(nodes: Iterable[ir.Node], opsets: Mapping[str, int]) -> str | None:
    """Legalize each new node for the model's opset, then return the first node's error.

    Args:
        nodes: The nodes a rewrite is about to insert (changed in place by :func:`legalize`).
        opsets: The model's opset imports.
    """
    version = default_opset(opsets)
    if version is None:
        return None
    nodes = list(nodes)
    for node in nodes:
        legalize(node, version)
    for node in nodes:
        error = form_error(node, version)
        if error is not None:
            return error
    return None


class OpsetGuardedRule:
    """A rewrite rule whose replacements must be valid in the model's opset.

    Stands in for the wrapped :class:`RewriteRule` everywhere a rule set uses one (everything
    but :meth:`try_rewrite` is the wrapped rule's). A replacement that is invalid after
    :func:`legalize` is not applied, and the reason is logged at ``debug``.
    """

    def __init__(self, rule: RewriteRule) -> None:
        self.rule = rule

    def __getattr__(self, name: str):
        return getattr(self.rule, name)

    def try_rewrite(self, model: ir.Model, graph_or_function, node: ir.Node, **kwargs):
        """The wrapped rule's replacement, or ``None`` when it is invalid in this opset."""
        delta = self.rule.try_rewrite(model, graph_or_function, node, **kwargs)
        if delta is None:
            return None
        # A function's own imports win; a subgraph (If branch) has none and uses the model's.
        opsets = {**model.opset_imports, **graph_or_function.opset_imports}
        error = replacement_error(delta.new_nodes, opsets)
        if error is not None:
            logger.debug(
                "%s skipped at %s '%s': %s",
                self.rule.name or type(self.rule).__name__,
                node.op_type,
                node.name or "?",
                error,
            )
            return None
        return delta


def guard_rules(rules: Sequence[RewriteRule]) -> list[OpsetGuardedRule]:
    """Each rule wrapped in :class:`OpsetGuardedRule` (rules already wrapped stay as they are)."""
    return [
        rule if isinstance(rule, OpsetGuardedRule) else OpsetGuardedRule(rule) for rule in rules
    ]
