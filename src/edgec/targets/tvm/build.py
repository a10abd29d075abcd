"""ONNX -> Relax -> a shared object for one TVM target (untuned or from a tuning database).

* Import: ``tvm.relax.frontend.onnx.from_onnx(model, keep_params_in_input=False)`` — weights
  become constants, so ``main`` takes the graph inputs only, in the graph's order.
* Untuned build: ``tvm.compile`` with ``relax.get_default_pipeline(target)``; without that
  pipeline ``tvm.compile`` does not fuse operators on CPUs. For CUDA the default pipeline
  applies DLight's GPU schedules.
* Tuned build: ``meta_schedule.relax_integration.compile_relax(database, module, target)``,
  which fuses exactly as :func:`fused_for_tuning` does so the database's keys match, applies
  the tuned schedules and falls back to DLight (GPU) or plain loops (CPU) elsewhere.
* Export: ``export_library`` links with this machine's compiler or the target's GCC cross
  compiler. CUDA kernels stay CUDA C source inside the object (see :mod:`.runner`): a
  registered ``tvm_callback_cuda_compile`` is lifted for the build so nothing is compiled for
  this machine's GPU toolkit by accident.

The same model, target and database give a byte-identical shared object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import onnx

from edgec.errors import BadInputError, MissingDependencyError
from edgec.targets.tvm._env import import_tvm
from edgec.targets.tvm.targets import TvmTarget, install_hint


def import_onnx(model_path: Path):
    """The Relax module of an ONNX file.

    Raises:
        BadInputError: The TVM ONNX frontend cannot convert the model (an unsupported op, say).
    """
    import_tvm()
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(model_path)
    try:
        return from_onnx(model, keep_params_in_input=False)
    except Exception as err:  # the frontend raises many types (KeyError, TVMError, ...)
        raise BadInputError(
            f"TVM's ONNX importer cannot convert {model_path.name}: {_one_line(err)}"
        ) from None


def _one_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__).rstrip(".")


def tvm_target(spec: TvmTarget):
    """The ``tvm.target.Target`` object of a spec."""
    tvm = import_tvm()
    return tvm.target.Target(spec.spec)


def fused_for_tuning(mod, target):
    """The module MetaSchedule extracts tasks from: legalised and fused like ``compile_relax``.

    Task extraction finds nothing on the raw imported module; these are the passes
    ``compile_relax`` runs before applying the database, so workload keys match.
    """
    tvm = import_tvm()
    from tvm import relax
    from tvm.relax import pipeline

    try:
        dispatch = list(pipeline.library_dispatch_passes(target))
    except (ValueError, AttributeError):
        dispatch = []
    passes = [
        *dispatch,
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    with target:
        return tvm.transform.Sequential(passes)(mod)


def compile_module(mod, spec: TvmTarget, database=None):
    """Compile a Relax module to a VM executable, with the tuning ``database`` when given.

    Raises:
        BadInputError: TVM cannot lower or generate code for this model and target.
    """
    tvm = import_tvm()
    from tvm import relax

    target = tvm_target(spec)
    try:
        with _cuda_source_only(tvm, spec):
            if database is not None:
                from tvm.s_tir import meta_schedule as ms

                return ms.relax_integration.compile_relax(database, mod, target, None)
            pipeline = relax.get_default_pipeline(target)
            return tvm.compile(mod, target=target, relax_pipeline=pipeline)
    except BadInputError:
        raise
    except Exception as err:
        raise BadInputError(
            f"TVM cannot compile the model for {spec.spec.get('kind')} "
            f"({spec.arch}): {_one_line(err)}"
        ) from None


def export(executable, path: Path, spec: TvmTarget) -> None:
    """Write the executable as a shared object, cross-linked when the target needs it."""
    import_tvm()
    from tvm.support import cc

    try:
        if spec.cross_compiler:
            executable.export_library(str(path), fcompile=cc.cross_compiler(spec.cross_compiler))
        else:
            executable.export_library(str(path))
    except RuntimeError as err:  # TVM's cc reports a failed link with the linker's output
        linker = spec.cross_compiler or "this machine's C compiler"
        how = install_hint(spec.arch) if spec.cross_compiler else "apt-get install gcc libc6-dev"
        # The linker's own last word, not TVM's "Command line:" echo of the call.
        said = [line for line in str(err).splitlines() if line.strip()]
        said = [line for line in said if not line.startswith(("Command line:", "Compilation"))]
        last = said[-1] if said else type(err).__name__
        raise MissingDependencyError(
            f"Linking the {spec.arch} shared object with {linker} failed ({last.strip()}); "
            f"check the toolchain: {how}."
        ) from None


@contextlib.contextmanager
def _cuda_source_only(tvm, spec: TvmTarget) -> Iterator[None]:
    """Keep CUDA kernels as source: lift a registered compile callback for the build."""
    name = "tvm_callback_cuda_compile"
    callback = tvm.get_global_func(name, allow_missing=True) if spec.device == "cuda" else None
    if callback is None:
        yield
        return
    import tvm_ffi

    tvm_ffi.registry.remove_global_func(name)
    try:
        yield
    finally:
        tvm_ffi.register_global_func(name, callback, override=True)
