"""Encoders: which codec, pixel format and options an output gets, and the writers that
encode restored RGB frames into a video file, a frame folder or a YUV4MPEG2 pipe.

Choices, checked before any frame is restored (:func:`choose_encoding`, then the real encoder
and muxer opened by the writer):
- bit depth: 8-bit input -> 8-bit output; deeper input -> 10 bits (``--bit-depth 8|10|16``;
  16 is for frame folders, 16-bit PNG).
- lossy: H.264 (libx264) in .mp4/.mov/.m4v/.mkv/.avi, VP9 in .webm (AV1 for 10-bit .webm:
  this FFmpeg's libvpx has no 10-bit formats), 4:2:0 chroma, the profile every player takes.
- lossless: exact RGB (libx264rgb in .mp4/.mov, FFV1 in .mkv/.avi, VP9 RGB in .webm; 10-bit:
  FFV1 or H.265 RGB).
- odd sizes: VP9, AV1, FFV1 and raw video keep them; H.264/H.265 4:2:0 cannot code an odd
  size and PyAV cannot write the container's crop field, so the frame is padded by one
  repeated row/column (a note says so) unless ``--pix-fmt yuv444p`` is asked for.
- ``--preset`` and ``--encoder-option KEY=VALUE``: the encoder's own options as FFmpeg names
  them (``ffmpeg -h encoder=libx264``); one the encoder does not take is refused when it opens.

Identical frames give identical files: the muxers write no random identifiers nor version
strings (``fflags +bitexact``; Matroska otherwise writes a random SegmentUID), and on CPUs with
AVX-512 libx264 runs its AVX2 code (:data:`X264_REPRODUCIBLE`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .colour import Colour, is_yuv, rgb_to_frame
from .errors import VideoOutputError
from .output import PROVENANCE_FILE, frame_name
from .reader import FrameSource
from .streams import StreamCopy, copy_chapters, copy_container_tags

VIDEO_OUTPUT_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v", ".webm", ".avi")
PIPE_SUFFIX = ".y4m"
PIPE_CODEC = "wrapped_avframe"  # what FFmpeg's yuv4mpegpipe muxer takes: raw frames
CRF_RANGES = {"libx264": (0, 51, 18), "libx265": (0, 51, 20), "libvpx-vp9": (0, 63, 30), "libsvtav1": (0, 63, 30)}
LOSSLESS_OPTIONS = {"libx264": {"qp": "0"}, "libx264rgb": {"qp": "0"}, "libx265": {"x265-params": "lossless=1"},
                    "libvpx-vp9": {"lossless": "1"}, "ffv1": {}}
ODD_SIZE_CODECS = {"libvpx-vp9", "libsvtav1", "ffv1", PIPE_CODEC}
CONTAINER_OPTIONS = {"fflags": "+bitexact"}
X264_REPRODUCIBLE = "asm=AVX2,LZCNT,BMI2"
"""libx264's AVX-512 code makes 8-bit 4:2:0 output depend on memory it did not write: two
encodes of the same frames differed whenever the width is not a multiple of 128 (352, 704,
320, 176 px; measured with PyAV 18.1's x264 core 165 on an AVX-512 EPYC). Its AVX2 code is
reproducible; encoding 48 frames took 3.02 s instead of 2.44 s at 704x576 and 5.97 s instead of
6.63 s at 1280x720 (fastest of 5, alternating, on a noisy 2-core machine), a few hundredths of
a second a frame against seconds of restoration. Every AVX-512 CPU has AVX2, LZCNT and BMI2, so
the flags never name an instruction the CPU lacks."""
PROVENANCE_TAG = "comment"   # the one container tag that mp4, mov, mkv, webm and avi all keep


@dataclass
class Encoding:
    """What a video output is encoded with. ``pad``: (columns, rows) added by repetition."""

    codec: str
    pix_fmt: str
    options: dict = field(default_factory=dict)
    pad: tuple[int, int] = (0, 0)
    notes: list[str] = field(default_factory=list)


def default_codec(suffix: str, depth: int, lossless: bool) -> str:
    if suffix == PIPE_SUFFIX:
        return PIPE_CODEC
    if lossless:
        if suffix in (".mkv", ".avi"):
            return "ffv1"
        if suffix == ".webm":
            if depth > 8:
                raise VideoOutputError("--lossless with 10 bits is not available in .webm here; use .mkv (FFV1)")
            return "libvpx-vp9"
        return "libx264rgb" if depth <= 8 else "libx265"
    if suffix == ".webm":
        return "libvpx-vp9" if depth <= 8 else "libsvtav1"
    return "libx264"


def encoder(name: str) -> av.codec.Codec:
    try:
        codec = av.codec.Codec(name, "w")
    except av.codec.codec.UnknownCodecError:
        try:
            av.codec.Codec(name, "r")
            raise VideoOutputError(f"--codec {name}: this FFmpeg build (PyAV's) can decode it but has no "
                                   f"encoder of that name; e.g. libx264, libx265, libvpx-vp9, libsvtav1, ffv1")
        except av.codec.codec.UnknownCodecError:
            pass
        raise VideoOutputError(f"--codec {name}: no such encoder in this FFmpeg build (PyAV's); expected e.g. "
                               f"libx264, libx265, libvpx-vp9, libsvtav1, ffv1") from None
    if codec.type != "video":
        raise VideoOutputError(f"--codec {name}: that is an {codec.type} encoder; expected a video encoder")
    return codec


def format_depth(pix_fmt: str) -> int:
    return max(component.bits for component in av.VideoFormat(pix_fmt).components)


def choose_pix_fmt(codec: av.codec.Codec, depth: int, lossless: bool) -> str:
    formats = [f.name for f in codec.video_formats or []]
    if codec.name == PIPE_CODEC:
        return "yuv420p" if depth <= 8 else "yuv420p10le"
    if lossless:
        rgb = ["rgb24", "bgr0", "gbrp"] if depth <= 8 else ["gbrp10le"]
        chosen = next((name for name in rgb if name in formats), None)
        if chosen is None:
            raise VideoOutputError(f"--lossless: --codec {codec.name} has no {depth}-bit RGB pixel format here "
                                   f"(lossless output keeps RGB exactly); leave --codec to the default")
        return chosen
    wanted = "yuv420p" if depth <= 8 else "yuv420p10le"
    if wanted in formats:
        return wanted
    same_depth = [name for name in formats if is_yuv(name) and format_depth(name) == depth]
    if not same_depth:
        raise VideoOutputError(f"--codec {codec.name} has no {depth}-bit pixel format in this FFmpeg build; "
                               f"use --bit-depth {8 if depth > 8 else 10} or another codec")
    return same_depth[0]


def parse_encoder_options(options: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """``--encoder-option KEY=VALUE`` (repeatable) as a dict; a mapping is taken as it is."""
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return {str(key): str(value) for key, value in options.items()}
    parsed = {}
    for text in options:
        key, equals, value = text.partition("=")
        if not equals or not key.strip():
            raise VideoOutputError(f"--encoder-option {text}: expected KEY=VALUE as FFmpeg takes it, e.g. "
                                   f"tune=film or x264-params=keyint=60")
        if key.strip() in parsed:
            raise VideoOutputError(f"--encoder-option {key.strip()} is given twice")
        parsed[key.strip()] = value
    return parsed


def cpu_has_avx512() -> bool:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return "avx512f" in line.split()
    return False


def reproducible(codec: str, options: dict[str, str]) -> dict[str, str]:
    """``options`` with what makes ``codec``'s output the same for the same frames, unless the user
    chose the setting."""
    if codec != "libx264" or not cpu_has_avx512():
        return options
    params = options.get("x264-params", "")
    if any(part.split("=")[0].strip() in ("asm", "no-asm") for part in params.split(":")):
        return options
    return {**options, "x264-params": f"{params}:{X264_REPRODUCIBLE}" if params else X264_REPRODUCIBLE}


def choose_encoding(suffix: str, width: int, height: int, *, depth: int, codec: str | None = None,
                    crf: int | None = None, lossless: bool = False, pix_fmt: str | None = None,
                    preset: str | None = None,
                    encoder_options: Mapping[str, str] | Sequence[str] | None = None) -> Encoding:
    """The codec, pixel format and options for a video output, or VideoOutputError naming the
    flag at fault. ``suffix``: the container's (``.y4m`` for the stdout pipe). ``preset`` and
    ``encoder_options`` (``KEY=VALUE`` strings or a mapping) go to the encoder as FFmpeg takes
    them; whether the encoder knows them is checked when it opens (:class:`VideoWriter`)."""
    if suffix not in (*VIDEO_OUTPUT_SUFFIXES, PIPE_SUFFIX):
        raise VideoOutputError(f"unsupported output container {suffix!r}; use {', '.join(VIDEO_OUTPUT_SUFFIXES)}, "
                               f"a folder (no suffix) for PNG frames, or - for YUV4MPEG2 on standard output")
    if depth not in (8, 10):
        raise VideoOutputError(f"--bit-depth {depth}: videos are written with 8 or 10 bits here; 16 bits is for "
                               f"frame folders (16-bit PNG)")
    if lossless and crf is not None:
        raise VideoOutputError("--crf sets the quality of lossy output; it does not go with --lossless")
    if suffix == PIPE_SUFFIX and (codec or crf is not None or lossless or preset or encoder_options):
        raise VideoOutputError("-o - writes uncompressed YUV4MPEG2: --codec, --crf, --lossless, --preset and "
                               "--encoder-option do not apply")
    extra = parse_encoder_options(encoder_options)
    if preset is not None and "preset" in extra:
        raise VideoOutputError("--preset and --encoder-option preset=... both set the preset: give one of them")
    if crf is not None and "crf" in extra:
        raise VideoOutputError("--crf and --encoder-option crf=... both set the quality: give one of them")
    chosen = encoder(codec or default_codec(suffix, depth, lossless))
    notes = []
    if codec is None and suffix == ".webm" and depth > 8:
        notes.append("10-bit .webm is written as AV1 (libsvtav1): this FFmpeg's VP9 encoder is 8-bit only")
    if lossless and chosen.name not in LOSSLESS_OPTIONS:
        raise VideoOutputError(f"--lossless: --codec {chosen.name} has no lossless mode here; use "
                               f"{', '.join(LOSSLESS_OPTIONS)} or leave --codec to the default")
    if crf is not None:
        if chosen.name not in CRF_RANGES:
            raise VideoOutputError(f"--crf: --codec {chosen.name} has no CRF quality setting; --crf applies to "
                                   f"{', '.join(CRF_RANGES)}")
        low, high, _ = CRF_RANGES[chosen.name]
        if not low <= crf <= high:
            raise VideoOutputError(f"--crf {crf}: {chosen.name} takes {low} (best) to {high} (smallest)")
    if pix_fmt:
        formats = [f.name for f in chosen.video_formats or []]
        if formats and pix_fmt not in formats:
            raise VideoOutputError(f"--pix-fmt {pix_fmt}: {chosen.name} takes {', '.join(formats)}")
        try:
            format_depth(pix_fmt)
        except ValueError:
            raise VideoOutputError(f"--pix-fmt {pix_fmt}: no such pixel format") from None
    else:
        pix_fmt = choose_pix_fmt(chosen, depth, lossless)
    if lossless:
        options = dict(LOSSLESS_OPTIONS[chosen.name])
    elif chosen.name in CRF_RANGES:
        options = {"crf": str(CRF_RANGES[chosen.name][2] if crf is None else crf)}
        if chosen.name == "libvpx-vp9":
            options["b"] = "0"
    else:
        options = {}
    if lossless and set(extra) & set(options):
        raise VideoOutputError(f"--encoder-option {', '.join(sorted(set(extra) & set(options)))}: --lossless sets "
                               f"it ({', '.join(f'{k}={v}' for k, v in options.items())}); it would undo lossless")
    options.update({"preset": preset} if preset is not None else {}, **extra)
    options = reproducible(chosen.name, options)
    pad = (0, 0)
    chroma = av.VideoFormat(pix_fmt, 4, 4).components[1] if is_yuv(pix_fmt) else None
    odd = (width % 2 if chroma and chroma.width < 4 else 0, height % 2 if chroma and chroma.height < 4 else 0)
    if any(odd) and chosen.name not in ODD_SIZE_CODECS:
        pad = odd
        notes.append(f"{width}x{height} is odd: {chosen.name} {pix_fmt} needs even sizes and PyAV cannot write the "
                     f"container's crop field, so the frames are padded to {width + odd[0]}x{height + odd[1]} by "
                     f"repeating the last column/row (--pix-fmt yuv444p keeps the size, a less common profile)")
    return Encoding(chosen.name, pix_fmt, options, pad, notes)


class VideoWriter:
    """Encodes (H, W, 3) uint8/uint16 RGB frames into ``target`` (a path, or a binary file
    object with ``container_format``), written like ``like`` (its timestamps, colour, sample
    aspect ratio, rotation, tags, chapters and other streams) when given. The encoder and the
    muxer are opened here, so a refused option fails before any frame is restored."""

    def __init__(self, target, encoding: Encoding, frame_rate: Fraction, width: int, height: int, *,
                 like: FrameSource | None = None, colour: Colour | None = None, container_format: str | None = None,
                 suffix: str = "", provenance: dict | None = None):
        self.encoding = encoding
        self.notes = list(encoding.notes)
        self.copy = None
        self.provenance = provenance
        options = {**CONTAINER_OPTIONS, **({"strict": "-1"} if container_format == "yuv4mpegpipe" else {})}
        try:
            self.container = av.open(target, mode="w", format=container_format, options=options)
        except (av.error.FFmpegError, ValueError) as err:
            raise VideoOutputError(f"cannot create the output ({err})") from None
        try:
            self._setup(frame_rate, width, height, like, colour, suffix)
        except BaseException:
            self.abort()
            raise

    def _setup(self, frame_rate, width, height, like, colour, suffix):
        encoding = self.encoding
        if encoding.codec not in self.container.supported_codecs:
            raise VideoOutputError(f"--codec {encoding.codec}: a {suffix or self.container.format.name} file cannot "
                                   f"hold it; use .mkv, which holds almost every codec")
        self.stream = stream = self.container.add_stream(encoding.codec, rate=frame_rate)
        stream.width, stream.height = width + encoding.pad[0], height + encoding.pad[1]
        stream.pix_fmt = encoding.pix_fmt
        stream.options = dict(encoding.options)   # PyAV adds the container's options to this dict
        self.frame_rate = Fraction(frame_rate)
        timestamps = like.timestamps if like is not None else None
        if timestamps:
            self.time_base = like.time_base
            origin = 0 if like.segment.whole else timestamps[0]
            self.timestamps = [t - origin for t in timestamps]
        else:
            self.time_base = 1 / self.frame_rate
            self.timestamps = None
        stream.codec_context.time_base = self.time_base
        self.colour = (colour or Colour()).for_output(width, height)
        context = stream.codec_context
        context.color_primaries, context.color_trc = self.colour.primaries, self.colour.trc
        if is_yuv(encoding.pix_fmt):
            context.colorspace, context.color_range = self.colour.matrix, self.colour.range
        if like is not None:
            if like.sample_aspect_ratio:
                stream.codec_context.sample_aspect_ratio = like.sample_aspect_ratio
            if like.rotation:
                stream.set_display_rotation(like.rotation)
            if like.path is not None and like.metadata is not None:
                copy_container_tags(like, self.container, stream)
                self.copy = StreamCopy(like, self.container, suffix)
                self.notes += self.copy.notes
                copy_chapters(like, self.container, self.copy.origin)
            elif like.other_streams:
                self.notes.append(f"{', '.join(like.other_streams)} not kept: {suffix or 'this output'} "
                                  f"holds video only")
        if self.provenance is not None and self.container.format.name != "yuv4mpegpipe":
            earlier = self.container.metadata.get(PROVENANCE_TAG)
            if earlier and not earlier.startswith(PROVENANCE_MARK):
                self.notes.append(f"the input's {PROVENANCE_TAG} tag ({earlier[:40]}) is replaced by the record of "
                                  f"how this output was made")
            self.container.metadata[PROVENANCE_TAG] = provenance_text(self.provenance)
        try:
            self.container.start_encoding()
        except av.error.FFmpegError as err:
            hardware = any(tag in encoding.codec for tag in ("nvenc", "qsv", "vaapi", "amf", "videotoolbox", "v4l2m2m"))
            copied = (f" or one of the copied streams ({', '.join(self.copy.kept)})"
                      if self.copy and self.copy.kept else "")
            raise VideoOutputError(
                f"--codec {encoding.codec} ({encoding.pix_fmt}){copied} could not be opened ({describe(err)}); "
                + ("it is a hardware encoder and needs its GPU and driver on this machine" if hardware else
                   "check --codec, --crf, --preset, --encoder-option, --pix-fmt, --bit-depth and the output "
                   "suffix")) from None
        # FFmpeg leaves the options an encoder does not know in the dictionary instead of refusing them.
        unknown = sorted(set(stream.codec_context.options) & set(encoding.options))
        if unknown:
            flags = ", ".join("--preset" if key == "preset" else f"--encoder-option {key}" for key in unknown)
            raise VideoOutputError(f"{flags}: {encoding.codec} has no such option (its options: ffmpeg -h "
                                   f"encoder={encoding.codec})")
        self.index = 0

    def write(self, rgb: np.ndarray) -> None:
        if any(self.encoding.pad):
            rgb = np.pad(rgb, ((0, self.encoding.pad[1]), (0, self.encoding.pad[0]), (0, 0)), mode="edge")
        frame = rgb_to_frame(rgb, self.encoding.pix_fmt, self.colour)
        frame.pts = self.timestamps[self.index] if self.timestamps else self.index
        frame.time_base = self.time_base
        self.index += 1
        self._mux(self.stream.encode(frame))

    def _mux(self, packets) -> None:
        for packet in packets:
            if self.copy is not None and packet.pts is not None:
                self.copy.copy_until(packet.pts * packet.time_base + self.copy.origin)
            self.container.mux(packet)

    def close(self) -> None:
        self._mux(self.stream.encode())
        if self.copy is not None:
            self.copy.copy_until(None)
            self.copy.close()
        self.container.close()

    def abort(self) -> None:
        if self.copy is not None:
            self.copy.close()
        try:
            self.container.close()
        except (av.error.FFmpegError, ValueError, OSError):
            pass


PROVENANCE_MARK = '{"made_by": "rvrt-deploy'


def provenance_text(provenance: dict) -> str:
    """The record as one JSON line, first naming what wrote it (so a reader can tell it from a
    comment of the input)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        made_by = f"rvrt-deploy {version('rvrt-deploy')}"
    except PackageNotFoundError:
        made_by = "rvrt-deploy"
    return json.dumps({"made_by": made_by, **provenance}, sort_keys=False)


def read_provenance(path: str | Path) -> dict | None:
    """The record an output of rvrt-deploy carries: a video's container tag, or a frame folder's
    :data:`.output.PROVENANCE_FILE`; None where there is none."""
    path = Path(path)
    try:
        if path.is_dir():
            return json.loads((path / PROVENANCE_FILE).read_text())
        with av.open(str(path)) as container:
            # Matroska spells its tags in capitals.
            text = next((value for key, value in container.metadata.items() if key.lower() == PROVENANCE_TAG), "")
        return json.loads(text) if text.startswith(PROVENANCE_MARK) else None
    except (OSError, ValueError, av.error.FFmpegError):
        return None


def describe(err: av.error.FFmpegError) -> str:
    return str(err.strerror or err).split("; last error log:")[0] + (
        f": {err.log[2].strip()}" if getattr(err, "log", None) else "")


class PngFolderWriter:
    """Frames as 000000.png, 000001.png ... (:data:`.output.FRAME_NAME`): 8-bit RGB, or 16-bit
    RGB for a bit depth above 8."""

    def __init__(self, folder, depth: int = 8, provenance: dict | None = None):
        if depth not in (8, 10, 16):
            raise VideoOutputError(f"--bit-depth {depth}: expected 8, 10 or 16")
        self.folder = folder
        if provenance is not None:
            (Path(folder) / PROVENANCE_FILE).write_text(provenance_text(provenance) + "\n")
        self.pix_fmt = "rgb24" if depth <= 8 else "rgb48be"
        self.notes = []
        self.index = 0

    def write(self, rgb: np.ndarray) -> None:
        with av.open(str(self.folder / frame_name(self.index)), mode="w", format="image2") as container:
            stream = container.add_stream("png")
            stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], self.pix_fmt
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24" if rgb.dtype == np.uint8 else "rgb48le")
            if self.pix_fmt == "rgb48be" and rgb.dtype == np.uint8:
                frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint16) * 257, format="rgb48le")
            for packet in [*stream.encode(frame), *stream.encode()]:
                container.mux(packet)
        self.index += 1

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

