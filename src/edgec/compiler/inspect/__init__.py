"""``edgec inspect``: the per-layer cost table and which backend supports each op.

Public API: :func:`~edgec.compiler.inspect.inspection.inspect_model`
(:class:`~edgec.compiler.inspect.inspection.InspectReport`), and
:mod:`~edgec.compiler.inspect.op_support` (the backends' op lists).
"""
