"""ONNX Runtime stages with the fused CPU GDA kernel between two graph pieces, and the sessions' shared memory."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import random_clip
from rvrt import BRANCHES, Tiling, restore_tiled
from rvrt_engines.backends import load_backend
from rvrt_engines.runtimes.onnxruntime import USE_ENV_ALLOCATORS, SessionFromPath, onnxruntime_stages
from rvrt_engines.runtimes.onnxruntime_gda_split import SplitGdaSession
from rvrt_engines.manifest import read_manifest


def random_feed(export_dir, stage: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in read_manifest(export_dir)["stages"][stage]["inputs"]:
        scale = 2.0 if spec["name"].startswith("flow") else 1.0
        feed[spec["name"]] = (scale * rng.standard_normal(spec["shape"])).astype(np.float32)
    return feed


@pytest.fixture(scope="module")
def sr_export(tiny_export):
    model, _, out = tiny_export("sr")
    return model, out


def test_each_gda_step_is_split_and_equals_the_function_body(sr_export):
    _, out = sr_export
    for stage in (*BRANCHES, *(f"{b}_first" for b in BRANCHES)):
        split = SessionFromPath(out / f"{stage}.onnx", threads=2)()
        whole = SessionFromPath(out / f"{stage}.onnx", threads=2, fused_gda=False)()
        assert isinstance(split, SplitGdaSession) == (stage in BRANCHES), stage
        assert [a.name for a in split.get_inputs()] == [a.name for a in whole.get_inputs()]
        assert [a.name for a in split.get_outputs()] == [a.name for a in whole.get_outputs()]
        feed = random_feed(out, stage)
        for name, got, want in zip([a.name for a in whole.get_outputs()], split.run(None, feed),
                                   whole.run(None, feed)):
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= 1e-5, (stage, name)


def test_split_pieces_hold_no_gda_node(sr_export):
    _, out = sr_export
    split = SessionFromPath(out / "forward_2.onnx", threads=2)()
    assert split.split.attributes == {"kernel_h": 3, "kernel_w": 3, "padding": 1, "heads": 12, "groups": 12, "clip": 2}
    for piece in (split.split.before, split.split.after):
        assert not [node for node in piece.graph.node if node.op_type == "GuidedDeformAttention"]
        assert not piece.functions


def test_exported_steps_are_cut_around_the_channels_last_transposes(sr_export):
    import onnx

    _, out = sr_export
    for stage in BRANCHES:
        gda = next(node for node in onnx.load(out / f"{stage}.onnx").graph.node if node.op_type == "GuidedDeformAttention")
        split = SessionFromPath(out / f"{stage}.onnx", threads=2)().split
        assert split.channels_last, stage
        before = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
                  for value in split.before.graph.output}
        q, k, v, _ = (before[name] for name in split.gda_inputs)
        assert q == k == v and len(q) == 5, stage           # (n, t, H, W, C)
        assert not set(gda.input[:2]) & set(before), stage   # the node's planes are never made
        nodes = {name for piece in (split.before, split.after) for node in piece.graph.node for name in node.output}
        assert gda.output[0] not in nodes and split.gda_output not in nodes


def test_a_gda_node_in_another_form_is_cut_around_the_node_alone(sr_export, tmp_path):
    import onnx

    _, out = sr_export
    model = onnx.load(out / "forward_1.onnx")
    gda = next(node for node in model.graph.node if node.op_type == "GuidedDeformAttention")
    index = list(model.graph.node).index(gda)
    model.graph.node.insert(index, onnx.helper.make_node("Identity", [gda.input[0]], ["q_as_is"]))
    info = next(value for value in model.graph.value_info if value.name == gda.input[0])
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("q_as_is", info.type.tensor_type.elem_type,
                                                                     [d.dim_value for d in info.type.tensor_type.shape.dim]))
    gda.input[0] = "q_as_is"
    path = tmp_path / "forward_1.onnx"
    onnx.save(model, path)
    split = SessionFromPath(path, threads=2)()
    whole = SessionFromPath(path, threads=2, fused_gda=False)()
    assert isinstance(split, SplitGdaSession) and not split.split.channels_last
    assert split.split.gda_inputs == tuple(gda.input)
    feed = random_feed(out, "forward_1")
    for got, want in zip(split.run(None, feed), whole.run(None, feed)):
        assert np.abs(got - want).max() <= 1e-5


def test_split_stages_restore_like_eager_and_like_the_function_body(sr_export):
    model, out = sr_export
    tile = read_manifest(out)["tile"]
    lq = random_clip("sr", 5, height=tile + 8, width=tile)
    tiling = Tiling(window=0, tile=tile, tile_overlap=16, batch=read_manifest(out)["batch"])
    with torch.no_grad():
        eager = restore_tiled(model, lq, model.config, tiling)
    with load_backend(out, threads=2).open() as backend:
        split = restore_tiled(backend.restore, lq, backend.config, tiling)
    with load_backend(out, threads=2).open() as backend, onnxruntime_stages(out, threads=2, fused_gda=False) as body:
        backend.stages = body
        body = restore_tiled(backend.restore, lq, backend.config, tiling)
    assert (split - eager).abs().max().item() < 1e-4
    assert (split - body).abs().max().item() < 1e-5


def test_all_sessions_allocate_from_the_shared_arena(sr_export):
    _, out = sr_export
    stages = onnxruntime_stages(out, threads=2)
    with stages:
        sessions = []
        for runner in stages.runners.values():
            session = runner.session
            sessions += [session.before, session.after] if isinstance(session, SplitGdaSession) else [session]
    assert len(sessions) == len(stages.runners) + len(BRANCHES)
    for session in sessions:
        assert isinstance(session, ort.InferenceSession)
        options = session.get_session_options()
        assert options.get_session_config_entry(USE_ENV_ALLOCATORS) == "1"
        assert not options.enable_mem_pattern


FALLBACK_SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np
    from rvrt_engines.runtimes.onnxruntime import SessionFromPath
    path, feed_file, out_file = sys.argv[1:]
    feed = dict(np.load(feed_file))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = SessionFromPath(path, threads=2)()
    print(json.dumps({"type": type(session).__name__, "warnings": [str(w.message) for w in caught]}))
    np.savez(out_file, *session.run(None, feed))
""")


def test_without_a_compiler_a_step_warns_and_runs_the_function_body(sr_export, tmp_path):
    """No C++ compiler and an empty build cache: the kernel cannot be built, the graph still runs whole."""
    _, out = sr_export
    feed = random_feed(out, "backward_1", seed=3)
    np.savez(tmp_path / "feed.npz", **feed)
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "RVRT_PLUGINS_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT, str(out / "backward_1.onnx"),
                             str(tmp_path / "feed.npz"), str(tmp_path / "out.npz")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["type"] == "InferenceSession"
    assert any("fused CPU GDA kernel is unavailable" in w and "function body" in w for w in report["warnings"])
    whole = SessionFromPath(out / "backward_1.onnx", threads=2, fused_gda=False)()
    served = np.load(tmp_path / "out.npz")
    for index, want in enumerate(whole.run(None, feed)):
        np.testing.assert_array_equal(served[f"arr_{index}"], want)
