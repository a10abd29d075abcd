"""Planning: the stages of a bundle, the cascade planner, the offload policy and partitioning.

Public API: :mod:`~edgec.compiler.planning.stages` (which stages a compile builds),
:mod:`~edgec.compiler.planning.cascade` and :mod:`~edgec.compiler.planning.policy` (thresholds
and the offload policy under the budget), :mod:`~edgec.compiler.planning.partition` (device /
gateway cuts), :mod:`~edgec.compiler.planning.cost_model` (estimated latency from a
descriptor). No I/O here beyond timing on this machine where a planner asks for it.
"""
