"""ONNX export per stage, GDA as one custom node, and the ONNX Runtime backend against eager."""

import json
import os
import signal
import threading
import time

import onnx
import pytest
import torch
from click.testing import CliRunner

from conftest import random_clip, stage_workers, tiny_model
from rvrt import BRANCHES, Tiling, get_task, restore_tiled
from rvrt_engines.backends import load_backend
from rvrt_engines.runtimes.onnxruntime import onnxruntime_stages
from rvrt.swin import shifted_window_mask
from rvrt_export.cli import main as export_cli
from rvrt_export.onnx_export import export_onnx, export_stage
from rvrt_export.stages import stage_specs
from rvrt_engines.manifest import ArtifactError, read_manifest, sha256_of

from conftest import EXPORT_TILES as TILES


@pytest.fixture(scope="module", params=list(TILES))
def exported(request, tiny_export):
    """(kind, eager model, export dir)."""
    model, _, out = tiny_export(request.param)
    return request.param, model, out


def test_manifest_records_what_was_exported(exported):
    kind, model, out = exported
    manifest = read_manifest(out)
    assert manifest["task"] == get_task("sr" if kind == "sr" else "denoise").id
    assert manifest["tile"] == TILES[kind] and manifest["clip_size"] == 2 and manifest["opset"] == 20
    assert manifest["scale"] == (4 if kind == "sr" else 1) and manifest["dtype"] == "float32"
    assert len(manifest["checkpoint"]["sha256"]) == 64
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime"}
    names = {"extract", "flow", "reconstruct"} | set(BRANCHES) | {f"{b}_first" for b in BRANCHES}
    assert set(manifest["stages"]) == names
    for stage in manifest["stages"].values():
        graph = out / stage["file"]
        assert graph.stat().st_size == stage["bytes"] and sha256_of(graph) == stage["sha256"]
        assert "data" not in stage    # weights inside the graph below 1.5 GB
    batch = manifest["batch"]
    assert manifest["stages"]["extract"]["inputs"] == [
        {"name": "lq", "shape": [batch, 2, 4 if kind == "denoise" else 3] + [TILES[kind]] * 2}]
    assert manifest["validation"]["passed"] is True


def test_every_stage_matches_eager_in_onnxruntime(exported):
    """Recorded right after export, on random inputs: float32, expect ~1e-5."""
    _, _, out = exported
    for name, record in read_manifest(out)["validation"]["stages"].items():
        assert record["passed"] and record["max_abs"] < 1e-4, (name, record)


def test_gda_is_one_custom_node_per_propagation_step(exported):
    _, _, out = exported
    for name in read_manifest(out)["stages"]:
        model = onnx.load(str(out / f"{name}.onnx"))
        gda = [n for n in model.graph.node if n.op_type == "GuidedDeformAttention"]
        if name in BRANCHES:
            assert len(gda) == 1
            node = gda[0]
            assert node.domain == "rvrt"
            attrs = {a.name: a.i for a in node.attribute}
            assert attrs == {"kernel_h": 3, "kernel_w": 3, "padding": 1, "heads": 12, "groups": 12, "clip": 2}
            assert [(f.domain, f.name) for f in model.functions] == [("rvrt", "GuidedDeformAttention")]
        else:
            assert not gda


def test_tiled_pipeline_on_onnxruntime_equals_eager(exported):
    kind, model, out = exported
    tile = TILES[kind]
    lq = random_clip(kind, 7, height=tile + 20, width=tile + 12)
    tiling = Tiling(window=4, tile=tile, window_overlap=2, tile_overlap=16, batch=read_manifest(out)["batch"])
    with torch.no_grad():
        eager = restore_tiled(model, lq, model.config, tiling)
    with load_backend(out).open() as backend:
        served = restore_tiled(backend.restore, lq, backend.config, tiling)
    assert served.shape == eager.shape
    assert (served - eager).abs().max().item() < 1e-4


def test_unvalidated_exports_are_refused(exported, tmp_path):
    _, _, out = exported
    manifest = read_manifest(out)
    manifest["validation"]["passed"] = False
    manifest["validation"]["stages"]["flow"]["passed"] = False
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in out.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="refusing to serve .*validation failed for flow.*--allow-unvalidated"):
        onnxruntime_stages(copy)
    assert onnxruntime_stages(copy, allow_unvalidated=True) is not None


def test_export_refuses_impossible_tiles_and_missing_weights(tmp_path):
    runner = CliRunner()
    result = runner.invoke(export_cli, ["onnx", "--task", "sr", "--tile", "64", "-o", str(tmp_path / "a")])
    assert result.exit_code != 0 and "no weights: pass --checkpoint 001_RVRT_videosr_bi_REDS_30frames.pth" in result.output
    result = runner.invoke(export_cli, ["onnx", "--task", "sr", "--tile", "64", "--checkpoint",
                                        str(tmp_path / "missing.pth"), "-o", str(tmp_path / "b")])
    assert result.exit_code != 0 and "does not exist" in result.output
    for tile, task, expected in (("36", "sr", "multiple of 8"), ("44", "sr", "multiple of 8"),
                                 ("128", "deblur-dvd", "at least 136 input px"),
                                 ("144x128", "deblur-dvd", "at least 136 input px")):
        result = runner.invoke(export_cli, ["onnx", "--task", task, "--tile", tile, "--random-weights", "--tiny",
                                            "-o", str(tmp_path / f"t{tile}")])
        assert result.exit_code == 2 and f"--tile {tile}: " in result.output and expected in result.output
    assert not any(p.name.startswith("t") for p in tmp_path.iterdir())


def test_export_folder_and_graphs_take_the_umask(exported):
    """Not 0700: exports are read by other users and by cluster workers on shared file systems."""
    _, _, out = exported
    umask = os.umask(0)
    os.umask(umask)
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~umask)
    assert {oct(path.stat().st_mode & 0o777) for path in out.iterdir()} == {oct(0o666 & ~umask)}


def test_a_stage_graph_does_not_depend_on_what_its_process_traced_before(tiny_export, tmp_path):
    """The session's export ran its stages in worker processes, in whatever order they freed up; ``extract``
    traced here, from an empty mask cache, is the same bytes."""
    model, _, out = tiny_export("sr")
    spec = stage_specs(model, TILES["sr"], read_manifest(out)["batch"])[0]
    shifted_window_mask.cache_clear()
    export_stage(model, spec, tmp_path / "extract.onnx", read_manifest(out)["opset"])
    assert sha256_of(tmp_path / "extract.onnx") == sha256_of(out / "extract.onnx")


def test_a_killed_export_worker_fails_the_export_naming_its_stage_and_leaves_nothing(tmp_path):
    """Nothing: no output, no staging folder, no scratch copy of the model (both are made beside the output),
    no other worker."""
    killed = []

    def kill_one_worker():
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for pid in stage_workers(os.getpid())[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    with pytest.raises(ArtifactError, match=r"stage '\w+': its export worker ended with status -9 before finishing"):
        export_onnx(tiny_model("sr"), get_task("sr"), 48, tmp_path / "onnx", jobs=2)
    killer.join()
    assert killed and list(tmp_path.iterdir()) == []
    assert stage_workers(os.getpid()) == [], "the other worker was left running"
