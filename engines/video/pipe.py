"""YUV4MPEG2 pipes: ``rvrt-run MODEL - -o -`` between two FFmpeg processes.

Reading: the stream is decoded once, in order; its length is unknown until it ends, so the
restore loop finds its temporal windows as frames arrive. Writing: uncompressed YUV (4:2:0,
10-bit for deep input) to standard output; every message goes to standard error.
"""

from __future__ import annotations

import sys
from fractions import Fraction

import av

from .colour import Colour, bit_depth, frame_to_rgb
from .errors import VideoInputError
from .reader import DEFAULT_FOLDER_RATE, FrameSource, Segment, describe_conversion


class PipeSource(FrameSource):
    """YUV4MPEG2 read from a binary stream (stdin), decoded once, in order; length unknown."""

    def __init__(self, stream=None, segment: Segment = Segment()):
        self.segment = segment
        self.frame_count = None
        try:
            self.container = av.open(stream or sys.stdin.buffer, format="yuv4mpegpipe")
            video = self.container.streams.video[0]
            self.frames = self.container.decode(video)
            self.first = next(self.frames)
        except (av.error.FFmpegError, IndexError, StopIteration) as err:
            raise VideoInputError(f"standard input: not a YUV4MPEG2 stream ({err or 'no frame'}); expected e.g. "
                                  f"ffmpeg -i IN -f yuv4mpegpipe - | rvrt-run MODEL - ...") from None
        self.width, self.height = self.first.width, self.first.height
        self.frame_rate = Fraction(video.average_rate or video.guessed_rate or DEFAULT_FOLDER_RATE)
        self.sample_aspect_ratio = video.codec_context.sample_aspect_ratio
        self.pix_fmt = self.first.format.name
        self.depth = bit_depth(self.pix_fmt)
        self.colour = Colour.of_frame(self.first).resolved(self.pix_fmt, self.width, self.height)
        self.conversion = describe_conversion(self.pix_fmt)

    def __iter__(self):
        skip = round(self.segment.start * self.frame_rate)
        remaining = self.segment.frames
        try:
            for index, frame in enumerate(self._all()):
                if index < skip:
                    continue
                if remaining is not None:
                    if remaining == 0:
                        break
                    remaining -= 1
                yield frame_to_rgb(frame, self.colour, self.depth)
        except av.error.FFmpegError as err:
            raise VideoInputError(f"standard input: decoding failed ({err})") from None
        finally:
            self.container.close()

    def _all(self):
        yield self.first
        yield from self.frames
