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
from rvrt_engines.onnxrt import USE_ENV_ALLOCATORS, SessionFromPath, onnxruntime_stages
from rvrt_engines.onnxrt_split import SplitGdaSession
from rvrt_export.manifest import read_manifest


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


def test_split_stages_restore_like_eager_and_like_the_function_body(sr_export):
    model, out = sr_export
    tile = read_manifest(out)["tile"]
    lq = random_clip("sr", 5, height=tile + 8, width=tile)
    tiling = Tiling(window=0, tile=tile, tile_overlap=16, batch=read_manifest(out)["batch"])
    with torch.no_grad():
        eager = restore_tiled(model, lq, model.config, tiling)
    backend = load_backend(out, threads=2)
    with backend:
        split = restore_tiled(backend.restore, lq, backend.config, tiling)
    backend.stages = onnxruntime_stages(out, threads=2, fused_gda=False)
    with backend:
        body = restore_tiled(backend.restore, lq, backend.config, tiling)
    assert (split - eager).abs().max().item() < 1e-4
    assert (split - body).abs().max().item() < 1e-5


def test_all_sessions_allocate_from_the_shared_arena(sr_export):
    _, out = sr_export
    stages = onnxruntime_stages(out, threads=2)
    with stages:
        sessions = []
        for runner in stages.runners.values():
            session = runner.sess
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
    from rvrt_engines.onnxrt import SessionFromPath
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
