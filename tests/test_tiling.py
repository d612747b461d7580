"""Tiled inference: official tile positions, exact stitching, tiled == untiled where one tile covers all."""

import pytest
import torch
import torch.nn.functional as F

from conftest import random_clip
from rvrt import Tiling, get_task, restore_tiled
from rvrt.tiling import tile_starts

SR = get_task("sr").config.tiny()


def nearest_x4(lq):
    """A per-pixel restoration: any correct stitching reproduces it exactly."""
    n, t, c, h, w = lq.shape
    return F.interpolate(lq[:, :, :3].reshape(n * t, 3, h, w), scale_factor=4).reshape(n, t, 3, 4 * h, 4 * w)


def test_tile_starts_follow_the_official_stride():
    assert tile_starts(128, 64, 20) == [0, 44, 64]
    assert tile_starts(64, 64, 20) == [0]
    assert tile_starts(30, 64, 20) == [0]
    assert tile_starts(100, 40, 0) == [0, 40, 60]


@pytest.mark.parametrize("tiling", [
    Tiling(window=4, tile=40, window_overlap=2, tile_overlap=20, batch=1),
    Tiling(window=6, tile=48, window_overlap=2, tile_overlap=8, batch=4),
    Tiling(window=0, tile=40, tile_overlap=0, batch=2),
    Tiling(window=2, tile=0, window_overlap=0),
    Tiling(window=4, tile=(40, 56), tile_overlap=16, batch=3),
    Tiling(window=0, tile=(64, 40), tile_overlap=8),
])
def test_stitching_is_exact_for_a_per_pixel_function(tiling):
    lq = torch.rand(2, 9, 3, 61, 90)
    out = restore_tiled(nearest_x4, lq, SR, tiling)
    assert out.shape == (2, 9, 3, 244, 360)
    torch.testing.assert_close(out, nearest_x4(lq), rtol=0, atol=1e-6)


def test_tiled_equals_untiled_when_one_tile_covers_the_input(kind_model):
    kind, model = kind_model
    lq = random_clip(kind, 5)
    size = lq.shape[-1]
    with torch.no_grad():
        whole = model(lq)
        one_tile = restore_tiled(model, lq, model.config, Tiling(window=0, tile=size))
        one_window = restore_tiled(model, lq, model.config, Tiling(window=6, tile=0))
    assert torch.equal(whole, one_tile)
    assert torch.equal(whole, one_window)


def test_a_rectangular_tile_the_size_of_the_frame_is_the_untiled_network():
    from conftest import tiny_model
    model = tiny_model("sr")
    lq = random_clip("sr", 5, height=48, width=64)
    with torch.no_grad():
        whole = model(lq)
        one_tile = restore_tiled(model, lq, model.config, Tiling(window=0, tile=(48, 64)))
    assert torch.equal(whole, one_tile)


def test_several_tiles_and_windows_on_the_real_model():
    from conftest import tiny_model
    model = tiny_model("sr")
    lq = random_clip("sr", 7, height=53, width=45)
    with torch.no_grad():
        whole = model(torch.cat([lq, lq[..., -3:, :].flip(-2)], -2)[..., :56, :])[..., :53 * 4, :]
        tiled = restore_tiled(model, lq, model.config, Tiling(window=4, tile=40, window_overlap=2, tile_overlap=16,
                                                              batch=3))
    assert tiled.shape == (1, 7, 3, 212, 180)
    assert torch.isfinite(tiled).all()
    # Tiles see less context than the whole frame, so results differ, but only a little.
    assert (tiled - whole[..., :180]).abs().mean() < 0.05


def test_batching_tiles_does_not_change_the_result():
    from conftest import tiny_model
    model = tiny_model("sr")
    lq = random_clip("sr", 4, height=64, width=72)
    with torch.no_grad():
        one = restore_tiled(model, lq, model.config, Tiling(tile=40, tile_overlap=12, batch=1))
        many = restore_tiled(model, lq, model.config, Tiling(tile=40, tile_overlap=12, batch=4))
    torch.testing.assert_close(one, many, rtol=0, atol=2e-5)


def test_frames_smaller_than_the_tile_are_padded_and_cropped():
    lq = torch.rand(1, 3, 3, 20, 33)
    out = restore_tiled(nearest_x4, lq, SR, Tiling(tile=40))
    torch.testing.assert_close(out, nearest_x4(lq), rtol=0, atol=1e-6)


@pytest.mark.parametrize("tiling,message", [
    (Tiling(tile=60), "multiples of 8"),
    (Tiling(tile=(40, 60)), "multiples of 8"),
    (Tiling(tile=(48, 32)), "too small for this model"),
    (Tiling(tile=(64, 40), tile_overlap=40), "tile overlap must be in"),
    (Tiling(tile=32), "too small for this model: SpyNet needs at least 40"),
    (Tiling(window=5), "multiple of the clip size 2"),
    (Tiling(window=4, window_overlap=4), "temporal overlap must be in"),
    (Tiling(tile=40, tile_overlap=40), "tile overlap must be in"),
    (Tiling(batch=0), "batch must be >= 1"),
])
def test_bad_tiling_is_refused(tiling, message):
    with pytest.raises(ValueError, match=message):
        tiling.check(SR)


def test_deblur_needs_larger_tiles():
    with pytest.raises(ValueError, match="at least 136"):
        Tiling(tile=128).check(get_task("deblur-dvd").config)
