"""Planning: the stages of a bundle, the cascade planner, the offload policy and partitioning.

Public API: :mod:`~edgec.compiler.planning.stages` (which stages a compile builds),
:mod:`~edgec.compiler.planning.cascade` and :mod:`~edgec.compiler.planning.policy` (thresholds
and the offload policy under the budget; :mod:`~edgec.compiler.planning.alternatives` the
policies for a degraded or down link and low power), :mod:`~edgec.compiler.planning.partition`
(device / gateway cuts; :mod:`~edgec.compiler.planning.partition_measure` times the finalists on
this machine), :mod:`~edgec.compiler.planning.cost_model` (estimated latency from a descriptor).
Both planners price a request with :mod:`~edgec.compiler.planning.link` (RTT, overhead, bytes
over bandwidth, and a tensor's wire size) and a partition option with
:mod:`~edgec.compiler.planning.cut_cost`. No I/O here beyond timing on this machine where a
planner asks for it.
"""
