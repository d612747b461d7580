"""Tiled inference, as the official ``test_video`` / ``test_clip`` do it, over any driver.

Temporal windows of ``window`` frames overlap by ``window_overlap`` frames and are averaged
where they overlap. Spatial tiles of ``tile`` px overlap by ``tile_overlap`` px; inner tile
borders are discarded (``overlap // 2`` output pixels on each inner side, as officially) and
what remains is averaged. Frames smaller than a tile are mirror-padded up to it, so every
backend, fixed-shape or not, sees the same tile and computes the same result.

Written once for both array kinds (:mod:`rvrt.arrays`): windows given as numpy arrays are
tiled, blended and returned as numpy arrays, torch tensors as torch tensors on the host, with
the same float32 arithmetic in the same order, so the frames are bit-identical either way.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from .arrays import array_namespace, host_float32
from .config import RVRTConfig
from .driver import Array


def tile_shape_of(tile: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of a tile given as one int (a square) or as (height, width), a JSON list too."""
    if isinstance(tile, int):
        return tile, tile
    height, width = tile
    return height, width


def tile_name(tile: int | Sequence[int]) -> str:
    """A tile as users write it after --tile: "64" for a square, "144x176" for height x width."""
    height, width = tile_shape_of(tile)
    return str(height) if height == width else f"{height}x{width}"


RestoreFn = Callable[[Array], Array]
"""(n, t, cin, tile_h, tile_w) -> (n, t, 3, tile_h*s, tile_w*s): a driver over some backend (any array
kind out; the tiling takes it back as float32 on the host, of the input's kind)."""


@dataclass(frozen=True)
class Tiling:
    """window: frames per temporal window (0 = whole video); tile: spatial tile in input px, square
    (one int) or (height, width), 0 = whole frame; batch: spatial tiles per backend call."""

    window: int = 0
    tile: int | tuple[int, int] = 0
    window_overlap: int = 2
    tile_overlap: int = 20
    batch: int = 1

    @property
    def tile_shape(self) -> tuple[int, int] | None:
        """(height, width) of a tile in input px; None for whole frames."""
        if isinstance(self.tile, int) and not self.tile:
            return None
        return tile_shape_of(self.tile)

    def check(self, config: RVRTConfig) -> None:
        """Raise ValueError naming the argument that a model of ``config`` cannot serve."""
        if self.window < 0 or (self.window and self.window % config.clip_size):
            raise ValueError(f"temporal window must be 0 (whole video) or a positive multiple of the clip size "
                             f"{config.clip_size}, got {self.window}")
        if self.window and not 0 <= self.window_overlap < self.window:
            raise ValueError(f"temporal overlap must be in [0, window={self.window}), got {self.window_overlap}")
        for side in self.tile_shape or ():
            if side <= 0 or side % 8:
                raise ValueError(f"tile sides must be positive multiples of 8 (the attention window), or the tile 0 "
                                 f"(whole frame); got {tile_name(self.tile)}")
            if side < config.min_tile:
                raise ValueError(f"tile {tile_name(self.tile)} is too small for this model: SpyNet needs at least "
                                 f"{config.min_tile} input px a side (multiples of 8), see FACTS")
            if not 0 <= self.tile_overlap < side:
                raise ValueError(f"tile overlap must be in [0, {side}) for tile {tile_name(self.tile)}, "
                                 f"got {self.tile_overlap}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering [0, length): official stride, last tile flush with the end."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, tile - overlap)) + [length - tile]


def mirror_pad(x: Array, height: int, width: int) -> Array:
    """Extend (..., h, w) to (..., height, width) by mirroring the last rows/columns (edge included),
    the official whole-frame padding; repeated while the mirror is shorter than the gap."""
    xp = array_namespace(x)
    while x.shape[-2] < height:
        x = xp.concat([x, xp.flip(x[..., -min(height - x.shape[-2], x.shape[-2]):, :], axis=-2)], axis=-2)
    while x.shape[-1] < width:
        x = xp.concat([x, xp.flip(x[..., -min(width - x.shape[-1], x.shape[-1]):], axis=-1)], axis=-1)
    return x


def restore_window(restore: RestoreFn, lq: Array, scale: int, tiling: Tiling, min_size: int,
                   on_tiles: Callable[[int, int], None] | None = None) -> Array:
    """One temporal window: lq (n, t, cin, H, W) -> (n, t, 3, H*s, W*s), tile by tile.

    on_tiles(done, total) is called after each backend call with the tiles finished so far.
    """
    xp = array_namespace(lq)
    n, t, _, height, width = lq.shape
    # Whole frame: padded to the attention window (8) and to what SpyNet needs.
    tile_h, tile_w = tiling.tile_shape or (max(-(-height // 8) * 8, min_size), max(-(-width // 8) * 8, min_size))
    padded = mirror_pad(lq, max(height, tile_h), max(width, tile_w))
    ys = tile_starts(padded.shape[-2], tile_h, tiling.tile_overlap)
    xs = tile_starts(padded.shape[-1], tile_w, tiling.tile_overlap)
    out = xp.zeros((n, t, 3, padded.shape[-2] * scale, padded.shape[-1] * scale), dtype=xp.float32)
    weight = xp.zeros((1, 1, 1, padded.shape[-2] * scale, padded.shape[-1] * scale), dtype=xp.float32)
    keep = tile_border_weights(xp, ys, xs, tile_h * scale, tile_w * scale, tiling.tile_overlap)

    jobs = [(v, iy, ix) for v in range(n) for iy in range(len(ys)) for ix in range(len(xs))]
    for first in range(0, len(jobs), tiling.batch):
        group = jobs[first:first + tiling.batch]
        batch = xp.concat([padded[v:v + 1, :, :, ys[iy]:ys[iy] + tile_h, xs[ix]:xs[ix] + tile_w]
                           for v, iy, ix in group])
        restored = host_float32(restore(batch), like=lq)
        for (v, iy, ix), patch in zip(group, restored):
            mask = keep[iy][ix]
            region = (..., slice(ys[iy] * scale, (ys[iy] + tile_h) * scale),
                      slice(xs[ix] * scale, (xs[ix] + tile_w) * scale))
            out[v][region] += patch * mask
            if v == 0:
                weight[0, 0][region] += mask
        if on_tiles:
            on_tiles(first + len(group), len(jobs))
    return (out / weight)[..., :height * scale, :width * scale]


def tile_border_weights(xp, ys: list[int], xs: list[int], tile_h: int, tile_w: int, overlap: int) -> list[list]:
    """Per tile, a (tile_h, tile_w) float32 0/1 mask of namespace ``xp`` that drops the borders
    shared with a neighbour: the official code zeroes ceil(overlap/2) px at the end and
    floor(overlap/2) px at the start of each inner side, in output pixels."""
    def axis_mask(count: int, index: int, size: int) -> Array:
        mask = xp.ones(size, dtype=xp.float32)
        if overlap and index < count - 1:
            mask[size - (overlap + 1) // 2:] = 0
        if overlap and index > 0:
            mask[:overlap // 2] = 0
        return mask

    return [[axis_mask(len(ys), iy, tile_h)[:, None] * axis_mask(len(xs), ix, tile_w)[None, :]
             for ix in range(len(xs))] for iy in range(len(ys))]


def window_spans(num_frames: int, tiling: Tiling) -> list[tuple[int, int]]:
    """The temporal windows [start, stop) covering ``num_frames`` frames, in order."""
    window = tiling.window or num_frames
    return [(start, min(start + window, num_frames))
            for start in tile_starts(num_frames, window, tiling.window_overlap)]


def covering_windows(spans: Sequence[tuple[int, int]], index: int) -> range:
    """The indices, in window order, of the windows of ``spans`` (as :func:`window_spans` gives
    them: starts and stops both ascending) that hold frame ``index``."""
    return range(bisect.bisect_right(spans, index, key=lambda span: span[1]),
                 bisect.bisect_right(spans, index, key=lambda span: span[0]))


def blend_frame(frames: Sequence[Array]) -> Array:
    """One frame (n, 3, H, W) from its restorations by the windows that hold it, frames[k] (n, 3,
    H, W) from the k-th of them in window order: summed in that order, then divided by the count.

    The one arithmetic of temporal blending: :func:`blend_windows` and any frontend that restores
    a single frame's windows (the VapourSynth filter) give bit-identical frames through it.
    """
    total = frames[0]
    for frame in frames[1:]:
        total = total + frame
    return total / len(frames)


def blend_windows(spans: list[tuple[int, int]], restored: Iterable[Array],
                  num_frames: int) -> Iterator[Array]:
    """Average restored windows (n, t, 3, H, W), given in the order of ``spans``, where they
    overlap, and yield each frame (n, 3, H, W) in order as soon as no later window covers it.

    Each frame is :func:`blend_frame` of its windows' frames in window order, so any producer of
    the same windows (this process, another process, a cluster) gives bit-identical frames.
    """
    held: dict[int, list[Array]] = {}
    emitted = 0
    for k, ((start, stop), window) in enumerate(zip(spans, restored, strict=True)):
        for offset in range(stop - start):
            held.setdefault(start + offset, []).append(window[:, offset])
        final = spans[k + 1][0] if k + 1 < len(spans) else num_frames
        while emitted < final:
            yield blend_frame(held.pop(emitted))
            emitted += 1


def iter_restored(restore: RestoreFn, read: Callable[[int, int], Array], num_frames: int, scale: int,
                  tiling: Tiling, min_size: int) -> Iterator[Array]:
    """Stream restored frames in order, each (n, 3, H*s, W*s), as temporal windows complete.

    read(start, stop) returns input frames [start, stop) as (n, stop-start, cin, H, W). Only
    the frames of the current and the next window are held, so memory does not grow with
    the length of the video.
    """
    spans = window_spans(num_frames, tiling)
    windows = (restore_window(restore, read(start, stop), scale, tiling, min_size) for start, stop in spans)
    return blend_windows(spans, windows, num_frames)


def restore_tiled(restore: RestoreFn, lq: Array, config: RVRTConfig, tiling: Tiling) -> Array:
    """Restore a whole sequence held in memory: lq (n, t, cin, H, W) -> (n, t, 3, H*s, W*s), of lq's kind."""
    tiling.check(config)
    frames = iter_restored(restore, lambda start, stop: lq[:, start:stop], lq.shape[1], config.upscale, tiling,
                           config.min_tile)
    return array_namespace(lq).stack(list(frames), axis=1)
