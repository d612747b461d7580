"""The GDA TensorRT plugin inside a TensorRT engine built from a one-node ONNX graph (the node the
exporter emits: rvrt::GuidedDeformAttention v1), against the PyTorch reference, fp32 and fp16.

Needs a CUDA GPU, TensorRT's Python bindings with its libraries, and the plugin library
(built from TENSORRT_ROOT headers, or given as RVRT_GDA_PLUGIN); skips with the reason otherwise."""

import os

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import gda_inputs
from rvrt.gda import guided_deform_attn_reference
from rvrt_engines.runtimes.tensorrt import tensorrt_unavailable
from rvrt_plugins import build

pytestmark = pytest.mark.gpu


def unavailable_reason():
    reason = tensorrt_unavailable()
    if reason:
        return reason
    if build.find_tensorrt() is None and not os.environ.get("RVRT_GDA_PLUGIN"):
        return "no TensorRT headers to build the plugin (set TENSORRT_ROOT) and no RVRT_GDA_PLUGIN"
    return None


REASON = unavailable_reason()
if REASON:
    pytest.skip(REASON, allow_module_level=True)

import tensorrt as trt  # noqa: E402

TOLERANCE = {torch.float32: 2e-5, torch.float16: 5e-3}
CASES = [
    # batch, clip, channels C, H, W, heads, groups, (kernel_h, kernel_w)
    (1, 2, 288, 16, 24, 12, 12, (3, 3)),   # RVRT SR widths
    (2, 2, 48, 9, 13, 2, 12, (3, 3)),
    (2, 1, 16, 7, 5, 4, 8, (3, 3)),
    (1, 2, 128, 6, 40, 2, 4, (1, 3)),      # head dim 64, rows wider than a warp
]


@pytest.fixture(scope="module")
def trt_logger():
    logger = trt.Logger(trt.Logger.WARNING)
    registry = trt.get_plugin_registry()
    handle = registry.load_library(str(build.plugin_library()))
    assert handle is not None, "IPluginRegistry.load_library refused the plugin library"
    yield logger
    registry.deregister_library(handle)


def one_node_model(dtype, q_shape, kv_shape, offset_shape, attributes) -> bytes:
    element = TensorProto.FLOAT16 if dtype == torch.float16 else TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(name, element, list(shape))
              for name, shape in (("q", q_shape), ("kv", kv_shape), ("offset", offset_shape))]
    output = helper.make_tensor_value_info("out", element, list(q_shape))
    node = helper.make_node("GuidedDeformAttention", ["q", "kv", "offset"], ["out"], domain="rvrt", **attributes)
    graph = helper.make_graph([node], "gda", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("rvrt", 1)])
    return model.SerializeToString()


def build_engine(logger, model: bytes):
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 11:   # TensorRT 11 networks are always strongly typed
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    serialized = builder.build_serialized_network(network, builder.create_builder_config())
    assert serialized is not None, "engine build failed"
    return trt.Runtime(logger).deserialize_cuda_engine(serialized)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("batch,clip,channels,height,width,heads,groups,kernel", CASES)
def test_engine_matches_reference(trt_logger, dtype, batch, clip, channels, height, width, heads, groups, kernel):
    kh, kw = kernel
    q, kv, offset = (t.to(dtype) for t in gda_inputs(batch, clip, channels, height, width, groups, kernel))
    attributes = dict(kernel_h=kh, kernel_w=kw, padding=kh // 2, heads=heads, groups=groups, clip=clip)

    engine = build_engine(trt_logger, one_node_model(dtype, q.shape, kv.shape, offset.shape, attributes))
    context = engine.create_execution_context()
    device = {name: tensor.cuda() for name, tensor in (("q", q), ("kv", kv), ("offset", offset))}
    device["out"] = torch.empty_like(device["q"])
    for name, tensor in device.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()

    want = guided_deform_attn_reference(q.double(), kv.double(), offset.double(), kh, kw, kh // 2, heads, groups, clip)
    got = device["out"].cpu()
    assert got.dtype == dtype
    assert (got.double() - want).abs().max().item() <= TOLERANCE[dtype]


def test_node_is_what_the_plugin_expects():
    """Guard for the graph above: one rvrt-domain node with the six int attributes."""
    model = onnx.load_from_string(one_node_model(torch.float32, (2, 1, 12, 4, 4), (1, 2, 24, 4, 4), (2, 216, 4, 4),
                                                 dict(kernel_h=3, kernel_w=3, padding=1, heads=3, groups=6, clip=2)))
    (node,) = model.graph.node
    assert (node.domain, node.op_type) == ("rvrt", "GuidedDeformAttention")
    assert {a.name for a in node.attribute} == {"kernel_h", "kernel_w", "padding", "heads", "groups", "clip"}
    assert all(a.type == onnx.AttributeProto.INT for a in node.attribute)
