"""Colour: how decoded frames become RGB, and how RGB becomes the output's pixels and tags.

Matrix and range decide the YUV <-> RGB conversion; primaries and transfer only tag the
output (the restored pixels stay in the input's colour space, so the input's tags stay true).
Untagged YUV is resolved the way players resolve it: FFmpeg's swscale alone assumes BT.601
for every size, while players (mpv, browsers) take BT.709 for HD, which is how the user saw
the input. The output is tagged with the matrix actually used, so that players do not guess
again from the output's (upscaled) size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import av
import numpy as np

# AVColorSpace values -> the swscale matrices PyAV's reformatter knows.
UNSPECIFIED = 2
MATRIX_NAMES = {1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 9: "bt2020nc", 10: "bt2020c"}
SWSCALE_MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}
LIMITED, FULL = 1, 2
RANGE_NAMES = {LIMITED: "limited", FULL: "full"}


def guessed_matrix(width: int, height: int) -> int:
    """The matrix players assume for untagged YUV (mpv's rule): BT.709 from 1280 wide or above
    576 lines, else BT.601 (smpte170m)."""
    return 1 if width >= 1280 or height > 576 else 6


def is_yuv(pix_fmt: str) -> bool:
    return pix_fmt.startswith(("yuv", "yuvj", "nv", "p01", "p21", "y2", "uyv", "yuy", "yvy", "ayuv", "vuy", "xv"))


def bit_depth(pix_fmt: str) -> int:
    """Bits per component of a pixel format (the largest component)."""
    try:
        return max(component.bits for component in av.VideoFormat(pix_fmt).components)
    except (ValueError, TypeError):
        return 8


@dataclass(frozen=True)
class Colour:
    """AVColor* values: primaries, transfer (trc), matrix, range. ``guessed`` names what was
    resolved for untagged input, for the user."""

    primaries: int = UNSPECIFIED
    trc: int = UNSPECIFIED
    matrix: int = UNSPECIFIED
    range: int = 0
    guessed: str | None = None

    @classmethod
    def of_frame(cls, frame: av.VideoFrame) -> Colour:
        return cls(int(frame.color_primaries), int(frame.color_trc), int(frame.colorspace), int(frame.color_range))

    def resolved(self, pix_fmt: str, width: int, height: int) -> Colour:
        """Matrix and range made explicit for a YUV source (untagged: by size; range: limited,
        full for the yuvj formats)."""
        if not is_yuv(pix_fmt):
            return self
        guesses = []
        colour = self
        if self.matrix not in SWSCALE_MATRIX:
            colour = replace(colour, matrix=guessed_matrix(width, height))
            guesses.append(f"matrix {MATRIX_NAMES[colour.matrix]}")
        if self.range not in RANGE_NAMES:
            colour = replace(colour, range=FULL if pix_fmt.startswith("yuvj") else LIMITED)
            guesses.append(f"{RANGE_NAMES[colour.range]} range")
        if guesses:
            colour = replace(colour, guessed=f"untagged {width}x{height} {pix_fmt} read as " + ", ".join(guesses))
        return colour

    def for_output(self, width: int, height: int) -> Colour:
        """What the output is converted to and tagged with: this colour, with a matrix and a
        range for RGB sources (frame folders) chosen by the output's size."""
        colour = self
        if colour.matrix not in SWSCALE_MATRIX:
            colour = replace(colour, matrix=guessed_matrix(width, height))
        if colour.range not in RANGE_NAMES:
            colour = replace(colour, range=LIMITED)
        return colour

    def describe(self) -> str:
        return (f"matrix {MATRIX_NAMES.get(self.matrix, 'unspecified')}, "
                f"{RANGE_NAMES.get(self.range, 'unspecified')} range")


def rgb_format(depth: int) -> str:
    """The RGB layout frames travel in: 8 bits as uint8, anything deeper as uint16."""
    return "rgb24" if depth <= 8 else "rgb48le"


def frame_to_rgb(frame: av.VideoFrame, colour: Colour, depth: int) -> np.ndarray:
    """Decoded frame -> (H, W, 3) uint8 (depth 8) or uint16 (deeper) RGB, converted with the
    source's matrix and range."""
    if is_yuv(frame.format.name):
        frame = frame.reformat(format=rgb_format(depth), src_colorspace=SWSCALE_MATRIX[colour.matrix],
                               src_color_range=colour.range)
    return frame.to_ndarray(format=rgb_format(depth))


def rgb_to_frame(rgb: np.ndarray, pix_fmt: str, colour: Colour) -> av.VideoFrame:
    """(H, W, 3) uint8/uint16 RGB -> a frame in ``pix_fmt``, converted and tagged with ``colour``."""
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24" if rgb.dtype == np.uint8 else "rgb48le")
    if is_yuv(pix_fmt):
        frame = frame.reformat(format=pix_fmt, dst_colorspace=SWSCALE_MATRIX[colour.matrix],
                               dst_color_range=colour.range, dst_color_trc=colour.trc,
                               dst_color_primaries=colour.primaries)
        frame.colorspace = colour.matrix
    else:
        frame = frame.reformat(format=pix_fmt)
    return frame
