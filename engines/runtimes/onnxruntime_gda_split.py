"""Propagation steps with guided deformable attention, run as ONNX Runtime / fused CPU kernel / ONNX Runtime.

ONNX Runtime's CPU provider cannot take a compiled custom op here (its wheel ships no C/C++
headers), so it executes the ``rvrt::GuidedDeformAttention`` node through the node's function
body: about half of a propagation step's time. At load time, a step graph holding that node is
cut around it (``onnx.utils.Extractor``, the export stays as it is): one session computes the
node's inputs and everything else needed later, the fused kernel of
:mod:`rvrt_plugins.gda_cpu` computes GDA, a second session the rest.

The exporter's GDA node reads and writes (frames, C, H, W) planes, while the layers around it
work channels-last: its inputs are transposed to planes just for it and its output transposed
back right after (~15 ms a call here, on top of the kernel's ~22 ms). Where the graph has exactly
that form, the cut goes around those transposes too and the kernel's channels-last entry reads
the channels-last tensors and writes the channels-last result: the same values, moved once.

onnx is imported where a graph is cut, not with this module: OpenVINO entries are cut when they are made and
served with this module's glue alone, and importing onnx (its ml_dtypes) took 0.75 s of their start-up.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from ..gda_node import ATTRIBUTES as GDA_ATTRIBUTES
from ..gda_node import DOMAIN as GDA_DOMAIN
from ..gda_node import OP_TYPE as GDA_OP_TYPE



class GdaKernelUnavailable(RuntimeError):
    """The fused CPU kernel could not be built or loaded."""


@dataclass
class GdaSplit:
    """A graph cut around its one GDA node.

    before: graph inputs -> the kernel's inputs, the values computed before the node that
    ``after`` needs, and the graph outputs that do not depend on GDA. after: the kernel's
    result, those values and graph inputs -> the remaining graph outputs.
    gda_inputs: the values the kernel reads, (q, kv, offset) as the node takes them, or with
    ``channels_last`` (q, k, v, offset) before the transposes that feed the node (q, k, v:
    (n, t, H, W, C)); gda_output: the value the kernel's result stands for (with
    ``channels_last``: the node's output transposed back, (n, t, H, W, C)).
    """

    before: onnx.ModelProto
    after: onnx.ModelProto
    gda_inputs: tuple[str, ...]
    gda_output: str
    attributes: dict[str, int]
    inputs: list[str]
    outputs: list[str]
    channels_last: bool = False


def _producers(graph: onnx.GraphProto) -> dict[str, int]:
    return {name: index for index, node in enumerate(graph.node) for name in node.output if name}


def _upstream(graph: onnx.GraphProto, producers: dict[str, int], names, stop: set[str]) -> set[int]:
    """Indices of the nodes that ``names`` are computed from, not looking past ``stop``."""
    found: set[int] = set()
    stack = [name for name in names if name not in stop]
    while stack:
        index = producers.get(stack.pop())
        if index is None or index in found:
            continue
        found.add(index)
        stack += [name for name in graph.node[index].input if name and name not in stop]
    return found


def _downstream(graph: onnx.GraphProto, value: str) -> set[int]:
    """Indices of the nodes that depend on ``value`` (nodes are in topological order)."""
    tainted, found = {value}, set()
    for index, node in enumerate(graph.node):
        if tainted.intersection(node.input):
            found.add(index)
            tainted.update(node.output)
    return found


def _attributes(node: onnx.NodeProto) -> dict:
    import onnx

    return {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}


def _shapes(graph: onnx.GraphProto) -> dict[str, tuple]:
    """Static shapes the graph records (value_info, inputs, outputs); dimensions 0 where unknown."""
    return {value.name: tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
            for value in [*graph.value_info, *graph.input, *graph.output]
            if value.type.tensor_type.HasField("shape")}


def _channels_last_cut(graph: onnx.GraphProto, gda_index: int, producers: dict[str, int]):
    """((q, k, v, offset), output, node indices the kernel replaces) where the GDA node is fed and
    followed by transposes from and to channels-last exactly as the exporter writes them:

        q  = Reshape(Transpose(Q, perm=[0, 1, 4, 2, 3]))                    Q: (n, t, H, W, C)
        kv = Concat(Transpose(K, same perm), Transpose(V, same perm), axis=2)   K, V: like Q
        Y  = Transpose(Reshape(GDA(q, kv, offset)), perm=[0, 1, 3, 4, 2])    Y: (n, t, H, W, C)

    None for any other form (the plain cut around the node then serves). The values in between
    must feed nothing else and no graph output."""
    nodes = graph.node
    gda = nodes[gda_index]
    shapes = _shapes(graph)
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)

    def made_by(name, op_type):
        index = producers.get(name)
        return index if index is not None and nodes[index].op_type == op_type else None

    def perm(index):
        return list(_attributes(nodes[index]).get("perm", ()))

    def planes_from_channels_last(name):
        """The channels-last value a Transpose to (n, t, C, H, W) reads, and that Transpose."""
        index = made_by(name, "Transpose")
        if index is None or perm(index) != [0, 1, 4, 2, 3] or len(shapes.get(nodes[index].input[0], ())) != 5:
            return None
        return nodes[index].input[0], index

    q_reshape = made_by(gda.input[0], "Reshape")
    kv_concat = made_by(gda.input[1], "Concat")
    out_users = consumers.get(gda.output[0], [])
    if q_reshape is None or kv_concat is None or len(out_users) != 1 or nodes[out_users[0]].op_type != "Reshape":
        return None
    out_reshape = out_users[0]
    out_transposes = consumers.get(nodes[out_reshape].output[0], [])
    if len(out_transposes) != 1 or nodes[out_transposes[0]].op_type != "Transpose" \
            or perm(out_transposes[0]) != [0, 1, 3, 4, 2]:
        return None
    out_transpose = out_transposes[0]
    q_source = planes_from_channels_last(nodes[q_reshape].input[0])
    concat = nodes[kv_concat]
    axis = _attributes(concat).get("axis")
    kv_sources = [planes_from_channels_last(name) for name in concat.input]
    if q_source is None or axis != 2 or len(kv_sources) != 2 or None in kv_sources:
        return None
    q_shape = shapes[q_source[0]]
    frames, _, channels, height, width = shapes.get(gda.input[0], (0,) * 5)
    out_shape = shapes.get(nodes[out_reshape].output[0], ())
    expected = (q_shape[0] * q_shape[1], height, width, channels)
    if 0 in q_shape or (frames, *q_shape[2:]) != expected or any(shapes[k] != q_shape for k, _ in kv_sources) \
            or len(out_shape) != 5 or out_shape[:2] != q_shape[:2] or out_shape[2:] != (channels, height, width):
        return None
    replaced = {gda_index, q_reshape, q_source[1], kv_concat, *(i for _, i in kv_sources), out_reshape, out_transpose}
    between = {name for index in replaced - {out_transpose} for name in nodes[index].output}
    outputs = {value.name for value in graph.output}
    if between & outputs or any(set(consumers.get(name, [])) - replaced for name in between):
        return None
    inputs = (q_source[0], kv_sources[0][0], kv_sources[1][0], gda.input[2])
    return inputs, nodes[out_transpose].output[0], replaced


def split_at_gda(model: onnx.ModelProto) -> GdaSplit | None:
    """Cut ``model`` around its GDA node; None where the graph has no GDA node (or more than one)."""
    import onnx.utils

    graph = model.graph
    gda_nodes = [node for node in graph.node if node.domain == GDA_DOMAIN and node.op_type == GDA_OP_TYPE]
    if len(gda_nodes) != 1:
        return None
    gda = gda_nodes[0]
    gda_index = list(graph.node).index(gda)
    attributes = _attributes(gda)
    missing = [name for name in GDA_ATTRIBUTES if name not in attributes]
    if missing:
        raise ValueError(f"GDA node {gda.name!r} lacks attribute(s) {', '.join(missing)}")
    graph_inputs = [value.name for value in graph.input]
    graph_outputs = [value.name for value in graph.output]
    producers = _producers(graph)
    cut = _channels_last_cut(graph, gda_index, producers)
    kernel_inputs, gda_output, replaced = cut or (tuple(gda.input), gda.output[0], {gda_index})
    after_nodes = _downstream(graph, gda_output)
    after_outputs = [name for name in graph_outputs if producers.get(name) in after_nodes]
    early_outputs = [name for name in graph_outputs if name not in after_outputs]

    # What the part after GDA reads from before it: graph inputs, and values computed from them.
    # Values computed from weights alone are recomputed there (ONNX Runtime folds them at load).
    input_set = set(graph_inputs)
    depends_on_input = set(input_set)
    for index, node in enumerate(graph.node):
        if index not in after_nodes and index not in replaced and depends_on_input.intersection(node.input):
            depends_on_input.update(node.output)
    consumed_after = {name for index in after_nodes for name in graph.node[index].input if name}
    carried = [name for name in sorted(consumed_after & depends_on_input)
               if name not in input_set and producers.get(name) not in after_nodes]
    after_inputs = [name for name in graph_inputs if name in consumed_after or name in after_outputs]
    stop = set(after_inputs) | set(carried) | {gda_output}
    after_inputs += [gda_output] + carried
    after_reads = {name for index in _upstream(graph, producers, after_outputs, stop)
                   for name in graph.node[index].input}
    after_inputs = [name for name in after_inputs if name in after_reads or name in after_outputs]

    before_outputs = list(dict.fromkeys([*kernel_inputs, *carried, *early_outputs]))
    before_reads = {name for index in _upstream(graph, producers, before_outputs, input_set)
                    for name in graph.node[index].input}
    before_inputs = [name for name in graph_inputs if name in before_reads or name in before_outputs]

    extractor = onnx.utils.Extractor(model)
    return GdaSplit(before=extractor.extract_model(before_inputs, before_outputs),
                    after=extractor.extract_model(after_inputs, after_outputs),
                    gda_inputs=kernel_inputs, gda_output=gda_output,
                    attributes={name: int(attributes[name]) for name in GDA_ATTRIBUTES},
                    inputs=graph_inputs, outputs=graph_outputs, channels_last=cut is not None)


@dataclass(frozen=True)
class GdaKernel:
    """The fused CPU GDA kernel's two entries on float32 numpy arrays, ``(..., **attributes) -> output``:
    planes(q, kv, offset) as the GDA node takes them; channels_last(q, k, v, offset) with q, k, v
    and the output (frames, H, W, C)."""

    planes: Callable
    channels_last: Callable


def load_gda_kernel(threads: int | None = None) -> GdaKernel:
    """The fused CPU GDA kernel, built now if needed; raises :class:`GdaKernelUnavailable` with the reason."""
    try:
        from rvrt_plugins.build import PluginBuildError
        from rvrt_plugins.gda_cpu import gda_cpu_numpy, gda_cpu_numpy_channels_last, load_library
    except ImportError as error:
        raise GdaKernelUnavailable(f"rvrt_plugins.gda_cpu cannot be imported: {error}") from error
    try:
        load_library()
    except PluginBuildError as error:
        raise GdaKernelUnavailable(str(error)) from error
    return GdaKernel(functools.partial(gda_cpu_numpy, threads=threads),
                     functools.partial(gda_cpu_numpy_channels_last, threads=threads))


class SplitGdaSession:
    """One propagation step as two ONNX Runtime sessions and the fused GDA kernel.

    Looks like an ``onnxruntime.InferenceSession`` to its users (``get_inputs``,
    ``get_outputs``, ``run``), so :class:`~.runner_stages.SessionRunner` serves it unchanged.
    """

    def __init__(self, split: GdaSplit, before, after, kernel):
        self.split = split
        self.before = before
        self.after = after
        self.kernel = kernel
        self._before_inputs = [arg.name for arg in before.get_inputs()]
        self._before_outputs = [arg.name for arg in before.get_outputs()]
        self._after_inputs = [arg.name for arg in after.get_inputs()]
        self._after_outputs = [arg.name for arg in after.get_outputs()]
        args = {arg.name: arg for session in (before, after) for arg in session.get_inputs()}
        outputs = {arg.name: arg for session in (before, after) for arg in session.get_outputs()}
        self._inputs = [args[name] for name in split.inputs if name in args]
        self._outputs = [outputs[name] for name in split.outputs]

    def _gda(self, *inputs):
        if not self.split.channels_last:
            return self.kernel.planes(*inputs, **self.split.attributes)
        q, k, v, offset = inputs
        frames = (-1, *q.shape[2:])
        return self.kernel.channels_last(q.reshape(frames), k.reshape(frames), v.reshape(frames), offset,
                                         **self.split.attributes).reshape(q.shape)

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, output_names, feed: dict, run_options=None):
        values = dict(feed)
        values.update(zip(self._before_outputs,
                          self.before.run(self._before_outputs, {name: feed[name] for name in self._before_inputs},
                                          run_options)))
        values[self.split.gda_output] = self._gda(*(values[name] for name in self.split.gda_inputs))
        values.update(zip(self._after_outputs,
                          self.after.run(self._after_outputs, {name: values[name] for name in self._after_inputs},
                                         run_options)))
        return [values[name] for name in (output_names or self.split.outputs)]


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def gda_split_session(path: str | os.PathLike, make_session, threads: int | None = None):
    """A :class:`SplitGdaSession` for the graph at ``path``, or None where it has no GDA node or
    the kernel is unavailable (then with a warning: the caller runs the whole graph, GDA
    through its function body). ``make_session(model_bytes)`` creates an ONNX Runtime session."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    with open(path, "rb") as stream:
        serialized = stream.read()
    # The op type is stored as plain text: without it there is nothing to split, and no need to parse.
    if GDA_OP_TYPE.encode() not in serialized:
        return None
    model = onnx.load_from_string(serialized)
    del serialized
    if any(uses_external_data(tensor) for tensor in model.graph.initializer):
        model = onnx.load(os.fspath(path))
    split = split_at_gda(model)
    del model
    if split is None:
        return None
    try:
        kernel = load_gda_kernel(threads)
    except GdaKernelUnavailable as error:
        _warn_once(f"the fused CPU GDA kernel is unavailable ({error}); ONNX Runtime runs GDA through the "
                   f"graphs' function body instead (same result, slower)")
        return None
    before = make_session(split.before.SerializeToString())
    after = make_session(split.after.SerializeToString())
    return SplitGdaSession(split, before, after, kernel)
