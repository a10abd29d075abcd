"""The bundle's ``report/``: ``report.md`` (stages, decisions, notes) and its Pareto plot.

Public API: :func:`~edgec.compiler.report.markdown.write_report` (what the driver calls) and
:mod:`~edgec.compiler.report.plots` (the plot, drawn lazily with matplotlib's Agg backend).
"""
