"""Tile and temporal window chosen from a memory budget (``rvrt-run --memory``, and any frontend).

RVRT keeps every clip's features of every branch for a whole temporal window, so a process's peak
grows with the frames of a window times the pixels of a tile, plus what one tile's computation
holds at once, plus the restored window frames (whole frames, at the output scale). The model

    peak = (fixed + per_window_px * window_frames * tile_px * batch + per_tile_px * tile_px * batch) * headroom
           + frame_bytes(window_frames, frame)

has its first three constants fitted to peak RSS measured on real ``rvrt-run`` processes
(``benchmarks/memory_model.py``; the measurements are listed beside each model below), ``headroom`` 1.1
for frames cut in several tiles (:data:`MULTI_TILE_HEADROOM`, measured), and its last term counted from the
arrays the tiling and blending hold (:func:`frame_bytes`).

The chooser, :func:`plan_tiling`, is a pure function of the task, the frame size and the budget:
no PyTorch, no click, so that every frontend (rvrt-run, the VapourSynth filter) can call it.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from rvrt import RVRTConfig, Task
from rvrt.tiling import tile_name, tile_shape_of, tile_starts

if TYPE_CHECKING:
    from .runtimes.base import Runtime

GIB = 2 ** 30
SAFE_SHARE = 0.6
"""Share of the free memory that a default budget takes: the rest stays for the system, the page cache and
the model's error (the fitted models' worst relative error is under 10 %)."""

UNITS = {"": None, "b": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}
MEMORY_EXPECTED = ("expected a size with its unit, e.g. 1.5G, 3GB or 800M (K, M, G, T: powers of 1024 bytes; "
                   "B, KB or KiB alike)")


def parse_memory(text: str) -> int:
    """Bytes of a size such as ``1.5G``, ``3GB``, ``800M``, ``2GiB``; ValueError naming --memory otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b)?\s*", str(text), flags=re.IGNORECASE)
    if match is None or (not match[2] and not match[3]):
        raise ValueError(f"--memory {text}: {MEMORY_EXPECTED}")
    size = float(match[1]) * UNITS[match[2].lower() or "b"]
    if size < 1:
        raise ValueError(f"--memory {text}: {MEMORY_EXPECTED}, more than 0")
    return int(size)


def available_ram() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def available_gpu_memory() -> int | None:
    """Free memory of the first CUDA GPU in bytes, as ``nvidia-smi`` reports it (None where it cannot)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError, IndexError):
        result = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=10, check=True)
        return int(result.stdout.split()[0]) * 2 ** 20
    return None


def default_budget(runtime: Runtime) -> tuple[int | None, str]:
    """(bytes, where they come from): :data:`SAFE_SHARE` of the free GPU memory for runtimes on a GPU, of the
    free RAM otherwise; None where neither can be read."""
    if runtime.needs_gpu:
        free = available_gpu_memory()
        if free is not None:
            return int(SAFE_SHARE * free), f"{SAFE_SHARE:.0%} of the GPU's free memory"
    free = available_ram()
    if free is None:
        return None, "no free-memory figure on this system"
    return int(SAFE_SHARE * free), f"{SAFE_SHARE:.0%} of free RAM"


@dataclass(frozen=True)
class MemoryModel:
    """Peak bytes of a process restoring with one runtime and task kind (see the module docstring)."""

    fixed: float
    per_window_px: float
    per_tile_px: float
    source: str
    calibrated: bool = True
    """False: borrowed from another runtime (nothing measured for this one): plans say so."""

    def tile_bytes(self, window_frames: int, tile_px: int, tiles: int = 1) -> float:
        """Peak bytes but the restored frames; ``tiles`` per frame: several tiles get :data:`MULTI_TILE_HEADROOM`."""
        single = self.fixed + (self.per_window_px * window_frames + self.per_tile_px) * tile_px
        return single * (MULTI_TILE_HEADROOM if tiles > 1 else 1.0)


MULTI_TILE_HEADROOM = 1.1
"""Runs of several tiles peaked up to 8.7 % above the one-tile model (eager SR 176x144 in 3 tiles of 144x72: 1.40
GiB measured, 1.29 estimated; ONNX Runtime SR 320x180 in 6 tiles of 128: 2.64 GiB, 2.45 estimated): what the
allocators keep between tiles. The calibration points are one tile each."""


# Each runtime's models are in its module (rvrt_engines.runtimes), fitted by benchmarks/memory_model.py (least
# squares, then ``fixed`` raised until no point lies above): peak RSS of rvrt-run under /usr/bin/time -f %M,
# full-size networks with random weights, 2 threads, this project's 2-core machine, one window of one tile per point.


def network_kind(config: RVRTConfig) -> str:
    """The memory model's kind of network: "sr", or "quarter" for the networks at 1/4 resolution (deblur and
    denoise, calibrated on denoise)."""
    return "sr" if config.feature_stride == 1 else "quarter"


def frame_bytes(config: RVRTConfig, window_frames: int, frame_px: int) -> float:
    """Bytes of whole-frame float32 arrays held while a window is restored and blended: the input window
    (the feed's frames and their stacked copy), the restored window being summed and its division by the
    weights (rvrt.tiling.restore_window), and the previous window, which the blend keeps for its overlap."""
    inputs = 2 * config.in_channels * 4
    outputs = 3 * 3 * config.upscale ** 2 * 4
    return window_frames * frame_px * (inputs + outputs)


def restored_window_bytes(config: RVRTConfig, window_frames: int, frame_px: int) -> float:
    """Bytes of one restored window kept whole: float32 RGB frames at the output scale."""
    return window_frames * frame_px * 3 * config.upscale ** 2 * 4


@dataclass(frozen=True)
class TilingPlan:
    """A tile and a temporal window for frames of ``frame`` (height, width) input px.

    tile: (height, width) in input px; tiles: tiles per frame; computed_px: input px computed per frame,
    overlaps and padding included; window_frames: frames held per window (the window, or the clip's
    frames when fewer); peak_bytes: the model's estimate; memory_bytes: the budget (None: none known).
    """

    tile: tuple[int, int]
    window: int
    frame: tuple[int, int]
    tiles: int
    computed_px: int
    window_frames: int
    peak_bytes: float
    memory_bytes: int | None
    calibrated: bool = True

    @property
    def overhead(self) -> float:
        """Computed pixels over the frame's pixels (1.00 = no waste)."""
        return self.computed_px / (self.frame[0] * self.frame[1])

    @property
    def fits(self) -> bool:
        return self.memory_bytes is None or self.peak_bytes <= self.memory_bytes

    def options(self) -> dict:
        """tile and window, as :func:`rvrt_engines.restore.resolve_tiling` and ``restore_video`` take them."""
        return dict(tile=self.tile, window=self.window)

    @property
    def layout(self) -> str:
        """"2 tiles 144x104": the tiles of a frame and their shape (height x width)."""
        return f"{self.tiles} tile{'s' if self.tiles != 1 else ''} {tile_name(self.tile)}"

    def describe(self) -> str:
        held = f" ({self.window_frames} frames)" if self.window_frames < self.window else ""
        budget = f" of {size_text(self.memory_bytes)}" if self.memory_bytes is not None else ""
        guess = "" if self.calibrated else " (not measured for this runtime: eager PyTorch's CPU figures)"
        return (f"{self.layout}: {self.overhead:.2f}x the frame's pixels, window {self.window}"
                f"{held}, est. peak {size_text(self.peak_bytes)}{budget}{guess}")


def padded_frame(config: RVRTConfig, height: int, width: int) -> tuple[int, int]:
    """The frame as one tile: each side up to a multiple of 8 and at least the task's smallest tile
    (rvrt.tiling.restore_window pads a whole frame the same way)."""
    return max(-(-height // 8) * 8, config.min_tile), max(-(-width // 8) * 8, config.min_tile)


def computed_pixels(height: int, width: int, tile: tuple[int, int], overlap: int) -> tuple[int, int]:
    """(tiles, input px computed) per frame of ``height`` x ``width`` with ``tile``, as restore_window cuts it."""
    tile_h, tile_w = tile
    count = len(tile_starts(max(height, tile_h), tile_h, overlap)) * len(tile_starts(max(width, tile_w), tile_w,
                                                                                     overlap))
    return count, count * tile_h * tile_w


def frames_computed(frames: int | None, window: int, overlap: int) -> float:
    """Frames computed per frame of input with ``window``: 1 when one window holds the clip, else the
    windows' overlaps counted again (for a stream of unknown length, the long-run share)."""
    if frames is not None and frames <= window:
        return 1.0
    if frames is None:
        return window / (window - overlap)
    return len(tile_starts(frames, window, overlap)) * window / frames


def plan_tiling(task: Task, config: RVRTConfig, frame_height: int, frame_width: int, *, runtime: Runtime | None = None,
                memory_bytes: int | None, tile: int | Sequence[int] | None = None,
                window: int | None = None, frames: int | None = None, tile_overlap: int | None = None,
                window_overlap: int | None = None, batch: int = 1, cached_windows: int = 0) -> TilingPlan:
    """The tile and window for frames of ``frame_height`` x ``frame_width`` input px within ``memory_bytes``.

    runtime: the record whose memory model counts [the default runtime's, eager PyTorch]. Tile: the whole
    (padded) frame when it fits, else the shape (multiples of 8, each side at least
    ``config.min_tile``) that computes the fewest pixels per frame, overlaps included. Window: up to the
    official one (``task.tile[0]``, or 100 where the official script takes the whole video), multiples of the
    clip size. Of all pairs within the budget, the one computing the least (pixels times frames, window
    overlaps included) wins; ties go to the longer window, then to fewer tiles. An explicit ``tile`` or
    ``window`` is kept, the other chosen within the budget. When nothing fits, the plan needing the least
    memory is returned (``fits`` False): the caller decides whether that is an error. ``frames``: the clip's
    frame count where known (a window longer than the clip holds only the clip). ``memory_bytes`` None:
    no budget (the whole frame and the official window). ``cached_windows``: restored windows a frontend keeps
    besides (the VapourSynth filter's cache), counted with the rest.
    """
    tile_overlap = task.tile_overlap[1] if tile_overlap is None else tile_overlap
    window_overlap = task.tile_overlap[0] if window_overlap is None else window_overlap
    if runtime is None:
        from .runtimes import default_runtime

        runtime = default_runtime()
    model = runtime.memory_model(config)
    padded_h, padded_w = padded_frame(config, frame_height, frame_width)
    frame_px = padded_h * padded_w

    if tile is not None:
        shapes = [tile_shape_of(tile)]
    else:
        heights = range(config.min_tile, padded_h + 1, 8)
        widths = range(config.min_tile, padded_w + 1, 8)
        shapes = [(h, w) for h in heights for w in widths]
    # Fewest computed pixels first, then fewer tiles; among equals the larger tile, so that the whole frame wins
    # when it costs no more.
    costs = sorted(((computed_pixels(frame_height, frame_width, shape, tile_overlap), shape) for shape in shapes),
                   key=lambda item: (item[0][1], item[0][0], -item[1][0] * item[1][1]))

    official = task.tile[0] or 100
    if window is not None:
        windows = [window]
    else:
        smallest = next(w for w in range(config.clip_size, official + 1, config.clip_size) if w > window_overlap)
        windows = list(range(official, smallest - 1, -config.clip_size))

    def held_frames(window_size: int) -> int:
        return min(window_size, frames) if frames is not None and window_size else (window_size or frames or 1)

    def peak(counted: tuple[int, int], shape: tuple[int, int], window_size: int) -> float:
        held = held_frames(window_size)
        return (model.tile_bytes(held, shape[0] * shape[1] * batch, counted[0]) + frame_bytes(config, held, frame_px)
                + cached_windows * restored_window_bytes(config, held, frame_px))

    def plan(counted: tuple[int, int], shape: tuple[int, int], window_size: int) -> TilingPlan:
        return TilingPlan(shape, window_size, (frame_height, frame_width), counted[0], counted[1],
                          held_frames(window_size), peak(counted, shape, window_size), memory_bytes,
                          calibrated=model.calibrated)

    best, best_cost = None, None
    for window_size in windows:
        temporal = frames_computed(frames, window_size, window_overlap) if window_size else 1.0
        # costs are sorted: the first shape within the budget is this window's best.
        fitting = next((item for item in costs if memory_bytes is None or peak(*item, window_size) <= memory_bytes),
                       None)
        if fitting is not None and (best_cost is None or fitting[0][1] * temporal < best_cost - 1e-9):
            best, best_cost = (fitting, window_size), fitting[0][1] * temporal
    if best is None:
        # Nothing fits: the plan needing the least memory, marked as not fitting.
        least = min(costs, key=lambda item: item[1][0] * item[1][1])
        return plan(*least, windows[-1])
    (counted, shape), window_size = best
    return plan(counted, shape, window_size)


def suggestion(plan: TilingPlan, better: TilingPlan) -> str | None:
    """For an export that serves ``plan``'s tile: what it wastes on this input, and which --tile would fit
    better (``better``, the plan chosen without a fixed tile), or None when it wastes nothing to speak of."""
    if better.overhead >= plan.overhead * 0.95:
        return None
    return (f"this export's {tile_name(plan.tile)} px tile computes {plan.overhead:.2f}x this input's pixels; "
            f"--tile {tile_name(better.tile)} would compute {better.overhead:.2f}x (pass the task or checkpoint "
            f"with --runtime and --tile {tile_name(better.tile)}, or export again with that --tile)")


class Budget:
    """The memory a run stays within (``memory`` bytes, else a share of what is free) and the tilings
    chosen in it, with the lines that tell them (``lines``) and the over-budget warnings (``warnings``).

    ``option``: how the frontend spells an option and its value in messages, "--{} {}" for rvrt-run's
    flags, "{}={}" for the VapourSynth filter's keywords.
    """

    def __init__(self, memory: int | None, runtime: Runtime, option: str = "--{} {}", cached_windows: int = 0):
        self.explicit = memory is not None
        self.runtime, self.option, self.cached_windows = runtime, option, cached_windows
        source = self.name("memory")
        self.bytes, self.source = (memory, source) if memory is not None else default_budget(runtime)
        self.warnings: list[str] = []
        self.lines: list[str] = []

    def name(self, option: str) -> str:
        """An option as the frontend writes it: "--tile", "tile="."""
        return self.option.format(option, "").strip()

    def plan(self, task: Task, config: RVRTConfig, height: int, width: int, frame_count: int | None, tiling: dict,
             *, export=None) -> TilingPlan:
        """The :class:`TilingPlan` for ``frame_count`` frames (None: unknown, a stream) of ``height`` x ``width``
        px with the options in ``tiling`` (window, window_overlap, tile, tile_overlap, batch; None: choose),
        its description kept in :attr:`lines`. ``export``: a description serving its own tile and batch (an
        export directory), told how much it wastes here and which tile would fit better. Raises ValueError
        naming the memory option where an explicit budget cannot hold even the smallest plan."""
        runtime = export.runtime if export is not None else self.runtime
        shared = dict(runtime=runtime, memory_bytes=self.bytes, window=tiling["window"], frames=frame_count,
                      tile_overlap=tiling["tile_overlap"], window_overlap=tiling["window_overlap"],
                      cached_windows=self.cached_windows)
        plan = plan_tiling(task, config, height, width, tile=export.tile if export is not None else tiling["tile"],
                           batch=(export.batch if export is not None else tiling["batch"]) or 1, **shared)
        if not plan.fits:
            fixed = " (the tile of this export)" if export is not None else ""
            message = (f"est. peak {size_text(plan.peak_bytes)} with {plan.layout}{fixed}, window {plan.window}, "
                       f"is over {size_text(self.bytes)} ({self.source})")
            if self.explicit and not (export is None and tiling["tile"] is not None and tiling["window"] is not None):
                smaller = (f"a smaller {self.name('window')}, or an export for a smaller tile" if export is not None
                           else f"a smaller {self.name('tile')} or {self.name('window')}")
                raise ValueError(f"{self.option.format('memory', size_text(self.bytes))} is too little for task "
                                 f"{task.short!r} at {width}x{height}: {message}; give more memory, or {smaller}")
            self.warnings.append(message)
        precision = runtime.resolved().precision
        self.lines.append(f"tiling: {plan.describe()} ({self.source}); {runtime.name} {precision}")
        if export is not None:
            hint = suggestion(plan, plan_tiling(task, config, height, width, **shared))
            if hint:
                self.lines.append(f"note: {hint}")
        return plan


def size_text(size: float) -> str:
    """Bytes as people write a memory size: 800M, 1.5G (powers of 1024, as --memory reads them)."""
    for unit, scale in (("T", 2 ** 40), ("G", GIB), ("M", 2 ** 20), ("K", 2 ** 10)):
        if size >= scale:
            return f"{size / scale:.3g}{unit}"
    return f"{size:.0f}B"
