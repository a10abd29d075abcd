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
    "edgetpu": "edgec.targets.edgetpu:EdgeTpuBackend",
    "litert": "edgec.targets.litert:LiteRtBackend",
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


def buildable(name: str, target: Target) -> tuple[bool, str]:
    """Whether backend ``name`` can build for ``target`` here (toolchains included), and why
    not; unknown names cannot."""
    if name not in _table():
        return False, f"no '{name}' backend is registered in this edgec install"
    return get_backend(name).can_build(target)


def preferences(target: Target) -> tuple[str, ...]:
    """The backends ``--backend auto`` tries for ``target``, best first (ONNX Runtime last
    when the descriptor does not list it)."""
    return tuple(dict.fromkeys((*target.backends, "onnxruntime")))


def choose_backend(target: Target, requested: str | None = None) -> Backend:
    """The backend for a target: ``requested``, else the target's first preference that can
    build for it here (:func:`choose_with_reasons`).

    Raises:
        MissingDependencyError: The requested backend (or every preferred one) cannot build
            for the target here; the message names what to install.
    """
    return choose_with_reasons(target, requested)[0]


def choose_with_reasons(
    target: Target, requested: str | None = None
) -> tuple[Backend, dict[str, str]]:
    """The backend for a target and, under ``auto``, why each preference before it was passed
    over (backend name -> reason; empty when the first preference builds).

    Raises:
        MissingDependencyError: As :func:`choose_backend`.
    """
    if requested and requested != "auto":
        ok, why = buildable(requested, target)
        if not ok:
            raise MissingDependencyError(
                f"Backend '{requested}' cannot build for {target.name} here: {why}."
            )
        return get_backend(requested), {}
    passed_over: dict[str, str] = {}
    for name in preferences(target):
        ok, why = buildable(name, target)
        if ok:
            return get_backend(name), passed_over
        passed_over[name] = why
    reasons = "; ".join(f"{name}: {why}" for name, why in passed_over.items())
    raise MissingDependencyError(f"No backend for target '{target.name}' works here ({reasons}).")
