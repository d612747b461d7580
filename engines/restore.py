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

from rvrt import Tiling, blend_windows, restore_window
from rvrt.tiling import tile_name, tile_shape_of, tile_starts

from .backends import Backend, Description
from .progress import Meter
from .scenes import cut_rule, shot_spans
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

    def map(self, windows, tiling: Tiling, spans=()):
        """``spans`` (the windows' input frames, as a window runner on other machines names a failing one) is
        not needed here: an error stops the run where it happens."""
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
    window before it is handed out, exactly as :func:`rvrt_engines.scenes.shot_spans` of the
    final count and cuts would give; ``count`` is set once the input has ended. Holds at most a
    window plus a step (across a cut: the window plus the next shot's first window).

    ``starts_shot`` (:data:`rvrt_engines.scenes.StartsShot`, None: one shot) sees every frame once,
    in order, as it is read; ``cuts`` lists the frames found to begin a shot so far. A shot's end is
    known when the next shot's first frame is read, so no window reaches across it."""

    def __init__(self, frames, to_tensor, tiling: Tiling, starts_shot=None):
        self.frames = iter(frames)
        self.to_tensor = to_tensor
        self.tiling = tiling
        self.starts_shot = starts_shot
        self.buffer: deque[np.ndarray] = deque()
        self.first = 0
        self.count: int | None = None
        self.end: int | None = None
        self.cuts: list[int] = []
        self.spans: list[tuple[int, int]] = []

    def available(self, stop: int) -> int:
        """Read until ``stop`` frames have arrived or the current shot ends; the frames so far that
        belong to it (``end``, once it has ended)."""
        while self.end is None and self.first + len(self.buffer) < stop:
            index = self.first + len(self.buffer)
            try:
                frame = next(self.frames)
            except StopIteration:
                self.count = self.end = index
                break
            self.buffer.append(self.to_tensor(frame))
            if self.starts_shot is not None and self.starts_shot(index, frame) and index > 0:
                self.cuts.append(index)
                self.end = index
        read = self.first + len(self.buffer)
        return read if self.end is None else min(read, self.end)

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
        planned = self._spans()
        span = next(planned, None)
        if span is not None:
            self.spans.append(span)
        while span is not None:
            # The next span first: blending a window needs to know where the next one starts.
            following = next(planned, None)
            if following is not None:
                self.spans.append(following)
            yield self.window(*span)
            span = following

    def _spans(self):
        """The spans of every shot in order, reading only as far as each one needs."""
        begin = 0
        while self.available(begin + 1) > begin:
            yield from self._shot_spans(begin)
            # The shot ended at a cut (its frame read, the next shot's first) or with the input.
            begin, self.end = self.end, self.count

    def _shot_spans(self, begin: int):
        """:func:`rvrt.window_spans` of the shot from ``begin``, moved there, as its frames arrive."""
        size = self.tiling.window
        if size == 0 or self.available(begin + size + 1) <= begin + size:
            self.available(sys.maxsize)
            yield begin, self.end
            return
        step = size - self.tiling.window_overlap
        start = begin
        yield start, start + size
        while self.available(start + step + size + 1) > start + step + size:
            start += step
            yield start, start + size
        # The shot has ended: its last window is flush with its end (start < end - size here).
        yield self.end - size, self.end


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
    cuts: list[int] = field(default_factory=list)
    """The frames that begin a shot (0 = the first frame restored), where windows were split."""

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
                  pix_fmt=None, bit_depth=None, preset=None, encoder_options=None, provenance=None) -> open_writer:
    """The checked (not yet opened) writer of ``output`` for ``frames`` restored at ``scale``."""
    if frames.variable_frame_rate:
        raise VideoInputError(f"{frames.path}: variable frame rate; this runner writes constant-rate video and would "
                              f"shift frames in time. Convert first, e.g. ffmpeg -i IN -fps_mode cfr OUT.mp4")
    return open_writer(output, frames.frame_rate, frames.width * scale, frames.height * scale, codec=codec, crf=crf,
                       lossless=lossless, overwrite=overwrite, like=frames, bit_depth=bit_depth, pix_fmt=pix_fmt,
                       preset=preset, encoder_options=encoder_options, provenance=provenance)


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
                  pix_fmt: str | None = None, bit_depth: int | None = None, preset: str | None = None,
                  encoder_options=None, start: float | None = None,
                  frames: int | None = None, fps: float | None = None, progress=None, windows=None,
                  notes=None, scene_cuts="auto") -> RestoreSummary:
    """Restore ``source`` (video file, folder of frames, ``-`` for YUV4MPEG2 on stdin, or an
    open :class:`FrameSource`) into ``output`` (video file, frame folder, ``-`` for stdout).

    Window, tile, overlaps and batch are resolved by :func:`resolve_tiling`; ``tile`` is
    (height, width) in input px or one int for a square.
    ``start`` (seconds) and ``frames`` restore a segment; ``fps`` is the rate of a frame folder.
    The output is checked and its encoder opened before any frame is restored. ``progress``:
    called with a :class:`Status` at every stage call, tile and frame. ``notes``: called with
    each thing the output cannot keep. ``windows``: the window runner (default
    :class:`LocalWindows` over ``backend``).
    ``scene_cuts``: "auto" (FFmpeg's scdet on the frames as they are read), "off", a file listing the
    first frame of each shot, or a list of them (:mod:`rvrt_engines.scenes`); no window spans a cut,
    and the summary's ``cuts`` says where they were.
    """
    check_sigma(backend.task, sigma)
    tiling = resolve_tiling(backend, window=window, window_overlap=window_overlap, tile=tile,
                            tile_overlap=tile_overlap, batch=batch)

    began = time.perf_counter()
    source_frames = open_source(source, fps, start, frames)
    starts_shot, known_cuts, cut_notes = cut_rule(scene_cuts, source_frames)
    scale = backend.config.upscale
    sink = output_writer(source_frames, output, scale, overwrite=overwrite, lossless=lossless, crf=crf, codec=codec,
                         pix_fmt=pix_fmt, bit_depth=bit_depth, preset=preset, encoder_options=encoder_options,
                         provenance=backend.provenance())
    count = source_frames.frame_count
    written = 0
    with sink as writer:
        messages = [*source_notes(source_frames), *cut_notes, *(f"note: {note}" for note in writer.notes)]
        for message in messages:
            if notes:
                notes(message)
        deep = sink.depth > 8
        meter = Meter(progress, count, planned_work(count, known_cuts or [], tiling) if count else None)
        runner = windows or LocalWindows(backend, meter)
        feed = WindowFeed(source_frames, frame_to_array(sigma), tiling, starts_shot)
        with runner:
            restored_windows = counted_windows(runner.map(feed.windows(), tiling, feed.spans), feed, meter,
                                               None if known_cuts is not None else count)
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
                          sink.depth, feed.cuts)


def source_notes(frames: FrameSource) -> list[str]:
    return ([f"input converted: {frames.conversion}"] if frames.conversion else []) + (
        [f"note: {frames.colour.guessed}"] if frames.colour.guessed else [])


def planned_work(count: int, cuts: list[int], tiling: Tiling) -> list[int]:
    """The lengths of the windows of ``count`` frames cut at ``cuts``: the meter's work."""
    return [stop - first for first, stop in shot_spans(count, cuts, tiling)]


def counted_windows(restored, feed: WindowFeed, meter: Meter, replan: int | None = None):
    """The restored windows, each reported to ``meter``. ``replan``: the frame count whose work is
    planned again whenever detection has found more cuts (each adds windows)."""
    planned = 0
    for index, window in enumerate(restored):
        if replan and len(feed.cuts) != planned:
            planned = len(feed.cuts)
            meter.status.work_total = float(sum(planned_work(replan, feed.cuts, feed.tiling)))
        meter.window_done(feed.spans[index][1] - feed.spans[index][0])
        yield window
