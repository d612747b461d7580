"""Restore a video file end to end: lazy decoding, windowed recurrent inference, streamed encoding."""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from rvrt import Tiling, blend_windows, restore_window, window_spans

from .backends import Backend
from .video_io import VideoInputError, open_frames, open_writer


class WindowReader:
    """Serves input frames [start, stop) as tensors, decoding each frame once, in order, and
    keeping only the frames a later window can still ask for."""

    def __init__(self, frames, to_tensor):
        self.frames = iter(frames)
        self.to_tensor = to_tensor
        self.buffer: deque[torch.Tensor] = deque()
        self.first = 0

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        while self.buffer and self.first < start:
            self.buffer.popleft()
            self.first += 1
        while self.first + len(self.buffer) < stop:
            self.buffer.append(self.to_tensor(next(self.frames)))
        return torch.stack([self.buffer[i - self.first] for i in range(start, stop)], 0).unsqueeze(0)


class LocalWindows:
    """Restores temporal windows in this process, one after another: the default window runner.

    A window runner is a context manager (workers ready on entry, released on exit) whose
    ``map(windows, tiling)`` takes input windows (n, t, cin, H, W) in order and yields each
    restored (n, t, 3, H*s, W*s) in the same order; a distributed runner has the same shape.
    """

    def __init__(self, backend: Backend):
        self.backend = backend

    def __enter__(self):
        self.backend.__enter__()
        return self

    def __exit__(self, *exc):
        self.backend.__exit__(*exc)

    def map(self, windows, tiling: Tiling):
        config = self.backend.config
        for lq in windows:
            yield restore_window(self.backend.restore, lq, config.upscale, tiling, config.min_tile)


@dataclass
class RestoreSummary:
    frames: int
    seconds: float
    output: str
    backend: str
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    conversion: str | None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else float("inf")


def frame_to_tensor(sigma: float | None):
    """uint8 (H, W, 3) RGB -> float (3 or 4, H, W) in [0, 1]; denoising appends sigma/255."""
    def convert(frame: np.ndarray) -> torch.Tensor:
        rgb = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float() / 255.0
        if sigma is None:
            return rgb
        return torch.cat([rgb, torch.full_like(rgb[:1], sigma / 255.0)])
    return convert


def to_uint8(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) float -> (H, W, 3) uint8, rounded as the official test script does."""
    return (frame.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def restore_video(backend: Backend, source: str | os.PathLike, output: str | os.PathLike, *,
                  sigma: float | None = None, window: int | None = None, window_overlap: int | None = None,
                  tile: int | None = None, tile_overlap: int | None = None, batch: int | None = None,
                  overwrite: bool = False, lossless: bool = False, crf: int | None = None, codec: str | None = None,
                  progress=None, windows=None) -> RestoreSummary:
    """Restore ``source`` (video file or folder of frames) into ``output`` (video file or folder).

    Window, tile and overlaps default to the task's official values (a 100-frame window where
    the official script takes the whole video, so that memory stays bounded); exported
    backends fix tile and batch. ``progress``: a callable receiving (frames done, total).
    ``windows``: the window runner (default :class:`LocalWindows` over ``backend``).
    """
    task = backend.task
    if task.kind == "denoise":
        if sigma is None:
            raise ValueError("denoising needs the noise level: pass sigma (e.g. --sigma 20, on the 0-255 scale)")
    elif sigma is not None:
        raise ValueError(f"sigma only applies to denoising, not to task {task.short!r}")
    if backend.tile is not None and tile not in (None, backend.tile):
        raise ValueError(f"this {backend.name} model was exported for {backend.tile} px tiles, not {tile}: "
                         f"export again with --tile {tile}, or leave the tile to the manifest")
    if backend.batch is not None and batch not in (None, backend.batch):
        raise ValueError(f"this {backend.name} model was exported for batches of {backend.batch} tiles, not {batch}")
    tiling = Tiling(window=(task.tile[0] or 100) if window is None else window,
                    tile=backend.tile or (task.tile[1] if tile is None else tile),
                    window_overlap=task.tile_overlap[0] if window_overlap is None else window_overlap,
                    tile_overlap=task.tile_overlap[1] if tile_overlap is None else tile_overlap,
                    batch=backend.batch or batch or 1)
    tiling.check(backend.config)

    start = time.perf_counter()
    frames = open_frames(source)
    if frames.variable_frame_rate:
        raise VideoInputError(f"{source}: variable frame rate; this runner writes constant-rate video and would "
                              f"shift frames in time. Convert first, e.g. ffmpeg -i IN -fps_mode cfr OUT.mp4")
    count = frames.frame_count
    scale = backend.config.upscale
    out_w, out_h = frames.width * scale, frames.height * scale
    reader = WindowReader(frames, frame_to_tensor(sigma))
    runner = windows or LocalWindows(backend)
    spans = window_spans(count, tiling)
    with runner, open_writer(output, frames.frame_rate, out_w, out_h, codec=codec, crf=crf, lossless=lossless,
                             overwrite=overwrite) as writer:
        restored = blend_windows(spans, runner.map((reader(start, stop) for start, stop in spans), tiling), count)
        for done, frame in enumerate(restored, 1):
            writer.write(to_uint8(frame[0]))
            if progress:
                progress(done, count)
    return RestoreSummary(count, time.perf_counter() - start, str(output), backend.name,
                          (frames.width, frames.height), (out_w, out_h), frames.conversion)
