"""The GDA ONNX function body and its export as one rvrt::GuidedDeformAttention node per call."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from conftest import gda_inputs
from rvrt.gda import guided_deform_attn, guided_deform_attn_reference
from rvrt_export.gda_onnx import (ATTRIBUTES, DOMAIN, OP_TYPE, attach_gda_function, export_with_gda, gda_function,
                                  register_gda_schema)

CASES = [
    # batch, clip, channels C, H, W, heads, groups, kernel
    (1, 2, 12, 5, 7, 3, 6, (3, 3)),
    (2, 1, 8, 4, 3, 2, 4, (3, 3)),
    (1, 2, 24, 6, 1, 12, 12, (3, 3)),
    (1, 2, 16, 3, 5, 4, 8, (1, 3)),
    (2, 2, 12, 4, 6, 6, 3, (3, 1)),
]


def one_node_model(attributes, shapes, elem_type=TensorProto.FLOAT, opset=20):
    node = helper.make_node(OP_TYPE, ["q", "kv", "offset"], ["out"], domain=DOMAIN, **attributes)
    inputs = [helper.make_tensor_value_info(name, elem_type, list(shape)) for name, shape in zip(node.input, shapes)]
    output = helper.make_tensor_value_info("out", elem_type, ["frames", 1, "channels", "height", "width"])
    graph = helper.make_graph([node], "gda", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return attach_gda_function(model)


def run_ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("batch,clip,channels,height,width,heads,groups,kernel", CASES)
def test_function_body_matches_reference(batch, clip, channels, height, width, heads, groups, kernel):
    register_gda_schema()
    q, kv, offset = gda_inputs(batch, clip, channels, height, width, groups, kernel)
    attributes = dict(kernel_h=kernel[0], kernel_w=kernel[1], padding=kernel[0] // 2, heads=heads, groups=groups,
                      clip=clip)
    model = one_node_model(attributes, (q.shape, kv.shape, offset.shape))
    onnx.checker.check_model(model, full_check=True)
    got = run_ort(model, {"q": q.numpy(), "kv": kv.numpy(), "offset": offset.numpy()})
    want = guided_deform_attn_reference(q.double(), kv.double(), offset.double(), **attributes)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("opset", [18, 19, 21, 23])
def test_function_follows_the_model_opset(opset):
    register_gda_schema()
    q, kv, offset = gda_inputs(1, 2, 12, 5, 7, 6, (3, 3))
    attributes = dict(kernel_h=3, kernel_w=3, padding=1, heads=3, groups=6, clip=2)
    model = one_node_model(attributes, (q.shape, kv.shape, offset.shape), opset=opset)
    assert [(i.domain, i.version) for i in model.functions[0].opset_import] == [("", opset)]
    onnx.checker.check_model(model, full_check=True)
    got = run_ort(model, {"q": q.numpy(), "kv": kv.numpy(), "offset": offset.numpy()})
    want = guided_deform_attn_reference(q.double(), kv.double(), offset.double(), **attributes)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-5)


def test_function_body_runs_in_float16():
    """onnxruntime CPU runs every op of the body in float16; error is float16 rounding."""
    register_gda_schema()
    q, kv, offset = (t.half() for t in gda_inputs(1, 2, 12, 5, 7, 6, (3, 3)))
    attributes = dict(kernel_h=3, kernel_w=3, padding=1, heads=3, groups=6, clip=2)
    model = one_node_model(attributes, (q.shape, kv.shape, offset.shape), elem_type=TensorProto.FLOAT16)
    onnx.checker.check_model(model, full_check=True)
    got = run_ort(model, {"q": q.numpy(), "kv": kv.numpy(), "offset": offset.numpy()})
    want = guided_deform_attn_reference(q.double(), kv.double(), offset.double(), **attributes)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), want.numpy(), rtol=0, atol=5e-3)


def test_schema_registration_is_idempotent():
    first = register_gda_schema()
    second = register_gda_schema()
    assert (first.name, first.domain, first.since_version) == (second.name, second.domain, second.since_version)
    assert sorted(first.attributes) == sorted(ATTRIBUTES)
    assert all(first.attributes[name].required for name in ATTRIBUTES)


def test_attach_is_idempotent():
    model = one_node_model(dict(kernel_h=3, kernel_w=3, padding=1, heads=3, groups=6, clip=2),
                           ((2, 1, 12, 5, 7), (1, 2, 24, 5, 7), (2, 216, 5, 7)))
    attach_gda_function(model)
    assert len(model.functions) == 1
    assert [i.domain for i in model.opset_import].count(DOMAIN) == 1
    assert model.functions[0] == gda_function(20)


class TwoGdaCalls(torch.nn.Module):
    """GDA twice (different attributes) between ordinary layers, as in the network."""

    def __init__(self):
        super().__init__()
        self.query = torch.nn.Linear(12, 12)
        self.conv_offset = torch.nn.Conv2d(24, 2 * 6 * 9 * 2, 3, padding=1)

    def forward(self, q, kv):
        q = self.query(q.transpose(2, -1)).transpose(2, -1)
        offset = 3.0 * self.conv_offset(kv.flatten(0, 1))
        first = guided_deform_attn(q, kv, offset, 3, 3, 1, 3, 6, 2)
        second = guided_deform_attn(first, kv, offset.flip(1), 3, 3, 1, 6, 6, 2)
        return first + second


def test_export_emits_one_node_per_call(tmp_path):
    torch.manual_seed(0)
    module = TwoGdaCalls().eval()
    args = (torch.randn(2, 1, 12, 5, 7), torch.randn(1, 2, 24, 5, 7))
    path = tmp_path / "two_gda.onnx"
    model = export_with_gda(module, args, path)

    gda_nodes = [node for node in model.graph.node if node.op_type == OP_TYPE]
    assert [node.domain for node in gda_nodes] == [DOMAIN, DOMAIN]
    assert [{a.name: helper.get_attribute_value(a) for a in node.attribute} for node in gda_nodes] == [
        dict(kernel_h=3, kernel_w=3, padding=1, heads=3, groups=6, clip=2),
        dict(kernel_h=3, kernel_w=3, padding=1, heads=6, groups=6, clip=2),
    ]
    op_types = collections.Counter(node.op_type for node in model.graph.node)
    assert op_types["Conv"] == 1 and op_types["GridSample"] == 0
    assert {i.domain: i.version for i in model.opset_import} == {"": 20, DOMAIN: 1}
    assert [(f.domain, f.name) for f in model.functions] == [(DOMAIN, OP_TYPE)]

    saved = onnx.load(path)
    onnx.checker.check_model(saved, full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})[0]
    with torch.no_grad():
        want = module(*args).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_export_with_external_data(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "two_gda.onnx"
    export_with_gda(TwoGdaCalls().eval(), (torch.randn(2, 1, 12, 5, 7), torch.randn(1, 2, 24, 5, 7)), path,
                    opset=18, external_data=True)
    assert (tmp_path / "two_gda.onnx.data").exists()
    saved = onnx.load(path)
    assert {i.domain: i.version for i in saved.opset_import} == {"": 18, DOMAIN: 1}
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
