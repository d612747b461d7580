"""RVRT as a VapourSynth filter: ``restore(clip, model, **options) -> vs.VideoNode``.

A frontend of the one recurrent driver, not a copy of it: the model is
:func:`rvrt_engines.backends.load_backend`'s, the tiling :func:`rvrt_engines.restore.resolve_tiling`'s,
the windows, tiles and blending :mod:`rvrt.tiling`'s, and frames become arrays and arrays pixels with
rvrt-run's own functions. So a frame equals rvrt-run's frame for the same RGB input, bit for bit in float32
(YUV becomes RGB by zimg here, by swscale there: docs/vapoursynth.md says how far apart).

Lazy and seekable: a request for frame n restores only the temporal windows that hold n (those of
:func:`rvrt.tiling.window_spans` for the clip's length), which a small LRU cache keeps, so that playback
restores each window once and memory stays flat in the clip's length. Input frames come through
VapourSynth's own requests: for each request, ``std.FrameEval`` picks a ``std.ModifyFrame`` whose
clips are the input shifted in time, so that their frame n is the input frame a window needs; the
core fetches them before the callback runs, and the callback never calls ``get_frame``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import numbers
import os
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Sequence

import numpy as np

from .extras import install_command

try:
    import vapoursynth as vs
except ImportError as error:
    # The package is on no index: the hint names this copy's own source (a checkout's '.[vapoursynth]').
    raise ImportError(f"rvrt_engines.vapoursynth needs VapourSynth (R81, Python >= 3.12): "
                      f"{install_command('vapoursynth')}") from error

from rvrt.tiling import blend_frame, covering_windows, restore_window

from .frontend import TILING_OPTIONS, prepare
from .memory_budget import MEMORY_EXPECTED, parse_memory
from .restore import frame_to_array, to_uint8, to_uint16
from .runtimes import PRECISION_NAMES
from .scenes import AUTO, OFF, checked_list, describe_cuts, read_cut_file, shot_spans
from .video.colour import MATRIX_NAMES, guessed_matrix

DEFAULTS = {
    "task": None, "checkpoint": None, "random_weights": False, "runtime": None, "precision": None, "fp16": False,
    "device": "cpu",
    "threads": None, "allow_unvalidated": False, "sigma": None, "window": None, "window_overlap": None,
    "tile": None, "tile_overlap": None, "batch": None, "memory": None, "format": None, "cache_windows": 2,
    "scene_cuts": AUTO,
}
"""The options of :func:`restore` and their defaults (None: the task's or the export's value)."""

INTEGERS = ("threads", "window", "window_overlap", "tile_overlap", "batch", "cache_windows")
FLAGS = ("random_weights", "fp16", "allow_unvalidated")
STRINGS = ("task", "runtime", "precision", "device")

# Properties that describe YUV pixels: an RGB output frame has RGB's instead.
YUV_ONLY = ("_ChromaLocation",)
# _Matrix values that say nothing about a YUV frame: unspecified, or RGB's left over from another clip.
UNTAGGED = (vs.MATRIX_UNSPECIFIED, vs.MATRIX_RGB)


def restore(clip: vs.VideoNode, model: str | os.PathLike, **options) -> vs.VideoNode:
    """RVRT restoration of ``clip`` (SR x4, deblurring or denoising) with MODEL, as rvrt-run's.

    clip: constant format and size, RGB or YUV, 8-16 bit integer or 32-bit float samples. It is read
    as RGB the way rvrt-run reads video: 8-bit clips as RGB24, deeper and float clips as RGB48 (on
    ``core.resize``; YUV with each frame's own ``_Matrix`` and ``_Range``, limited where ``_Range``
    is missing; YUV without a ``_Matrix`` (or with an unspecified or RGB one) with rvrt-run's guess
    by size, BT.601 or BT.709 as players take it (:func:`tagged`, said once in the log); RGB without
    a matrix, whatever ``_Matrix`` it carries), then as float32 (3, H, W) in [0, 1] by
    :func:`rvrt_engines.restore.frame_to_array` (denoising appends ``sigma``/255 as a 4th channel).

    model: what MODEL is for rvrt-run: an export or engine directory, an official checkpoint, or a
    task name with ``checkpoint=`` or ``random_weights=True`` (and ``runtime=`` to serve it on an
    exported runtime: onnxruntime, openvino, tensorrt).

    options, named after rvrt-run's flags, defaults in brackets:
      task, checkpoint, random_weights [False], runtime [None: the directory's own; eager PyTorch for
      a checkpoint], precision ['f32', 'f16' or 'bf16'; the runtime's default], fp16 [False: precision
      'f16'], device ['cpu'], threads [the runtime's: all cores], allow_unvalidated [False]: the model,
      set up by :func:`rvrt_engines.frontend.prepare` as for rvrt-run;
      sigma: the noise level (0-255 scale), denoising only and required there;
      window [as rvrt-run: chosen within ``memory``, up to the task's official value; 0 = whole clip],
      window_overlap [2], tile [as rvrt-run: the export's; for a task or checkpoint the whole frame, or
      the tile computing the fewest pixels within ``memory``]: int or (height, width), tile_overlap [20],
      batch [1, or the export's]: as :func:`rvrt_engines.restore.resolve_tiling`;
      memory [60 % of free RAM; of the GPU's free memory on CUDA and TensorRT]: bytes, or a size such as
      "1.5G", as rvrt-run's --memory (:mod:`rvrt_engines.memory_budget`); the choice is logged;
      format [vs.RGBS]: the output's format, e.g. ``clip.format`` for the input's; RGB24 and RGB48
      are quantised as rvrt-run's 8- and 16-bit outputs, other formats made from RGBS by
      ``core.resize`` (a YUV format only for a YUV clip, with each input frame's matrix, range and
      chroma location);
      cache_windows [2]: restored windows kept for later requests (each window: t frames of
      float32 (3, H*s, W*s)), counted in the memory estimate; a window that a request in flight
      still needs is kept beyond it until that frame is done;
      scene_cuts ["auto"]: no window spans a cut (:func:`clip_cuts`): "auto" reads the clip's
      ``_SceneChangePrev``/``_SceneChangeNext`` (misc.SCDetect's, or the user's own), "off" is the
      official behaviour, else a file or a list of the frames that begin a shot.

    Returns a clip of the same length and frame rate, H*s x W*s (s: the task's scale, 4 for SR).
    RGBS output frames hold the network's float32 values, unclipped. Every frame property of the
    input frame is kept (``_Primaries``, ``_Transfer``, ``_SARNum``/``_SARDen``,
    ``_DurationNum``/``_DurationDen``, ``_FieldBased``, ``_SceneChangePrev``/``_SceneChangeNext``
    and the rest); ``_Matrix`` and ``_Range`` say what the output pixels are: RGB and full range
    for RGB output, the input's (its guessed matrix for untagged YUV) for an output in a YUV clip's format.

    Bad arguments raise ``vs.Error`` naming the argument before the node exists; a failure while a
    frame is made is VapourSynth's error for that frame, naming it and the cause.
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], DEFAULTS, n=1)
        raise vs.Error(f"rvrt restore: unknown option {unknown[0]!r}" + (f" (did you mean {close[0]!r}?)" if close
                                                                         else f"; expected {', '.join(DEFAULTS)}"))
    settings = {**DEFAULTS, **options}
    check_types(settings)
    check_clip(clip)
    output_format = checked_format(clip, settings["format"])
    memory = memory_bytes(settings["memory"])
    try:
        # The tile and window are chosen as rvrt-run chooses them, so that the defaults give its frames too.
        prepared = prepare(model, frame=(clip.height, clip.width), frames=clip.num_frames, task=settings["task"],
                           checkpoint=settings["checkpoint"], random_weights=settings["random_weights"],
                           runtime=settings["runtime"], precision=precision_of(settings), device=settings["device"],
                           threads=settings["threads"], sigma=settings["sigma"], memory=memory,
                           allow_unvalidated=settings["allow_unvalidated"], cached_windows=settings["cache_windows"],
                           option="{}={}", **{name: settings[name] for name in TILING_OPTIONS})
    except (ValueError, RuntimeError, OSError) as error:   # bad input, or what this machine lacks (TensorRT, CUDA)
        raise vs.Error(f"rvrt restore: {error}") from None
    core = vs.core.core
    for message in [*prepared.plan_warnings, *prepared.warnings]:
        core.log_message(vs.MESSAGE_TYPE_WARNING, f"rvrt restore: {message}")
    for line in prepared.lines:
        core.log_message(vs.MESSAGE_TYPE_INFORMATION, f"rvrt restore: {line}")
    backend, tiling = prepared.description, prepared.tiling
    restorer = WindowRestorer(clip, backend, tiling, settings["sigma"], settings["cache_windows"],
                              clip_cuts(clip, settings["scene_cuts"]))
    return restorer.output_in(output_format)


def precision_of(settings: dict) -> str | None:
    """precision= (f32, f16, bf16) or fp16=True as the precision it names."""
    precision, fp16 = settings["precision"], settings["fp16"]
    if precision is not None and precision not in PRECISION_NAMES:
        raise vs.Error(f"rvrt restore: precision={precision!r}: expected one of {', '.join(PRECISION_NAMES)}")
    if fp16 and precision not in (None, "f16"):
        raise vs.Error(f"rvrt restore: fp16=True and precision={precision!r} ask for different precisions: give one")
    return PRECISION_NAMES["f16"] if fp16 else PRECISION_NAMES.get(precision)


def memory_bytes(value) -> int | None:
    """memory=: bytes (an int) or a size with its unit ("1.5G"), as rvrt-run's --memory; None: a share of what
    is free."""
    if value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return parse_memory(value)
    raise vs.Error(f"rvrt restore: memory={value!r}: {MEMORY_EXPECTED}, or a number of bytes")


def check_types(settings: dict) -> None:
    for name in INTEGERS:
        value = settings[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise vs.Error(f"rvrt restore: {name}={value!r}: expected an integer")
    for name in FLAGS:
        if not isinstance(settings[name], bool):
            raise vs.Error(f"rvrt restore: {name}={settings[name]!r}: expected True or False")
    for name in STRINGS:
        if settings[name] is not None and not isinstance(settings[name], str):
            raise vs.Error(f"rvrt restore: {name}={settings[name]!r}: expected a string")
    tile = settings["tile"]
    if tile is not None and not (isinstance(tile, numbers.Integral) and not isinstance(tile, bool)) and not (
            isinstance(tile, Sequence) and len(tile) == 2 and all(isinstance(side, numbers.Integral) for side in tile)):
        raise vs.Error(f"rvrt restore: tile={tile!r}: expected an int (a square) or (height, width)")
    sigma = settings["sigma"]
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, numbers.Real)
                              or not 0 <= sigma <= 255):
        raise vs.Error(f"rvrt restore: sigma={sigma!r}: expected a noise level from 0 to 255 (the 8-bit scale)")
    if settings["cache_windows"] < 1:
        raise vs.Error(f"rvrt restore: cache_windows={settings['cache_windows']}: expected at least 1 window")


def check_clip(clip) -> None:
    if not isinstance(clip, vs.VideoNode):
        raise vs.Error(f"rvrt restore: clip: expected a video clip (vs.VideoNode), got {type(clip).__name__}")
    if clip.format is None or clip.format.color_family == vs.UNDEFINED:
        raise vs.Error("rvrt restore: clip has a variable format: expected one constant RGB or YUV format "
                       "(convert it with core.resize first)")
    if not clip.width or not clip.height:
        raise vs.Error("rvrt restore: clip has a variable frame size: expected one constant size (resize it first)")
    reason = unsupported(clip.format)
    if reason:
        raise vs.Error(f"rvrt restore: clip is {clip.format.name}: {reason}")


def unsupported(fmt: vs.VideoFormat) -> str | None:
    """Why ``fmt`` can be neither read nor written by the filter, or None."""
    if fmt.color_family not in (vs.RGB, vs.YUV):
        return "expected an RGB or YUV format (convert it with core.resize first)"
    if fmt.sample_type == vs.INTEGER and not 8 <= fmt.bits_per_sample <= 16:
        return "expected 8-16 bit integer or 32-bit float samples"
    if fmt.sample_type == vs.FLOAT and fmt.bits_per_sample != 32:
        return "expected 8-16 bit integer or 32-bit float samples (convert half floats to RGBS or YUV444PS)"
    return None


def checked_format(clip: vs.VideoNode, value) -> vs.VideoFormat:
    if value is None:
        return vs.core.get_video_format(vs.RGBS)
    try:
        fmt = vs.core.get_video_format(value)
    except (vs.Error, TypeError, ValueError):
        raise vs.Error(f"rvrt restore: format={value!r}: expected a VapourSynth video format, e.g. vs.RGB24 or "
                       f"clip.format") from None
    reason = unsupported(fmt)
    if reason:
        raise vs.Error(f"rvrt restore: format={fmt.name}: {reason}")
    if fmt.color_family == vs.YUV and clip.format.color_family != vs.YUV:
        raise vs.Error(f"rvrt restore: format={fmt.name} for an RGB clip: the conversion needs a matrix the clip does "
                       f"not have; take RGB output and convert it with core.resize(..., matrix=...)")
    return fmt


class WindowCache:
    """The last ``size`` restored windows used, by window index (least recently used dropped first).

    A window that a request in flight still needs is pinned and not dropped: with several requests in
    flight (vspipe, ``frames(prefetch=)``) a later frame can finish first and push out a window an
    earlier one was counting on, which would then be restored again, and the next ones after it. So
    the cache may hold more than ``size`` windows, at most ``size`` plus the pinned ones, until the
    requests in flight that pin the least recently used ones are done.
    """

    def __init__(self, size: int):
        self.size = size
        self.windows: OrderedDict[int, np.ndarray] = OrderedDict()
        self.pins: Counter[int] = Counter()

    def get(self, index: int) -> np.ndarray | None:
        window = self.windows.get(index)
        if window is not None:
            self.windows.move_to_end(index)
        return window

    def put(self, index: int, window: np.ndarray) -> None:
        self.windows[index] = window
        self.windows.move_to_end(index)
        self.trim()

    def pin(self, indices) -> None:
        self.pins.update(indices)

    def unpin(self, indices) -> None:
        self.pins.subtract(indices)
        self.pins = +self.pins
        self.trim()

    def trim(self) -> None:
        # The least recently used window goes first; while a request still needs it, nothing goes (a newer
        # window dropped in its place would be restored again), unless the pinned ones alone are over the bound:
        # a request that never completes (its input failed) must not keep the cache from dropping anything.
        while len(self.windows) > self.size:
            unpinned = [index for index in self.windows if index not in self.pins]
            pinned = len(self.windows) - len(unpinned)
            if not unpinned or (next(iter(self.windows)) in self.pins and len(self.windows) <= self.size + pinned):
                break
            del self.windows[unpinned[0]]


class WindowRestorer:
    """Restores the windows of one clip on demand and makes output frames from them.

    ``rgb`` is the input as RGB24 or RGB48; ``shifted[r]`` is it moved by r frames (frame n of
    ``shifted[r]`` is input frame n + r, clamped at the ends), for every r a window can lie at from
    a frame it holds. A window is restored under one lock, by the first request that finds it
    missing; each request pins the windows it needs from when it is made until its frame is done.
    ``cuts`` (:func:`clip_cuts`): the frames that begin a shot; the windows are rvrt-run's,
    :func:`rvrt_engines.scenes.shot_spans`, so a frame requested anywhere is made from its own shot's
    windows only.
    """

    def __init__(self, clip: vs.VideoNode, backend, tiling, sigma: float | None, cache_windows: int,
                 cuts: Sequence[int] = ()):
        # The matrix a YUV frame was read with is the one its output frame carries, as rvrt-run tags its output.
        self.clip = tagged(clip) if clip.format.color_family == vs.YUV else clip
        opened = contextlib.ExitStack()
        self.backend = opened.enter_context(backend.open())
        weakref.finalize(self, opened.close)
        self.tiling = tiling
        self.scale = backend.config.upscale
        self.to_array = frame_to_array(sigma if backend.task.kind == "denoise" else None)
        self.spans = shot_spans(clip.num_frames, cuts, tiling)
        self.cache = WindowCache(cache_windows)
        self.lock = threading.Lock()
        self.core = vs.core.core
        self.width, self.height = clip.width * self.scale, clip.height * self.scale
        self.rgb = self.read_as_rgb(self.clip)
        reach = max(stop - start for start, stop in self.spans)
        self.shifted = {r: self.shift(r) for r in range(1 - reach, reach)}
        self.blank = self.core.std.BlankClip(clip, width=self.width, height=self.height, format=vs.RGBS, keep=True)

    def read_as_rgb(self, clip: vs.VideoNode) -> vs.VideoNode:
        """RGB24 for 8-bit clips, RGB48 for deeper and float ones (rvrt-run's rgb24 / rgb48), full range."""
        fmt = clip.format
        target = vs.RGB24 if fmt.sample_type == vs.INTEGER and fmt.bits_per_sample == 8 else vs.RGB48
        if fmt.color_family == vs.YUV:
            return self.core.resize.Bicubic(clip, format=target, range=vs.RANGE_FULL)
        # RGB needs no matrix, and zimg refuses an RGB frame with a YUV one (a stale _Matrix, as copied props or
        # ShufflePlanes leave): it is read as what it is.
        clip = self.core.std.SetFrameProps(clip, _Matrix=vs.MATRIX_RGB)
        return self.core.resize.Point(clip, format=target, range=vs.RANGE_FULL)

    def shift(self, r: int) -> vs.VideoNode:
        rgb, count = self.rgb, self.rgb.num_frames
        if r > 0:
            return rgb[r:] + rgb[-1] * r
        if r < 0:
            return rgb[0] * -r + rgb[:count + r]
        return rgb

    def output_in(self, fmt: vs.VideoFormat) -> vs.VideoNode:
        rgbs = self.core.std.FrameEval(self.blank, self.select, clip_src=[self.clip, *self.shifted.values()])
        if fmt.id == vs.RGBS:
            return rgbs
        target = self.core.std.BlankClip(rgbs, format=fmt.id, keep=True)
        if fmt.id in (vs.RGB24, vs.RGB48):
            quantise = to_uint8 if fmt.id == vs.RGB24 else to_uint16
            return self.core.std.ModifyFrame(target, rgbs, functools.partial(quantised, quantise=quantise))
        if fmt.color_family == vs.RGB:
            return self.core.resize.Point(rgbs, format=fmt.id)
        converters = {}

        def to_yuv(n, f):
            props = f.props
            key = (props.get("_Matrix"), props.get("_Range", vs.RANGE_LIMITED), props.get("_ChromaLocation", 0))
            if key not in converters:
                converters[key] = self.core.resize.Bicubic(rgbs, format=fmt.id, matrix=key[0], range=key[1],
                                                           chromaloc=key[2])
            return converters[key]
        return self.core.std.FrameEval(target, to_yuv, prop_src=[self.clip], clip_src=[rgbs])

    def select(self, n: int) -> vs.VideoNode:
        """The node that makes output frame n: requesting input frame n (its properties) and, where a
        window that holds n is not cached, the input frames of the missing windows."""
        windows = covering_windows(self.spans, n)
        with self.lock:
            held = {w: window for w in windows if (window := self.cache.get(w)) is not None}
            self.cache.pin(windows)
        missing = [w for w in windows if w not in held]
        first = self.spans[missing[0]][0] if missing else n
        last = max((self.spans[w][1] for w in missing), default=n)
        sources = [self.clip, *(self.shifted[k - n] for k in range(first, last))]
        return self.core.std.ModifyFrame(self.blank, sources, functools.partial(self.frame, windows=windows,
                                                                                held=held, first=first))

    def frame(self, n: int, f, windows: range, held: dict, first: int) -> vs.VideoFrame:
        frames = f if isinstance(f, list) else [f]
        try:
            restored = dict(held)
            for w in windows:
                if w not in restored:
                    restored[w] = self.window(w, frames[1:], first)
            rgb = blend_frame([restored[w][:, n - self.spans[w][0]] for w in windows])[0]
        except Exception as error:
            raise vs.Error(f"rvrt restore: frame {n}: {type(error).__name__}: {error}") from error
        finally:
            with self.lock:
                self.cache.unpin(windows)
        out = self.core.create_video_frame(vs.RGBS, self.width, self.height)
        for plane in range(3):
            np.copyto(np.asarray(out[plane]), rgb[plane])
        props = out.props
        props.update(frames[0].props)
        for name in YUV_ONLY:
            props.pop(name, None)
        props["_Matrix"] = vs.MATRIX_RGB
        props["_Range"] = vs.RANGE_FULL
        return out

    def window(self, w: int, inputs: list, first: int) -> np.ndarray:
        """Window ``w`` restored, (1, t, 3, H*s, W*s) float32: from the cache, where another request
        restored it meanwhile, else from ``inputs`` (the input frames from ``first`` on)."""
        with self.lock:
            window = self.cache.get(w)
            if window is None:
                began = time.perf_counter()
                start, stop = self.spans[w]
                lq = np.stack([self.to_array(planes_of(inputs[k - first])) for k in range(start, stop)])[None]
                config = self.backend.config
                window = restore_window(self.backend.restore, lq, self.scale, self.tiling, config.min_tile)
                self.cache.put(w, window)
                self.core.log_message(vs.MESSAGE_TYPE_DEBUG,
                                      f"rvrt restore: window {w} (frames {start}-{stop - 1}) restored in "
                                      f"{time.perf_counter() - began:.2f} s; cached windows "
                                      f"{','.join(map(str, self.cache.windows))}")
            return window


SCENE_MARKS = ("_SceneChangePrev", "_SceneChangeNext")


def clip_cuts(clip: vs.VideoNode, scene_cuts) -> list[int]:
    """The frames of ``clip`` that begin a shot, for ``scene_cuts=``: "auto" (the default), the clip's
    own marks; "off", none; a file as rvrt-run's --scene-cuts FILE; or a list of frame numbers. Bad
    values raise ``vs.Error`` naming ``scene_cuts``; what was found is logged.

    "auto" reads ``_SceneChangePrev`` (this frame begins a shot) and ``_SceneChangeNext`` (the next one
    does), as ``misc.SCDetect`` or a user's own marking sets them: where frame 0 has neither, the clip
    is taken as unmarked (one shot, said in a warning); else every frame's properties are read once,
    here, so that the windows of each shot are known before any request (which is what makes seeking
    give the frames of a sequential pass).
    """
    core = vs.core.core
    try:
        if isinstance(scene_cuts, str) and scene_cuts == OFF:
            return []
        if isinstance(scene_cuts, str) and scene_cuts == AUTO:
            return marked_cuts(clip)
        if isinstance(scene_cuts, (str, os.PathLike)):
            cuts = [cut for cut in read_cut_file(scene_cuts, "scene_cuts={!r}") if cut < clip.num_frames]
        else:
            cuts = [cut for cut in checked_list(scene_cuts) if cut < clip.num_frames]
    except ValueError as error:
        raise vs.Error(f"rvrt restore: {error}") from None
    core.log_message(vs.MESSAGE_TYPE_INFORMATION, f"rvrt restore: {describe_cuts(cuts)} (scene_cuts)")
    return cuts


def marked_cuts(clip: vs.VideoNode) -> list[int]:
    core = vs.core.core
    if not any(mark in clip.get_frame(0).props for mark in SCENE_MARKS):
        core.log_message(vs.MESSAGE_TYPE_WARNING,
                         f"rvrt restore: the clip's frames carry no {' or '.join(SCENE_MARKS)}: restored as one "
                         f"shot, so windows may span scene cuts; mark them first with a scene-change filter (misc.SCDetect, "
                         f"scxvid...), "
                         f"or pass scene_cuts=FILE, or scene_cuts='off' to silence this")
        return []
    began = time.perf_counter()
    cuts = set()
    for n, frame in enumerate(clip.frames()):
        props = frame.props
        if props.get("_SceneChangePrev") and n > 0:
            cuts.add(n)
        if props.get("_SceneChangeNext") and n + 1 < clip.num_frames:
            cuts.add(n + 1)
    cuts = sorted(cuts)
    core.log_message(vs.MESSAGE_TYPE_INFORMATION,
                     f"rvrt restore: {describe_cuts(cuts)} (the clip's scene-change marks, read from its "
                     f"{clip.num_frames} frames in {time.perf_counter() - began:.2f} s)")
    return cuts


def planes_of(frame: vs.VideoFrame) -> np.ndarray:
    """An RGB24/RGB48 frame as (H, W, 3) uint8/uint16, as rvrt-run's decoder hands frames over."""
    return np.stack([np.asarray(frame[plane]) for plane in range(3)], axis=-1)


def tagged(clip: vs.VideoNode) -> vs.VideoNode:
    """A YUV clip whose untagged frames (:data:`UNTAGGED`, as ``core.bs.VideoSource`` gives for an untagged
    H.264 file) carry rvrt-run's guess of their matrix (:func:`rvrt_engines.video.colour.guessed_matrix`:
    BT.709 from 1280 wide or above 576 lines, else BT.601, as players take it), so that the filter reads
    such a file as rvrt-run does; the first such frame says so in the log, once."""
    core = vs.core.core
    matrix = guessed_matrix(clip.width, clip.height)
    said = threading.Event()

    def tag(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
        if f.props.get("_Matrix", vs.MATRIX_UNSPECIFIED) not in UNTAGGED:
            return f
        if not said.is_set():
            said.set()
            limited = "" if "_Range" in f.props else ", limited range"
            core.log_message(vs.MESSAGE_TYPE_WARNING,
                             f"rvrt restore: note: input frame {n} is untagged {clip.width}x{clip.height} "
                             f"{clip.format.name} (no _Matrix): read as matrix {MATRIX_NAMES[matrix]}{limited}, "
                             f"rvrt-run's guess by size; if that is wrong, set it with "
                             f"core.std.SetFrameProps(clip, _Matrix=...)")
        out = f.copy()
        out.props["_Matrix"] = matrix
        return out
    return core.std.ModifyFrame(clip, clip, tag)


def quantised(n: int, f: vs.VideoFrame, quantise) -> vs.VideoFrame:
    """An RGBS frame as RGB24 (to_uint8) or RGB48 (to_uint16), the arithmetic of rvrt-run's outputs."""
    rgb = np.stack([np.asarray(f[plane]) for plane in range(3)])
    pixels = quantise(rgb)
    fmt = vs.RGB24 if pixels.dtype == np.uint8 else vs.RGB48
    out = vs.core.core.create_video_frame(fmt, f.width, f.height)
    for plane in range(3):
        np.copyto(np.asarray(out[plane]), pixels[..., plane])
    out.props.update(f.props)
    return out
