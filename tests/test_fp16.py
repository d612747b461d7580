"""Mixed-precision graphs: what stays float32, that float32 islands really compute in float32,
and the float16 export's measured accuracy against eager float32 (tiny, and full-size SR slow)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from conftest import FULL_SIZE_TILE, random_clip
from rvrt import Tiling, restore_tiled
from rvrt.model import BRANCHES
from rvrt_engines.backends import load_backend
from rvrt_engines.cache import ArtefactCache
from rvrt_engines import precision
from rvrt_engines.runtimes.float16_emulation import float16_emulation
from rvrt_export.fp16 import PrecisionPolicy, export_fp16, spec_of, to_mixed_precision
from rvrt_engines.manifest import ArtifactError, read_manifest
from rvrt_export.onnx_export import validate_stage


@pytest.fixture(scope="module")
def fp16_exports(tiny_export, tmp_path_factory):
    """kind -> (eager model, float32 export, float16 export)."""
    made = {}
    for kind in ("sr", "denoise"):
        model, _, source = tiny_export(kind)
        out = tmp_path_factory.mktemp("fp16") / kind
        export_fp16(model, source, out)
        made[kind] = (model, source, out)
    return made


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {info.name: info.type.tensor_type.elem_type for info in infos}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    return types


def two_additions(block: list[str]) -> onnx.ModelProto:
    """y = (x + 1e-4) + 1e-4, its two nodes kept float32 or not, as a mixed-precision graph."""
    step = helper.make_tensor("step", TensorProto.FLOAT, [1], [1e-4])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "step"], ["a"], name="first"),
         helper.make_node("Add", ["a", "step"], ["y"], name="second")],
        "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [step])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])

    class Keep(PrecisionPolicy):
        def fp32_nodes(self, graph):
            return block

    converted = to_mixed_precision(model, "propagate", Keep(fp32_ops=(), fp32_stages=()))
    onnx.checker.check_model(converted, full_check=True)   # includes topological order
    return converted


def run_one(model: onnx.ModelProto) -> float:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones(1, np.float32)})
    assert y.dtype == np.float32
    return float(y[0])


def test_float32_islands_compute_in_float32_and_the_rest_is_rounded():
    """1 + 1e-4 + 1e-4 is 1.0002 in float32; in float16 (spacing ~1e-3 at 1) it stays 1."""
    exact = float(np.float32(1) + np.float32(1e-4) + np.float32(1e-4))
    assert run_one(float16_emulation(two_additions(["first", "second"]))) == exact
    assert run_one(float16_emulation(two_additions([]))) == 1.0
    # Why the emulation: ONNX Runtime's CPU provider runs float16 regions in float32 without
    # rounding between nodes, so the float16 graph alone would look exact.
    assert run_one(two_additions([])) == exact


def test_policy_keeps_positions_float32_and_features_float16(fp16_exports):
    _, source, out = fp16_exports["sr"]
    fp32 = onnx.load(str(source / "forward_1.onnx"))
    blocked = set(PrecisionPolicy().fp32_nodes(fp32.graph))
    nodes = {node.name: node for node in fp32.graph.node}
    samplers = [n for n in fp32.graph.node if n.op_type == "GridSample"]
    # flows warped by flows stay float32; features warped at flow positions are float16 maps
    # sampled at float32 grids (the sampler itself float32).
    assert all(n.name in blocked for n in samplers)
    assert not any(nodes[name].op_type in ("GuidedDeformAttention", "MatMul", "LayerNormalization")
                   for name in blocked)

    converted = onnx.load(str(out / "forward_1.onnx"))
    onnx.checker.check_model(converted, full_check=True)
    types = tensor_types(converted)
    assert all(types[t.name] == TensorProto.FLOAT for t in [*converted.graph.input, *converted.graph.output])
    (gda,) = [n for n in converted.graph.node if n.op_type == "GuidedDeformAttention"]
    assert all(types[name] == TensorProto.FLOAT16 for name in gda.input)
    norms = [n for n in converted.graph.node if n.op_type == "LayerNormalization"]
    assert norms and all(types[n.input[0]] == TensorProto.FLOAT for n in norms)
    matmul_weights = [n.input[1] for n in converted.graph.node if n.op_type == "MatMul"
                      and n.input[1] in {i.name for i in converted.graph.initializer}]
    assert matmul_weights and all(types[w] == TensorProto.FLOAT16 for w in matmul_weights)
    flow = onnx.load(str(out / "flow.onnx"))
    assert TensorProto.FLOAT16 not in {init.data_type for init in flow.graph.initializer}


def test_float16_export_is_validated_per_stage(fp16_exports):
    for kind, (_, source, out) in fp16_exports.items():
        manifest = read_manifest(out)
        assert manifest["dtype"] == "float16" and manifest["io_dtype"] == "float32"
        assert manifest["precision_policy"]["fp32_stages"] == ["flow"]
        assert manifest["validation"]["passed"] is True
        assert set(manifest["stages"]) == set(read_manifest(source)["stages"])
        for name, record in manifest["validation"]["stages"].items():
            # measured: 3e-4 to 1e-3 of the peak on tiny models, a tenth of the tolerance.
            assert record["max_abs"] <= 2e-3 * max(1.0, record["reference_peak"]), (kind, name, record)
        sizes = [s["bytes"] for s in manifest["stages"].values()]
        assert sum(sizes) < 0.75 * sum(s["bytes"] for s in read_manifest(source)["stages"].values())


def test_flow_path_in_float32_is_what_keeps_flows_accurate(fp16_exports, tmp_path):
    """The *_1 steps output composed flows; in float16 they are ~60x further from eager."""
    model, source, _ = fp16_exports["sr"]
    manifest = read_manifest(source)
    spec = spec_of("forward_1", manifest["stages"]["forward_1"])
    errors = {}
    for flow_path in (True, False):
        graph = to_mixed_precision(onnx.load(str(source / "forward_1.onnx")), "forward_1",
                                   PrecisionPolicy(flow_path=flow_path))
        path = tmp_path / f"forward_1_flow_path_{flow_path}.onnx"
        onnx.save(graph, str(path))
        errors[flow_path] = validate_stage(model, spec, path, "float16")["max_abs"]
    assert errors[True] * 20 < errors[False], errors


def test_float16_graphs_serve_the_runner(fp16_exports):
    model, _, out = fp16_exports["sr"]
    tile = read_manifest(out)["tile"]
    lq = random_clip("sr", 6, height=tile + 16, width=tile + 8)
    tiling = Tiling(window=4, tile=tile, window_overlap=2, tile_overlap=16, batch=read_manifest(out)["batch"])
    with torch.no_grad():
        eager = restore_tiled(model, lq, model.config, tiling)
    with load_backend(out).open() as backend:
        served = restore_tiled(backend.restore, lq, backend.config, tiling)
    mse = float(((served.clamp(0, 1) - eager.clamp(0, 1)) ** 2).mean())
    assert 10 * np.log10(1 / mse) > 60


def test_stage_over_tolerance_is_named_and_never_served(tiny_export, tmp_path, monkeypatch):
    model, _, source = tiny_export("sr")
    monkeypatch.setattr(precision, "FLOAT16_RELATIVE_TOLERANCE", 1e-7)
    with pytest.raises(ArtifactError, match="stage 'extract': the float16 graph differs"):
        export_fp16(model, source, tmp_path / "strict")
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict*"))
    manifest = export_fp16(model, source, tmp_path / "lenient", strict=False)
    assert manifest["validation"]["passed"] is False
    with pytest.raises(ArtifactError, match="refusing to serve .* validation failed for extract"):
        load_backend(tmp_path / "lenient")


def test_only_float32_exports_convert(fp16_exports, tmp_path):
    model, _, out = fp16_exports["sr"]
    with pytest.raises(ArtifactError, match="holds float16 graphs; convert a float32 export"):
        export_fp16(model, out, tmp_path / "again")


@pytest.mark.slow
def test_full_size_sr_float16_accuracy(full_size_sr):
    """The official SR architecture (random weights), tile 40: the float16 graphs the cache makes from the
    full-size float32 entry, each stage validated against eager float32 on random inputs."""
    root, _ = full_size_sr
    fp16 = load_backend("sr", random_weights=True, runtime="onnxruntime", precision="float16",
                        tile=FULL_SIZE_TILE, cache=ArtefactCache(root))
    records = read_manifest(fp16.directory)["validation"]["stages"]
    assert set(records) >= set(BRANCHES)
    for name, record in records.items():
        assert record["max_abs"] <= 5e-3 * max(1.0, record["reference_peak"]), (name, record)
