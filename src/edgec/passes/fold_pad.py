"""Fold a zero ``Pad`` into the ``pads`` attribute of the Conv that consumes it.

``Conv(Pad(x, p))`` with constant zero padding on the spatial axes only equals
``Conv(x, pads = conv_pads + p)``. Both Pad forms are handled: opset < 11 (``pads`` and
``value`` attributes) and opset >= 11 (``pads``, ``constant_value`` and, from opset 18,
``axes`` inputs). onnxscript's ``FuseConvPad`` rule covers only the input form and indexes
``Pad``'s second input unconditionally, so it is not used on opset < 11 models.

Refused: a mode other than ``constant``; a non-zero pad value; non-constant pads; padding on the
batch or channel axis; negative pads (cropping); a Conv with ``auto_pad`` other than
``NOTSET``; an input of unknown rank. A Pad with other consumers stays for them.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet

from edgec.passes._rewrite import RulesPass, constant, refuse


def _pad_amounts(pad: ir.Node, rank: int) -> tuple[list[int] | None, str]:
    """The full ``[begin..., end...]`` pads of ``pad`` for a rank-``rank`` input, or a reason."""
    mode = pad.attributes.get("mode")
    if mode is not None and mode.as_string() != "constant":
        return None, f"mode is {mode.as_string()}"
    if (pads_attr := pad.attributes.get("pads")) is not None:  # opset < 11
        pads = list(pads_attr.as_ints())
        value_attr = pad.attributes.get("value")
        value = 0.0 if value_attr is None else value_attr.as_float()
        axes = list(range(rank))
    else:
        if len(pad.inputs) < 2 or (pads_array := constant(pad.inputs[1])) is None:
            return None, "pads are not constant"
        pads = [int(p) for p in pads_array.reshape(-1)]
        value = 0.0
        if len(pad.inputs) > 2 and pad.inputs[2] is not None:
            fill = constant(pad.inputs[2])
            if fill is None:
                return None, "the pad value is not constant"
            value = float(fill.reshape(-1)[0]) if fill.size else 0.0
        axes = list(range(rank))
        if len(pad.inputs) > 3 and pad.inputs[3] is not None:
            axes_array = constant(pad.inputs[3])
            if axes_array is None:
                return None, "axes are not constant"
            axes = [int(a) % rank for a in axes_array.reshape(-1)]
    if value != 0.0:
        return None, f"the pad value is {value}, not 0"
    if len(pads) != 2 * len(axes):
        return None, "pads do not match the axes"
    full = [0] * (2 * rank)
    for index, axis in enumerate(axes):
        full[axis] = pads[index]
        full[axis + rank] = pads[index + len(axes)]
    if any(full[a] or full[a + rank] for a in (0, 1)):
        return None, "it pads the batch or channel axis"
    if any(p < 0 for p in full):
        return None, "negative pads crop"
    return full, ""


class _PadIntoConv(RewriteRuleClassBase):
    """``Conv(Pad(x))`` -> ``Conv(x)`` with the pads added to the Conv's own."""

    def __init__(self) -> None:
        # The Pad may have other consumers: keep it for them (dead-node removal drops it
        # otherwise).
        super().__init__(name="PadIntoConv", remove_nodes=False)

    def pattern(self, op, x):
        padded = op.Pad(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["p"])
        return op.Conv(
            padded, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["conv_out"]
        )

    def check(self, context, x, p, conv_out) -> MatchResult:
        conv = conv_out.producer()
        if x.shape is None:
            return refuse(conv, "Pad not folded: input rank unknown")
        auto_pad = conv.attributes.get("auto_pad")
        if auto_pad is not None and auto_pad.as_string() not in ("NOTSET", ""):
            return refuse(conv, f"Pad not folded: auto_pad={auto_pad.as_string()}")
        full, reason = _pad_amounts(p.producer(), len(x.shape))
        if full is None:
            return refuse(conv, f"Pad not folded: {reason}")
        return MatchResult()

    def rewrite(self, op, x, p, conv_out):
        conv = conv_out.producer()
        rank = len(x.shape)
        full, _ = _pad_amounts(p.producer(), rank)
        spatial = full[2:rank] + full[rank + 2 :]
        attributes = dict(conv.attributes)
        existing = attributes.get("pads")
        old = list(existing.as_ints()) if existing is not None else [0] * len(spatial)
        attributes["pads"] = ir.AttrInt64s("pads", list(np.add(old, spatial).tolist()))
        attributes.pop("auto_pad", None)
        return op.Conv(x, *conv.inputs[1:], _name=conv.name, **attributes)


class FoldPadIntoConvPass(RulesPass):
    """Fold constant zero Pads into the consuming Conv's ``pads`` (see the module docstring)."""

    rules = RewriteRuleSet([_PadIntoConv.rule()])
    verb = "folded"
