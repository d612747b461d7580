"""Video input and output: lazy decoding with PyAV (FFmpeg), folders of frames, and outputs that
only appear under their final name once complete."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".y4m"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DEFAULT_FOLDER_RATE = Fraction(25)


class VideoInputError(ValueError):
    """Input that cannot be read as a video or a folder of frames."""


def natural_key(path: Path):
    """Sort key putting frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def describe_conversion(pix_fmt: str) -> str | None:
    """How a decoded pixel format becomes RGB, when that loses or invents something."""
    if pix_fmt.startswith(("gray", "ya", "monob", "monow")):
        return f"{pix_fmt} (grayscale) -> rgb24, gray copied to R, G and B" + (
            ", alpha dropped" if pix_fmt.startswith("ya") else "")
    if "a" in pix_fmt.replace("yuv", "").replace("gbr", "") or pix_fmt.startswith(("rgba", "bgra", "argb", "abgr")):
        return f"{pix_fmt} -> rgb24, alpha dropped"
    return None


class VideoFile:
    """Frames of a video file, decoded one at a time: iterate for (H, W, 3) uint8 RGB arrays."""

    def __init__(self, path: Path):
        self.path = path
        try:
            container = av.open(str(path))
        except (av.error.FFmpegError, UnicodeDecodeError) as err:
            raise VideoInputError(f"{path}: not a readable video ({err}); expected a video file FFmpeg can decode "
                                  f"(mp4, mkv, mov, avi, webm ...)") from None
        with container:
            if not container.streams.video:
                raise VideoInputError(f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            self.frame_rate = Fraction(stream.average_rate or stream.guessed_rate or DEFAULT_FOLDER_RATE)
            self.time_base = stream.time_base
            self.pix_fmt = stream.codec_context.pix_fmt or ""
            timestamps = [p.pts for p in container.demux(stream) if p.pts is not None and p.size]
        if not timestamps or not self.width:
            raise VideoInputError(f"{path}: the video stream holds no decodable frames")
        self.frame_count = len(timestamps)
        self.conversion = describe_conversion(self.pix_fmt)
        self.variable_frame_rate = is_variable_rate(sorted(timestamps), self.time_base, self.frame_rate)

    def __iter__(self):
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as err:
            raise VideoInputError(f"{self.path}: decoding failed ({err})") from None


def is_variable_rate(timestamps: list[int], time_base, frame_rate: Fraction) -> bool:
    """True when frame intervals stray from the nominal rate by more than a quarter frame."""
    if len(timestamps) < 3 or not time_base or not frame_rate:
        return False
    seconds = np.diff(np.asarray(timestamps, dtype=np.float64)) * float(time_base)
    return bool(np.abs(seconds - 1 / float(frame_rate)).max() > 0.25 / float(frame_rate))


class FrameFolder:
    """Frames of a folder of images in natural order; iterate for (H, W, 3) uint8 RGB arrays."""

    def __init__(self, path: Path, frame_rate: Fraction = DEFAULT_FOLDER_RATE):
        self.path = path
        self.files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
        if not self.files:
            raise VideoInputError(f"{path}: no frames found; expected image files "
                                  f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        first = read_image(self.files[0])
        self.height, self.width = first.shape[:2]
        self.frame_rate = frame_rate
        self.frame_count = len(self.files)
        self.pix_fmt = image_pix_fmt(self.files[0])
        self.conversion = describe_conversion(self.pix_fmt)
        self.variable_frame_rate = False

    def __iter__(self):
        for file in self.files:
            frame = read_image(file)
            if frame.shape[:2] != (self.height, self.width):
                raise VideoInputError(f"{file}: frame is {frame.shape[1]}x{frame.shape[0]}, but the folder's first "
                                      f"frame is {self.width}x{self.height}; all frames must have one size")
            yield frame


def image_pix_fmt(path: Path) -> str:
    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.pix_fmt or ""


def read_image(path: Path) -> np.ndarray:
    try:
        with av.open(str(path)) as container:
            return next(container.decode(video=0)).to_ndarray(format="rgb24")
    except (av.error.FFmpegError, StopIteration) as err:
        raise VideoInputError(f"{path}: not a readable image ({err or 'no frame'})") from None


def open_frames(path: str | os.PathLike, frame_rate: Fraction | None = None):
    """A lazy frame source: ``width``, ``height``, ``frame_rate``, ``frame_count``,
    ``conversion`` (None or what was converted to RGB), ``variable_frame_rate``; iterating
    yields (H, W, 3) uint8 RGB frames."""
    path = Path(path)
    if not path.exists():
        raise VideoInputError(f"{path}: no such file or folder; expected a video file or a folder of frames")
    if path.is_dir():
        return FrameFolder(path, frame_rate or DEFAULT_FOLDER_RATE)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise VideoInputError(f"{path}: unsupported container {path.suffix!r}; expected one of "
                              f"{', '.join(sorted(VIDEO_SUFFIXES))} or a folder of frames")
    return VideoFile(path)


CODEC_BY_SUFFIX = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".webm": "libvpx-vp9"}
LOSSLESS_CODEC_BY_SUFFIX = {".mp4": "libx264rgb", ".mkv": "ffv1", ".mov": "libx264rgb", ".webm": "libvpx-vp9"}


class VideoWriter:
    """Encodes RGB frames; yuv420p needs even sizes, so odd sizes use yuv444p (no chroma loss)."""

    def __init__(self, path: Path, frame_rate: Fraction, width: int, height: int, codec: str | None, crf: int | None,
                 lossless: bool):
        suffix = path.suffix.lower()
        codec = codec or (LOSSLESS_CODEC_BY_SUFFIX if lossless else CODEC_BY_SUFFIX).get(suffix)
        if codec is None:
            raise ValueError(f"{path}: unsupported output container {suffix!r}; use .mp4, .mkv, .mov, .webm or a "
                             f"folder (no suffix) for PNG frames")
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(codec, rate=frame_rate)
        self.stream.width, self.stream.height = width, height
        options = {}
        if codec == "libx264rgb":
            self.stream.pix_fmt = "rgb24"
            options = {"qp": "0"} if lossless else {"crf": str(crf if crf is not None else 18)}
        elif codec == "ffv1":
            self.stream.pix_fmt = "bgr0"
        elif codec in ("libx264", "libx265"):
            self.stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            options = {"qp": "0"} if lossless else {"crf": str(crf if crf is not None else 18)}
        elif codec == "libvpx-vp9":
            self.stream.pix_fmt = "yuv444p" if lossless else "yuv420p"
            options = {"lossless": "1"} if lossless else {"crf": str(crf if crf is not None else 30), "b": "0"}
        self.stream.options = options

    def write(self, frame: np.ndarray) -> None:
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


class PngFolderWriter:
    def __init__(self, path: Path):
        self.path = path
        self.index = 0

    def write(self, frame: np.ndarray) -> None:
        with av.open(str(self.path / f"{self.index:06d}.png"), mode="w", format="image2") as container:
            stream = container.add_stream("png")
            stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "rgb24"
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        self.index += 1

    def close(self) -> None:
        pass


class open_writer:
    """Context manager writing (H, W, 3) uint8 RGB frames to a video file or a PNG folder.

    Writes to a hidden temporary name beside the output and renames it on a clean exit; on
    any exception (Ctrl-C included) the temporary is removed and the output path untouched.
    """

    def __init__(self, path: str | os.PathLike, frame_rate: Fraction, width: int, height: int, *,
                 codec: str | None = None, crf: int | None = None, lossless: bool = False, overwrite: bool = False):
        self.path = Path(path)
        self.is_folder = self.path.suffix == "" or str(path).endswith(os.sep)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass --overwrite (overwrite=True) to replace it")
        self.args = (Fraction(frame_rate), width, height, codec, crf, lossless)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.is_folder:
            self.partial = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent))
            self.writer = PngFolderWriter(self.partial)
        else:
            handle, name = tempfile.mkstemp(prefix=f".{self.path.stem}.partial-", suffix=self.path.suffix,
                                            dir=self.path.parent)
            os.close(handle)
            self.partial = Path(name)
            self.writer = VideoWriter(self.partial, *self.args)
        return self.writer

    def __exit__(self, exc_type, exc, tb):
        try:
            self.writer.close()
        finally:
            if exc_type is None:
                if self.path.is_dir():
                    shutil.rmtree(self.path)
                self.partial.replace(self.path)
            elif self.partial.is_dir():
                shutil.rmtree(self.partial, ignore_errors=True)
            else:
                self.partial.unlink(missing_ok=True)
        return False
