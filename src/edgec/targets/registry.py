"""Backend dispatch: a table lookup, extended through the ``edgec.backends`` entry points.

Built-in backends are listed by import path so that importing this module imports none of
them; a third-party package registers ``name = "package.module:BackendClass"`` in the
``edgec.backends`` entry-point group.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata

from edgec.errors import BadInputError, MissingDependencyError
from edgec.targets.base import Backend
from edgec.targets.descriptor import Target

_BUILTIN = {
    "onnxruntime": "edgec.targets.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "edgec.targets.tensorrt:TensorRTBackend",
    "tvm": "edgec.targets.tvm:TvmBackend",
}
ENTRY_POINT_GROUP = "edgec.backends"


@functools.cache
def _table() -> dict[str, str]:
    table = dict(_BUILTIN)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        table.setdefault(entry.name, entry.value)
    return table


def backend_names() -> list[str]:
    """Every registered backend name."""
    return sorted(_table())


@functools.cache
def get_backend(name: str) -> Backend:
    """Instantiate a registered backend by name.

    Raises:
        BadInputError: No backend has that name.
    """
    table = _table()
    if name not in table:
        raise BadInputError(
            f"Unknown backend '{name}'; registered backends: {', '.join(sorted(table))}."
        )
    module_name, _, attr = table[name].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)()


def availability(name: str) -> tuple[bool, str]:
    """Whether backend ``name`` works here and why not; unknown names are unavailable."""
    if name not in _table():
        return False, f"no '{name}' backend is registered in this edgec install"
    return get_backend(name).available()


def choose_backend(target: Target, requested: str | None = None) -> Backend:
    """The backend for a target: ``requested``, else the target's first usable preference.

    Raises:
        MissingDependencyError: The requested backend (or every preferred one) is unusable here.
    """
    if requested and requested != "auto":
        ok, why = availability(requested)
        if not ok:
            raise MissingDependencyError(f"Backend '{requested}' cannot be used here: {why}.")
        return get_backend(requested)
    reasons = []
    for name in (*target.backends, "onnxruntime"):
        ok, why = availability(name)
        if ok:
            return get_backend(name)
        reasons.append(f"{name}: {why}")
    raise MissingDependencyError(
        f"No backend for target '{target.name}' works here ({'; '.join(reasons)})."
    )
