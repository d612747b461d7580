"""Frame sources: video files (lazy decoding with PyAV), folders of images, YUV4MPEG2 on stdin.

Every source yields (H, W, 3) RGB arrays, uint8 for 8-bit input and uint16 (full 16-bit scale)
for deeper input, converted with the input's own matrix and range (:mod:`.colour`), and
describes what a writer needs to write "the same video": rate, timestamps, colour, bit depth,
sample aspect ratio, rotation, metadata and which other streams the file holds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .colour import Colour, bit_depth, frame_to_rgb, rgb_format
from ..wording import count_of
from .errors import VideoInputError

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".y4m"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DEFAULT_FOLDER_RATE = Fraction(25)
STDIN = "-"


@dataclass(frozen=True)
class Segment:
    """The part of the input to restore: from ``start`` seconds (from the first frame), at most
    ``frames`` frames (None: to the end)."""

    start: float = 0.0
    frames: int | None = None

    @property
    def whole(self) -> bool:
        return not self.start and self.frames is None

    def select(self, times: list[float]) -> tuple[int, int]:
        """[first, stop) indices of the frames at ``times`` (seconds, ascending) in the segment."""
        first = next((i for i, t in enumerate(times) if t >= self.start - 1e-6), len(times))
        stop = len(times) if self.frames is None else min(len(times), first + self.frames)
        return first, stop


def natural_key(path: Path):
    """Sort key putting frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def describe_conversion(pix_fmt: str) -> str | None:
    """How a decoded pixel format becomes RGB, when that loses or invents something."""
    target = rgb_format(bit_depth(pix_fmt))
    if pix_fmt.startswith(("gray", "ya", "monob", "monow")):
        return f"{pix_fmt} (grayscale) -> {target}, gray copied to R, G and B" + (
            ", alpha dropped" if pix_fmt.startswith("ya") else "")
    if "a" in pix_fmt.replace("yuv", "").replace("gbr", "") or pix_fmt.startswith(("rgba", "bgra", "argb", "abgr")):
        return f"{pix_fmt} -> {target}, alpha dropped"
    return None


def is_variable_rate(timestamps: list[int], time_base, frame_rate: Fraction) -> bool:
    """True when frame intervals stray from the nominal rate by more than a quarter frame."""
    if len(timestamps) < 3 or not time_base or not frame_rate:
        return False
    seconds = np.diff(np.asarray(timestamps, dtype=np.float64)) * float(time_base)
    return bool(np.abs(seconds - 1 / float(frame_rate)).max() > 0.25 / float(frame_rate))


class FrameSource:
    """What every source describes. ``frame_count`` is None for a stream of unknown length;
    ``timestamps`` (in ``time_base``) None where frames are simply numbered at ``frame_rate``."""

    path: Path | None = None
    width: int
    height: int
    frame_rate: Fraction
    frame_count: int | None
    pix_fmt: str
    depth: int
    colour: Colour = Colour()
    conversion: str | None = None
    variable_frame_rate: bool = False
    timestamps: list[int] | None = None
    time_base: Fraction | None = None
    sample_aspect_ratio: Fraction | None = None
    rotation: int = 0
    metadata: dict | None = None
    stream_metadata: dict | None = None
    segment: Segment = Segment()
    other_streams: tuple[str, ...] = ()


class VideoFile(FrameSource):
    """Frames of a video file, decoded one at a time."""

    def __init__(self, path: Path, segment: Segment = Segment()):
        self.path = path
        self.segment = segment
        try:
            container = av.open(str(path))
        except (av.error.FFmpegError, UnicodeDecodeError) as err:
            raise VideoInputError(f"{path}: not a readable video ({err}); expected a video file FFmpeg can decode "
                                  f"(mp4, mkv, mov, avi, webm ...)") from None
        with container:
            if not container.streams.video:
                raise VideoInputError(f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            self.stream_index = stream.index
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            self.frame_rate = Fraction(stream.average_rate or stream.guessed_rate or DEFAULT_FOLDER_RATE)
            self.time_base = Fraction(stream.time_base)
            self.sample_aspect_ratio = stream.codec_context.sample_aspect_ratio or stream.sample_aspect_ratio
            self.metadata = dict(container.metadata)
            self.stream_metadata = dict(stream.metadata)
            self.other_streams = tuple(f"{s.type} stream {s.index} ({s.codec_context.name if s.codec_context else '?'})"
                                       for s in container.streams if s.index != stream.index)
            try:
                first = next(container.decode(stream))
            except (av.error.FFmpegError, StopIteration):
                raise VideoInputError(f"{path}: the video stream holds no decodable frames") from None
            self.pix_fmt = first.format.name
            self.rotation = int(first.rotation or 0)
            indexed = stream.frames   # what the container's index lists (0 where it has none)
            container.seek(0)
            try:
                timestamps = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
            except av.error.FFmpegError as err:
                raise VideoInputError(f"{path}: the file is damaged ({err}); get a complete copy of it") from None
        if not timestamps or not self.width:
            raise VideoInputError(f"{path}: the video stream holds no decodable frames")
        if indexed > len(timestamps):
            # An mp4 with its index at the front, cut short (an interrupted download or copy): the
            # missing frames leave gaps that would otherwise read as a variable frame rate.
            raise VideoInputError(f"{path}: the file is cut short: its index lists {indexed} frames, only "
                                  f"{len(timestamps)} are in it ({os.path.getsize(path)} bytes); get a complete "
                                  f"copy of it")
        self.depth = bit_depth(self.pix_fmt)
        self.colour = Colour.of_frame(first).resolved(self.pix_fmt, self.width, self.height)
        self.conversion = describe_conversion(self.pix_fmt)
        self.variable_frame_rate = is_variable_rate(timestamps, self.time_base, self.frame_rate)
        first_index, stop = segment.select([float((t - timestamps[0]) * self.time_base) for t in timestamps])
        if first_index == stop:
            raise VideoInputError(f"{path}: --start {segment.start:g} s is past the last frame "
                                  f"({float((timestamps[-1] - timestamps[0]) * self.time_base):.3f} s)")
        self.timestamps = timestamps[first_index:stop]
        self.frame_count = len(self.timestamps)

    def __iter__(self):
        first, last = self.timestamps[0], self.timestamps[-1]
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                if not self.segment.whole:
                    container.seek(first, stream=stream, backward=True)
                for frame in container.decode(stream):
                    if frame.pts is not None and frame.pts < first:
                        continue
                    yield frame_to_rgb(frame, self.colour, self.depth)
                    if frame.pts is not None and frame.pts >= last:
                        break
        except av.error.FFmpegError as err:
            raise VideoInputError(f"{self.path}: decoding failed ({err})") from None


class FrameFolder(FrameSource):
    """Frames of a folder of images in natural order."""

    def __init__(self, path: Path, frame_rate: Fraction = DEFAULT_FOLDER_RATE, segment: Segment = Segment()):
        self.path = path
        self.segment = segment
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
        if not files:
            raise VideoInputError(f"{path}: no frames found; expected image files "
                                  f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.frame_rate = Fraction(frame_rate)
        first, stop = segment.select([i / self.frame_rate for i in range(len(files))])
        if first == stop:
            raise VideoInputError(f"{path}: --start {segment.start:g} s is past the last frame "
                                  f"({count_of(len(files), 'frame')} at {float(self.frame_rate):g} fps)")
        self.files = files[first:stop]
        self.pix_fmt = image_pix_fmt(self.files[0])
        self.depth = bit_depth(self.pix_fmt)
        self.height, self.width = read_image(self.files[0], self.depth).shape[:2]
        self.frame_count = len(self.files)
        self.conversion = describe_conversion(self.pix_fmt)

    def __iter__(self):
        for file in self.files:
            frame = read_image(file, self.depth)
            if frame.shape[:2] != (self.height, self.width):
                raise VideoInputError(f"{file}: frame is {frame.shape[1]}x{frame.shape[0]}, but the folder's first "
                                      f"frame is {self.width}x{self.height}; all frames must have one size")
            yield frame


def image_pix_fmt(path: Path) -> str:
    try:
        with av.open(str(path)) as container:
            return container.streams.video[0].codec_context.pix_fmt or ""
    except av.error.FFmpegError as err:
        raise VideoInputError(f"{path}: not a readable image ({err})") from None


def read_image(path: Path, depth: int = 8) -> np.ndarray:
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            return frame_to_rgb(frame, Colour().resolved(frame.format.name, frame.width, frame.height), depth)
    except (av.error.FFmpegError, StopIteration) as err:
        raise VideoInputError(f"{path}: not a readable image ({err or 'no frame'})") from None


def open_frames(path: str | os.PathLike, frame_rate: Fraction | None = None, segment: Segment = Segment()):
    """A lazy frame source (:class:`FrameSource`) for a video file, a folder of frames or ``-``
    (YUV4MPEG2 on stdin); iterating yields (H, W, 3) uint8 or uint16 RGB frames.
    ``frame_rate`` applies to folders (``--fps``)."""
    if os.fspath(path) == STDIN:
        from .pipe import PipeSource
        return PipeSource(segment=segment)
    path = Path(path)
    if not path.exists():
        raise VideoInputError(f"{path}: no such file or folder; expected a video file or a folder of frames")
    if path.is_dir():
        return FrameFolder(path, frame_rate or DEFAULT_FOLDER_RATE, segment)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise VideoInputError(f"{path}: unsupported container {path.suffix!r}; expected one of "
                              f"{', '.join(sorted(VIDEO_SUFFIXES))} or a folder of frames")
    return VideoFile(path, segment)
