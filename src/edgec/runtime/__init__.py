"""The generated runtime: templates, the renderer, and the modules copied into every bundle.

Public API: :func:`edgec.runtime.render.render_runtime` (the compile driver writes a
bundle's ``runtime/`` with it) and :mod:`edgec.bundle.launch` (``edgec run`` and
``edgec serve`` import and run a bundle's own generated runtime). The modules ``codec``,
``scoring``, ``inputs``, ``observability``, ``loaders`` and ``verify_bundle`` are
self-contained (no ``edgec`` imports): they are copied verbatim into ``runtime/``, and the
compiler imports the same code (the planner's arithmetic is the runtime's).

Nothing is imported here, so ``import edgec.runtime.verify_bundle`` stays light.
"""
