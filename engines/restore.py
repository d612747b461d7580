"""Restore a video end to end: lazy decoding, windowed recurrent inference, streamed encoding."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from rvrt import Tiling, blend_windows, restore_window, window_spans
from rvrt.tiling import tile_name, tile_shape_of, tile_starts

from .backends import Backend, Description
from .progress import Meter
from .video import FrameSource, Segment, VideoInputError, open_frames, open_writer

STAGES = ("extract", "flow", "propagate", "reconstruct")


class CountingStages:
    """The backend's stages, calling ``on_call`` after each stage call: progress inside a tile."""

    def __init__(self, stages, on_call):
        self._stages = stages
        self._on_call = on_call

    def __getattr__(self, name):
        attribute = getattr(self._stages, name)
        if name not in STAGES:
            return attribute

        def counted(*args, **kwargs):
            result = attribute(*args, **kwargs)
            self._on_call()
            return result
        return counted


def stage_calls(frames: int, clip: int) -> int:
    """Stage calls of one recurrent pass over ``frames`` frames (rvrt.run_recurrent): a flow per
    frame pair, per clip an extraction, four propagation steps and a reconstruction."""
    clips = -(-frames // clip)
    return clips * clip - 1 + 6 * clips


class LocalWindows:
    """Restores temporal windows in this process, one after another: the default window runner.

    A window runner is a context manager (workers ready on entry, released on exit) whose
    ``map(windows, tiling)`` takes input windows (n, t, cin, H, W) in order and yields each
    restored (n, t, 3, H*s, W*s) in the same order; a distributed runner has the same shape.
    ``meter``: progress is reported per stage call and per tile.
    """

    def __init__(self, description: Description, meter: Meter | None = None):
        self.description = description
        self.meter = meter
        self.backend: Backend | None = None
        self._opened = contextlib.ExitStack()

    def __enter__(self):
        self.backend = self._opened.enter_context(self.description.open())
        return self

    def __exit__(self, *exc):
        self.backend = None
        return self._opened.__exit__(*exc)

    def map(self, windows, tiling: Tiling):
        config = self.description.config
        backend, on_tiles = self.backend, None
        if self.meter is not None:
            backend = dataclasses.replace(self.backend, stages=CountingStages(self.backend.stages,
                                                                              self.meter.stage_call))
            on_tiles = self.meter.tiles
        for index, lq in enumerate(windows):
            if self.meter is not None:
                n, t, _, height, width = lq.shape
                tile_h, tile_w = tiling.tile_shape or (height, width)
                tiles = n * tile_count(height, tile_h, tiling.tile_overlap) * tile_count(width, tile_w,
                                                                                       tiling.tile_overlap)
                self.meter.window_started(index, t, -(-tiles // tiling.batch), stage_calls(t, config.clip_size))
            yield restore_window(backend.restore, lq, config.upscale, tiling, config.min_tile, on_tiles)


def tile_count(length: int, tile: int, overlap: int) -> int:
    """Tiles of ``tile`` px covering ``length`` px (a shorter length is padded up to one tile)."""
    return len(tile_starts(max(length, tile), tile, overlap))


class WindowFeed:
    """Input windows for :func:`rvrt.blend_windows`, read from a frame iterator of known or
    unknown length (a pipe): ``spans`` grows as frames arrive, each span known before the
    window before it is handed out, exactly as ``rvrt.window_spans`` of the final count would
    give; ``count`` is set once the input has ended. Holds at most a window plus a step."""

    def __init__(self, frames, to_tensor, tiling: Tiling):
        self.frames = iter(frames)
        self.to_tensor = to_tensor
        self.tiling = tiling
        self.buffer: deque[np.ndarray] = deque()
        self.first = 0
        self.count: int | None = None
        self.spans: list[tuple[int, int]] = []

    def available(self, stop: int) -> int:
        """Read until ``stop`` frames have arrived or the input ends; the frames so far."""
        while self.count is None and self.first + len(self.buffer) < stop:
            try:
                self.buffer.append(self.to_tensor(next(self.frames)))
            except StopIteration:
                self.count = self.first + len(self.buffer)
        return self.first + len(self.buffer)

    def window(self, start: int, stop: int) -> np.ndarray:
        while self.first < start:
            self.buffer.popleft()
            self.first += 1
        return np.stack([self.buffer[i - self.first] for i in range(start, stop)])[None]

    def windows(self):
        """The input windows, the first already read (so that ``spans`` holds its first span)."""
        windows = self._windows()
        first = next(windows, None)
        return itertools.chain([first] if first is not None else [], windows)

    def _windows(self):
        size = self.tiling.window
        if size == 0 or self.available(size + 1) <= size:
            count = self.available(sys.maxsize) if size == 0 else self.count
            if count == 0:
                return
            self.spans.append((0, count))
            yield self.window(0, count)
            return
        step = size - self.tiling.window_overlap
        start = 0
        self.spans.append((0, size))
        while True:
            following = start + step
            if self.available(following + size + 1) > following + size:
                self.spans.append((following, following + size))
                yield self.window(start, start + size)
                start = following
                continue
            # The input has ended: the last window is flush with its end (start < count - size here).
            final = (self.count - size, self.count)
            self.spans.append(final)
            yield self.window(start, start + size)
            yield self.window(*final)
            return


@dataclass
class RestoreSummary:
    frames: int
    seconds: float
    output: str
    backend: str
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    conversion: str | None
    notes: list[str] = field(default_factory=list)
    bit_depth: int = 8

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else float("inf")


def frame_to_array(sigma: float | None):
    """(H, W, 3) uint8 or uint16 RGB -> float32 (3 or 4, H, W) in [0, 1]; denoising appends sigma/255."""
    def convert(frame: np.ndarray) -> np.ndarray:
        top = 255.0 if frame.dtype == np.uint8 else 65535.0
        rgb = frame.transpose(2, 0, 1).astype(np.float32) / top
        if sigma is None:
            return rgb
        return np.concatenate([rgb, np.full_like(rgb[:1], sigma / 255.0)])
    return convert


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 -> (H, W, 3) uint8, rounded (half to even) as the official test script does."""
    return np.rint(np.clip(frame, 0, 1) * np.float32(255.0)).astype(np.uint8).transpose(1, 2, 0)


def to_uint16(frame: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 -> (H, W, 3) uint16 on the full 16-bit scale (what deeper outputs are made from)."""
    return np.rint(np.clip(frame, 0, 1) * np.float32(65535.0)).astype(np.uint16).transpose(1, 2, 0)


def check_sigma(task, sigma: float | None) -> None:
    if task.kind == "denoise":
        if sigma is None:
            raise ValueError("denoising needs the noise level: pass --sigma (e.g. --sigma 20, on the 0-255 scale)")
        if not 0 <= sigma <= 255:
            raise ValueError(f"--sigma {sigma:g}: expected a noise level from 0 to 255 (the 8-bit scale)")
    elif sigma is not None:
        raise ValueError(f"--sigma only applies to denoising, not to task {task.short!r}")


def open_source(source, fps: float | None = None, start: float | None = None, frames: int | None = None):
    """A frame source from a path or ``-``, or ``source`` itself when already open."""
    if isinstance(source, FrameSource):
        return source
    if fps is not None and (fps <= 0 or not Path(source).is_dir()):
        raise ValueError(f"--fps {fps:g}: expected a positive frame rate, for a folder of frames (videos and "
                         f"streams keep their own rate)")
    if start is not None and start < 0:
        raise ValueError(f"--start {start:g}: expected a time from 0")
    if frames is not None and frames < 1:
        raise ValueError(f"--frames {frames}: expected at least 1 frame")
    return open_frames(source, Fraction(fps).limit_denominator(1001000) if fps else None,
                       Segment(start or 0.0, frames))


def output_writer(frames: FrameSource, output, scale: int, *, overwrite=False, lossless=False, crf=None, codec=None,
                  pix_fmt=None, bit_depth=None) -> open_writer:
    """The checked (not yet opened) writer of ``output`` for ``frames`` restored at ``scale``."""
    if frames.variable_frame_rate:
        raise VideoInputError(f"{frames.path}: variable frame rate; this runner writes constant-rate video and would "
                              f"shift frames in time. Convert first, e.g. ffmpeg -i IN -fps_mode cfr OUT.mp4")
    return open_writer(output, frames.frame_rate, frames.width * scale, frames.height * scale, codec=codec, crf=crf,
                       lossless=lossless, overwrite=overwrite, like=frames, bit_depth=bit_depth, pix_fmt=pix_fmt)


def resolve_tiling(backend: Description, *, window: int | None = None, window_overlap: int | None = None,
                   tile: int | Sequence[int] | None = None, tile_overlap: int | None = None,
                   batch: int | None = None) -> Tiling:
    """The checked :class:`Tiling` that ``backend`` serves for these options (None: the default).

    Defaults are the task's official values (a 100-frame window where the official script takes
    the whole video, so that memory stays bounded); an exported backend fixes tile and batch and
    refuses others. Every frontend (rvrt-run, rvrt-batch, the VapourSynth filter) tiles through
    this one function, so the same options give the same windows and tiles, hence the same frames.
    """
    task = backend.task
    if backend.tile is not None and tile is not None and tile_shape_of(tile) != backend.tile:
        raise ValueError(f"this {backend.name} model was exported for {tile_name(backend.tile)} px tiles, not "
                         f"{tile_name(tile)}: export again with --tile {tile_name(tile)}, or leave the tile to the "
                         f"manifest")
    if backend.batch is not None and batch not in (None, backend.batch):
        raise ValueError(f"this {backend.name} model was exported for batches of {backend.batch} tiles, not {batch}")
    tiling = Tiling(window=(task.tile[0] or 100) if window is None else window,
                    tile=backend.tile or (task.tile[1] if tile is None else tile_shape_of(tile)),
                    window_overlap=task.tile_overlap[0] if window_overlap is None else window_overlap,
                    tile_overlap=task.tile_overlap[1] if tile_overlap is None else tile_overlap,
                    batch=backend.batch or batch or 1)
    tiling.check(backend.config)
    return tiling


def restore_video(backend: Description, source, output: str | os.PathLike, *,
                  sigma: float | None = None, window: int | None = None, window_overlap: int | None = None,
                  tile: int | Sequence[int] | None = None, tile_overlap: int | None = None, batch: int | None = None,
                  overwrite: bool = False, lossless: bool = False, crf: int | None = None, codec: str | None = None,
                  pix_fmt: str | None = None, bit_depth: int | None = None, start: float | None = None,
                  frames: int | None = None, fps: float | None = None, progress=None, windows=None,
                  notes=None) -> RestoreSummary:
    """Restore ``source`` (video file, folder of frames, ``-`` for YUV4MPEG2 on stdin, or an
    open :class:`FrameSource`) into ``output`` (video file, frame folder, ``-`` for stdout).

    Window, tile, overlaps and batch are resolved by :func:`resolve_tiling`; ``tile`` is
    (height, width) in input px or one int for a square.
    ``start`` (seconds) and ``frames`` restore a segment; ``fps`` is the rate of a frame folder.
    The output is checked and its encoder opened before any frame is restored. ``progress``:
    called with a :class:`Status` at every stage call, tile and frame. ``notes``: called with
    each thing the output cannot keep. ``windows``: the window runner (default
    :class:`LocalWindows` over ``backend``).
    """
    check_sigma(backend.task, sigma)
    tiling = resolve_tiling(backend, window=window, window_overlap=window_overlap, tile=tile,
                            tile_overlap=tile_overlap, batch=batch)

    began = time.perf_counter()
    source_frames = open_source(source, fps, start, frames)
    scale = backend.config.upscale
    sink = output_writer(source_frames, output, scale, overwrite=overwrite, lossless=lossless, crf=crf, codec=codec,
                         pix_fmt=pix_fmt, bit_depth=bit_depth)
    count = source_frames.frame_count
    written = 0
    with sink as writer:
        messages = [*source_notes(source_frames), *(f"note: {note}" for note in writer.notes)]
        for message in messages:
            if notes:
                notes(message)
        deep = sink.depth > 8
        meter = Meter(progress, count, [stop - first for first, stop in window_spans(count, tiling)] if count else None)
        runner = windows or LocalWindows(backend, meter)
        feed = WindowFeed(source_frames, frame_to_array(sigma), tiling)
        with runner:
            restored_windows = counted_windows(runner.map(feed.windows(), tiling), feed.spans, meter)
            # A stream's length is known only at its end: blend as far as the spans known so far
            # say, and stop at the last frame (feed.count) rather than at a count given up front.
            for frame in blend_windows(feed.spans, restored_windows, count or sys.maxsize):
                writer.write(to_uint16(frame[0]) if deep else to_uint8(frame[0]))
                written += 1
                meter.frame_written(written)
                if feed.count is not None and written == feed.count:
                    break
    size = (source_frames.width * scale, source_frames.height * scale)
    return RestoreSummary(written, time.perf_counter() - began, str(output), backend.name,
                          (source_frames.width, source_frames.height), size, source_frames.conversion, messages,
                          sink.depth)


def source_notes(frames: FrameSource) -> list[str]:
    return ([f"input converted: {frames.conversion}"] if frames.conversion else []) + (
        [f"note: {frames.colour.guessed}"] if frames.colour.guessed else [])


def counted_windows(restored, spans: list[tuple[int, int]], meter: Meter):
    for index, window in enumerate(restored):
        meter.window_done(spans[index][1] - spans[index][0])
        yield window
