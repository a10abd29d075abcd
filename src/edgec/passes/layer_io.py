"""Intermediate tensors of a model on calibration inputs, for the passes that learn from them.

Bias correction (:mod:`edgec.passes.bias_correction`) needs per-channel means of layer
outputs, AdaRound (:mod:`edgec.passes.adaround`) a layer's input and its FP32 target. Both run
the model on ONNX Runtime with graph optimisation off (a Q/DQ model then runs its reference
arithmetic: float ops on dequantized values, not this machine's integer kernels, which saturate
on x86 without VNNI and differ between machines), and only the part of the graph the tensors
they read need (measuring layer *k* runs the graph up to layer *k*, not all of it).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper

logger = logging.getLogger(__name__)


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The model's initializers by name."""
    return {init.name: init for init in model.graph.initializer}


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The node producing each tensor, by tensor name."""
    return {out: node for node in model.graph.node for out in node.output}


def _read_by(nodes) -> set[str]:
    """Tensor names ``nodes`` read, in their subgraphs (If, Loop) too."""
    names = set()
    for node in nodes:
        names.update(node.input)
        for attribute in node.attribute:
            for graph in [attribute.g, *attribute.graphs]:
                names |= _read_by(graph.node)
    return names


def up_to(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``names`` and whose nodes and initializers are
    only those they need (nodes in their original order; no value_info)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    # By index: protobuf does not promise one Python object per element across iterations.
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    needed: set[int] = set()
    stack = list(names)
    while stack:
        index = producer.get(stack.pop())
        if index is not None and index not in needed:
            needed.add(index)
            stack.extend(name for name in graph.node[index].input if name)
    kept = []
    for index in sorted(needed):
        kept.append(onnx.NodeProto())
        kept[-1].CopyFrom(graph.node[index])
    del graph.node[:]
    graph.node.extend(kept)
    # Only what those nodes read: a smaller session to build, and a copy whose bytes depend
    # only on the part of the graph that computes ``names`` (see :func:`digest`).
    used = _read_by(kept)
    dropped = {init.name for init in graph.initializer if init.name not in used}
    inits = [init for init in graph.initializer if init.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [value for value in graph.input if value.name not in dropped]  # old IR lists them
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.value_info[:]
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return result


def digest(model: onnx.ModelProto, names: list[str], samples: np.ndarray) -> str:
    """A key for ``names``' values on ``samples``: the same for two models whose graphs agree
    up to those tensors, however they differ after them."""
    h = hashlib.sha256(up_to(model, names).SerializeToString())
    h.update(np.ascontiguousarray(samples).tobytes())
    return h.hexdigest()


def _input(model: onnx.ModelProto) -> tuple[str, int]:
    """The model's one real input's name and its static batch size (1 when dynamic)."""
    inits = initializers(model)
    value = next(i for i in model.graph.input if i.name not in inits)
    first = value.type.tensor_type.shape.dim[0]
    batch = first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else 1
    return value.name, batch


def tensor_batches(
    model: onnx.ModelProto, names: list[str], samples: np.ndarray
) -> Iterator[list[np.ndarray]]:
    """``names``' values, one batch of ``samples`` at a time (the model's static batch size;
    a dynamic batch runs one sample at a time; a last partial batch is dropped), graph
    optimisation off, only the part of the graph they need run."""
    session = _reference_session(up_to(model, names))
    input_name, batch = _input(model)
    for _, chunk in _sample_batches(samples, batch):
        yield session.run(names, {input_name: chunk})


def _reference_session(model: onnx.ModelProto):
    """An ONNX Runtime session that runs ``model``'s reference arithmetic: graph optimisation
    off (a Q/DQ model's float ops on dequantized values, not this machine's integer kernels).
    Not the runtime's session options (passes import no runtime, and this session is not timed
    or shipped): only quiet logs and no optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _sample_batches(samples: np.ndarray, batch: int) -> Iterator[tuple[int, np.ndarray]]:
    """Each full batch of ``samples`` (a last partial batch is dropped): its index and values."""
    for index in range(len(samples) // batch):
        yield index, np.ascontiguousarray(samples[index * batch : (index + 1) * batch])


class StepwiseRun:
    """A model run forward a part at a time on fixed samples, for a pass that measures layer
    after layer and changes each one before measuring the next (bias correction).

    :meth:`values` runs only the nodes not computed yet, up to the ones that produce the
    tensors asked for, from the tensors computed before; the tensors that nodes still to
    compute read are kept (per batch of samples), the rest dropped. Measuring every layer of a
    deep model so costs about one run of it, where running it from the input up to each layer
    costs one run per layer up to it (EfficientNet-B0's 82 layers: about 41 runs of the whole
    model). Graph optimisation is off, as in :func:`tensor_batches`, so the values are the
    same as a run from the input would give.

    The caller may change the model between calls: :meth:`recompute` marks a node whose
    inputs or attributes changed to run again when next needed (the inputs of the nodes that
    produced the tensors asked for are kept for that). Nodes that read only initializers (a
    weight's or a bias's DequantizeLinear) are never kept: they run again in every part that
    reads them, so a changed initializer needs no call.
    """

    def __init__(self, model: onnx.ModelProto, samples: np.ndarray):
        self.model = model
        self.samples = samples
        self.input_name, self.batch = _input(model)
        self.computed: set[str] = set()  # node outputs computed with the model as it is
        self.kept: dict[str, list[np.ndarray]] = {}  # tensor -> its value per batch
        self.from_input = False  # a part could not run on its own: run from the input

    def recompute(self, node: onnx.NodeProto) -> None:
        """Run ``node`` again when next needed (it changed)."""
        self.computed.difference_update(node.output)

    def values(self, names: list[str]) -> list[list[np.ndarray]]:
        """``names``' values per batch of samples (as :func:`tensor_batches` batches them).

        A part that cannot run on its own (a tensor kept between parts that is not a plain
        tensor, such as a sequence) makes this and every later call run the graph from the
        input up to ``names`` instead: slower, the same values.
        """
        if not self.from_input:
            try:
                return self._stepwise(names)
            except Exception as err:  # ORT's and onnx's errors have many types
                logger.debug("running the model a part at a time failed (%s); from the input", err)
                self.from_input = True
        return [list(batch) for batch in tensor_batches(self.model, names, self.samples)]

    def _stepwise(self, names: list[str]) -> list[list[np.ndarray]]:
        graph = self.model.graph
        inits = initializers(self.model)
        constant: set[str] = set()
        for node in graph.node:
            if all(not name or name in inits or name in constant for name in _read_by([node])):
                constant.update(node.output)
        pending = [n for n in graph.node if n.output[0] not in constant]
        pending = [n for n in pending if not set(n.output) <= self.computed]
        # Keep only what a node still to compute reads (a recomputed node's inputs included).
        still_read = _read_by(pending) | set(names)
        stale = {out for n in pending for out in n.output}  # to compute (again)
        self.kept = {
            name: v for name, v in self.kept.items() if name in still_read and name not in stale
        }
        wanted = set(names) - set(self.kept)
        if wanted & self.computed:
            raise ValueError(f"{sorted(wanted & self.computed)} computed before and dropped")
        last = max((i for i, n in enumerate(pending) if wanted & set(n.output)), default=-1)
        if last < 0:
            return self._batches(names)
        part, later = pending[: last + 1], pending[last + 1 :]
        produced = [out for n in part for out in n.output]  # in graph order
        # Kept as well: what the nodes producing ``names`` read, for a :meth:`recompute`.
        read_later = _read_by(later) | _read_by(n for n in part if wanted & set(n.output))
        outputs = [o for o in produced if o in wanted or o in read_later]
        segment = self._segment(part, constant, inits, outputs)
        results = self._run(segment, outputs)
        self.computed.update(produced)
        for name, value in zip(outputs, results, strict=True):
            self.kept[name] = value
        return self._batches(names)

    def _batches(self, names: list[str]) -> list[list[np.ndarray]]:
        count = len(self.samples) // self.batch
        return [[self.kept[name][b] for name in names] for b in range(count)]

    def _segment(self, part, constant, inits, outputs) -> onnx.ModelProto:
        """The nodes of ``part``, with the constant nodes they read, reading the kept
        tensors (and the model's input) as its inputs."""
        graph = self.model.graph
        reads = _read_by(part)
        constant_nodes = []
        needed = {name for name in reads if name in constant}
        for node in reversed(graph.node):  # constant ancestors, last first
            if needed & set(node.output) and node.output[0] in constant:
                constant_nodes.append(node)
                needed |= _read_by([node])
        nodes = [*reversed(constant_nodes), *part]
        used = _read_by(nodes)
        segment = onnx.ModelProto()
        segment.ir_version = self.model.ir_version
        segment.opset_import.extend(self.model.opset_import)
        segment.functions.extend(self.model.functions)
        segment.graph.name = "segment"
        segment.graph.node.extend(nodes)
        segment.graph.initializer.extend(v for k, v in inits.items() if k in used)
        if self.input_name in used:
            segment.graph.input.extend(v for v in graph.input if v.name == self.input_name)
        for name in sorted(used & set(self.kept)):
            dtype = helper.np_dtype_to_tensor_dtype(self.kept[name][0].dtype)
            segment.graph.input.append(helper.make_tensor_value_info(name, dtype, None))
        segment.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
        return segment

    def _run(self, segment: onnx.ModelProto, outputs: list[str]) -> list[list[np.ndarray]]:
        session = _reference_session(segment)
        inputs = [i.name for i in session.get_inputs()]
        results: list[list[np.ndarray]] = [[] for _ in outputs]
        for b, chunk in _sample_batches(self.samples, self.batch):
            feed = {name: self.kept[name][b] for name in inputs if name != self.input_name}
            if self.input_name in inputs:
                feed[self.input_name] = chunk
            for store, value in zip(results, session.run(outputs, feed), strict=True):
                store.append(value)
        return results
