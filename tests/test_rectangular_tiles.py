"""Rectangular tiles end to end (issue 21, item 1): --tile H[xW], (height, width) exports, their
manifests and cache entries, served on ONNX Runtime against eager PyTorch."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import CACHED_TILE, CountingSource, random_clip
from rvrt import Tiling, get_task, restore_tiled
from rvrt_cluster.cli import main as batch_cli
from rvrt_engines.backends import load_backend
from rvrt_engines.cache import SEAL, CacheKey, ModelSource
from rvrt_engines.runtimes import OnnxRuntime
from rvrt_engines.cli import main as run_cli
from rvrt_engines.demo import main as demo_cli
from rvrt_engines.synthetic import write_video
from rvrt_engines.video import open_frames
from rvrt_export.accuracy import FLOAT32_TOLERANCE
from rvrt_export.cli import main as export_cli
from rvrt_engines.manifest import read_manifest, tile_of, write_manifest
from rvrt_validate.report import validate

SR = get_task("sr")
TILE = CACHED_TILE


@pytest.fixture
def cached_export(cached_tiny_sr):
    """(cache, entry, source): the tiny SR model exported for 48x64 tiles (batch 1) through the cache (shared,
    see conftest)."""
    return cached_tiny_sr


@pytest.fixture
def rectangular_export(cached_export):
    """(eager tiny SR model, its ONNX export for 48x64 tiles)."""
    _, entry, source = cached_export
    return source.model, entry


def test_the_manifest_records_height_and_width(rectangular_export):
    _, out = rectangular_export
    manifest = read_manifest(out)
    assert manifest["tile"] == [48, 64] and tile_of(manifest) == TILE
    stages = manifest["stages"]
    assert stages["extract"]["inputs"] == [{"name": "lq", "shape": [1, 2, 3, 48, 64]}]
    # SR features keep the input's size (feature stride 1), flows too: every side follows the tile's.
    assert all(item["shape"][-2:] == [48, 64] for stage in stages.values() for item in stage["inputs"])
    assert manifest["validation"]["passed"]


def test_a_manifest_with_an_int_tile_still_loads(rectangular_export, tmp_path):
    """Manifests written before rectangular tiles record one int: a square."""
    _, out = rectangular_export
    square = tmp_path / "square"
    shutil.copytree(out, square)
    manifest = read_manifest(square)
    manifest["tile"] = 48
    write_manifest(square, manifest)
    assert tile_of(read_manifest(square)) == (48, 48)
    backend = load_backend(square)
    assert backend.tile == (48, 48)


def test_rectangular_export_on_onnxruntime_equals_eager_tiled(rectangular_export):
    """Several tiles along both axes, two windows: the same tiling on both sides."""
    model, out = rectangular_export
    lq = random_clip("sr", 5, height=68, width=92)
    tiling = Tiling(window=4, tile=TILE, window_overlap=2, tile_overlap=16)
    with torch.no_grad():
        eager = restore_tiled(model, lq, model.config, tiling)
    with load_backend(out).open() as backend:
        assert backend.tile == TILE
        served = restore_tiled(backend.restore, lq, backend.config, tiling)
    assert served.shape == eager.shape == (1, 5, 3, 272, 368)
    assert (served - eager).abs().max().item() < FLOAT32_TOLERANCE


def test_a_tile_equal_to_the_frame_is_the_untiled_network(rectangular_export):
    """One tile of the frame's own size: ONNX Runtime gives the untiled eager network."""
    model, out = rectangular_export
    lq = random_clip("sr", 4, height=48, width=64)
    with torch.no_grad():
        whole = model(lq)
    with load_backend(out).open() as backend:
        one_tile = restore_tiled(backend.restore, lq, backend.config, Tiling(window=0, tile=TILE))
    assert one_tile.shape == whole.shape
    assert (one_tile - whole).abs().max().item() < 1e-5


def test_rvrt_run_serves_the_export_at_its_own_tile(rectangular_export, tmp_path):
    model, out = rectangular_export
    frames = np.random.default_rng(0).integers(0, 256, (5, 60, 80, 3), dtype=np.uint8)
    write_video(tmp_path / "in", frames)
    # Random frames are a scene cut each: the comparison is with one window run across them.
    options = ["--window", "4", "--window-overlap", "2", "--tile-overlap", "16", "--quiet", "--scene-cuts", "off"]
    result = CliRunner().invoke(run_cli, [str(out), str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                          "--tile", "48x64", *options])
    assert result.exit_code == 0, result.output
    restored = np.stack(list(open_frames(tmp_path / "out"))).astype(int)
    lq = torch.from_numpy(frames.transpose(0, 3, 1, 2).astype(np.float32) / 255)[None]
    with torch.no_grad():
        eager = restore_tiled(model, lq, model.config, Tiling(window=4, tile=TILE, window_overlap=2,
                                                              tile_overlap=16))
    expected = np.rint(eager[0].clamp(0, 1).numpy() * 255).astype(int).transpose(0, 2, 3, 1)
    assert restored.shape == expected.shape == (5, 240, 320, 3)
    assert np.abs(restored - expected).max() <= 1
    result = CliRunner().invoke(run_cli, [str(out), str(tmp_path / "in"), "-o", str(tmp_path / "b"),
                                          "--tile", "64"])
    assert result.exit_code == 2 and "exported for 48x64 px tiles, not 64: export again with --tile 64" in (
        result.output)
    assert not (tmp_path / "b").exists()


def test_the_parity_report_clip_is_one_and_a_half_tiles_a_side(rectangular_export, tmp_path):
    model, out = rectangular_export
    validate(model, out, tmp_path / "report", frames=2, runtimes=["onnxruntime"], precisions=["float32"])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [candidate["label"] for candidate in report["candidates"]] == ["onnxruntime float32"]
    assert report["tile"] == [48, 64] and report["clip"]["tiling"]["tile"] == [48, 64]
    assert report["clip"]["input_size"] == [96, 72] and report["clip"]["output_size"] == [384, 288]
    assert report["verdict"] == "pass", report["summary"]
    assert "tile 48x64, batch 1" in (tmp_path / "report" / "report.md").read_text()


def one_line_refusal(cli, args, expected):
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.output


@pytest.mark.parametrize("tile, expected", [
    ("60", "--tile 60: expected the tile in input px, one number for a square (64) or HEIGHTxWIDTH (144x176), "
           "each side a positive multiple of 8"),
    ("48x60", "--tile 48x60: expected the tile in input px"),
    ("abc", "--tile abc: expected the tile in input px"),
    ("0", "--tile 0: expected"),
    ("32x48", "--tile 32x48: each side must be at least 40 input px for task 'sr' (SpyNet's smallest input"),
])
def test_bad_tiles_are_one_line_and_exit_2(tile, expected, tmp_path):
    write_video(tmp_path / "in", np.zeros((2, 48, 48, 3), np.uint8))
    one_line_refusal(run_cli, ["sr", "--random-weights", tmp_path / "in", "-o", tmp_path / "out.mp4",
                               "--tile", tile], expected)
    one_line_refusal(run_cli, ["sr", "--random-weights", tmp_path / "in", "-o", tmp_path / "out.mp4", "--runtime",
                               "onnxruntime", "--tile", tile], expected)
    one_line_refusal(export_cli, ["onnx", "--task", "sr", "--random-weights", "--tiny", "-o", tmp_path / "export",
                                  "--tile", tile], expected)
    one_line_refusal(batch_cli, ["sr", "--random-weights", tmp_path / "in", "-o", tmp_path / "batch",
                                 "--tile", tile], expected)
    one_line_refusal(demo_cli, ["--tiny", "--workdir", tmp_path / "demo", "--tile", tile], expected)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in"]


def test_deblur_tiles_are_checked_per_side(tmp_path):
    one_line_refusal(export_cli, ["onnx", "--task", "deblur-dvd", "--random-weights", "--tiny", "--tile", "136x128",
                                  "-o", tmp_path / "e"], "--tile 136x128: each side must be at least 136 input px")
    assert not list(tmp_path.iterdir())


def test_default_export_folder_names_both_sides(tmp_path, monkeypatch):
    """Named as the tile is written; a square keeps the one number (taken folders: nothing is exported)."""
    monkeypatch.chdir(tmp_path)
    for tile, folder in (("48x64", "sr-tiny-tile48x64-fp32"), ("48X48", "sr-tiny-tile48-fp32")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x").write_bytes(b"")
        one_line_refusal(export_cli, ["onnx", "--task", "sr", "--random-weights", "--tiny", "--tile", tile],
                         f"-o {folder} exists")


def test_square_cache_entries_keep_their_names_and_rectangular_ones_carry_both_sides():
    key = CacheKey("001_RVRT_videosr_bi_REDS_30frames", "sr", "a" * 64, "random-seed-0", 128, 1, "float32",
                   "onnxruntime", "1.20.0", "a CPU (x86_64)")
    # A square tile is recorded as one int, as keys held it before rectangular tiles.
    assert key.name.startswith("sr-tile128-b1-fp32-onnxruntime-") and key.record["tile"] == 128
    source = ModelSource(SR, seed=0, config=SR.config.tiny())
    options = dict(batch=1, precision="float32")
    square = source.key(OnnxRuntime(), tile=(128, 128), **options)
    assert square == source.key(OnnxRuntime(), tile=128, **options) and square.tile == 128
    assert square.name.startswith("sr-tile128-b1-fp32-onnxruntime-")
    rectangular = source.key(OnnxRuntime(), tile=(144, 176), **options)
    assert rectangular.name.startswith("sr-tile144x176-b1-fp32-onnxruntime-")
    assert source.key(OnnxRuntime(), tile=(176, 144), **options).name.startswith("sr-tile176x144-")


def test_a_rectangular_cache_entry_is_made_once_and_reused(cached_export):
    cache, entry, source = cached_export
    assert source.builds == 1 and entry.name.startswith("sr-tile48x64-b1-fp32-onnxruntime-")
    assert json.loads((entry / SEAL).read_text())["key"]["tile"] == [48, 64]
    again = CountingSource()
    assert OnnxRuntime().artefacts(again, tile=[48, 64], batch=1, cache=cache) == entry and again.builds == 0
