"""Which backends support an ONNX op: each backend's documented list, not probes.

Each backend answers for itself (:meth:`~edgec.targets.base.Backend.supports_op`) and names
its source (``op_support_source``): ONNX Runtime implements every op of the standard ONNX
domains and Microsoft's contrib domain on its CPU execution provider; TVM's list is its ONNX
importer's (:mod:`edgec.targets.tvm.ops`); TensorRT's is onnx-tensorrt's support matrix, which
has no uint8 tensors (:mod:`edgec.targets.tensorrt.ops`).

A ``False`` here means "not in the documented list", which is what a build would hit first.
"""

from __future__ import annotations

from edgec.targets.registry import get_backend

# The backends ``edgec inspect`` reports on, in its column order.
BACKENDS: tuple[str, ...] = ("onnxruntime", "tvm", "tensorrt")


def sources() -> dict[str, str]:
    """Where each reported backend's op list comes from."""
    return {name: get_backend(name).op_support_source for name in BACKENDS}


def supports(backend: str, op_type: str, domain: str = "", dtypes: tuple[str, ...] = ()) -> bool:
    """Whether ``backend``'s documented list has ``op_type`` (with these tensor ``dtypes``).

    Args:
        backend: A registered backend name (``onnxruntime``, ``tvm``, ``tensorrt``, ...).
        op_type: The ONNX op type.
        domain: The op's domain (``""`` is the default ONNX domain).
        dtypes: NumPy-style names of the node's input and output element types, when known.

    Raises:
        BadInputError: No backend has that name.
    """
    return get_backend(backend).supports_op(op_type, domain, dtypes)
