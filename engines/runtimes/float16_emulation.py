"""Float16 graphs on a CPU, as they would compute on a GPU: an emulation that needs only onnx.

Here, apart from the exporter (:mod:`rvrt_export.fp16`), because serving a float16 export on a
CPU runs it: a serving install has onnx and numpy, not PyTorch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def float16_emulation(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 graph that computes what the mixed-precision ``model`` computes when every
    float16 tensor is stored rounded to float16 and every op computes in float32.

    This is how float16 graphs are checked on a CPU. ONNX Runtime's CPU provider has few
    float16 kernels; it wraps the others in casts and then removes the cast pairs between
    neighbouring nodes, so whole float16 regions run in float32 without any rounding (the
    converted graph would look more accurate than it is). Here each float16 value is rounded
    by an explicit float32 -> float16 -> float32 cast pair after the node that makes it.
    """
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {info.name: info.type.tensor_type.elem_type
             for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    emulated = onnx.ModelProto()
    emulated.CopyFrom(model)
    graph = emulated.graph
    for index, initializer in enumerate(graph.initializer):
        if initializer.data_type == TensorProto.FLOAT16:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(initializer).astype(np.float32), initializer.name))
    nodes = []
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT16:
                attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float32)))
        if node.op_type == "Cast":
            rounds = node.attribute[0].i == TensorProto.FLOAT16
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT16:
                    attribute.i = TensorProto.FLOAT
            outputs = list(node.output) if rounds else []
        else:
            outputs = [name for name in node.output if types.get(name) == TensorProto.FLOAT16]
        for index, name in enumerate(node.output):
            if name in outputs:
                node.output[index] = f"{name}__float32"
        nodes.append(node)
        for name in outputs:
            nodes.append(helper.make_node("Cast", [f"{name}__float32"], [f"{name}__float16"], to=TensorProto.FLOAT16,
                                          name=f"{name}__round"))
            nodes.append(helper.make_node("Cast", [f"{name}__float16"], [name], to=TensorProto.FLOAT,
                                          name=f"{name}__widen"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return emulated
