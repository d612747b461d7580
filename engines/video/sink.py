"""``open_writer``: the one way outputs are written: checked, staged under a temporary name,
opened (encoder and muxer) before any frame exists, renamed when complete, removed otherwise."""

from __future__ import annotations

import os
import sys
from fractions import Fraction
from pathlib import Path

from .colour import Colour
from .errors import VideoOutputError
from .output import PIPE, Staging, check_output_path, is_folder_output
from .reader import FrameSource
from .writer import PIPE_SUFFIX, PngFolderWriter, VideoWriter, choose_encoding


def default_depth(like: FrameSource | None, folder: bool) -> int:
    """8 bits for 8-bit input; 16-bit PNG or 10-bit video for deeper input."""
    if like is None or like.depth <= 8:
        return 8
    return 16 if folder else 10


class open_writer:
    """Context manager writing (H, W, 3) uint8/uint16 RGB frames to ``path``: a video file, a
    frame folder (no suffix) or ``-`` (YUV4MPEG2 on stdout).

    ``like``: the input; the output then keeps its timestamps, colour, bit depth (unless
    ``bit_depth``), sample aspect ratio, rotation, tags, chapters and other streams.
    ``inputs``: further paths the output must not replace. Entering checks the path, stages the
    temporary and opens the encoder and muxer; leaving renames on success and removes the
    temporary on any exception (Ctrl-C, SIGTERM through :func:`.output.signals_as_exceptions`).
    ``notes``: what the output could not keep, known once entered. ``preset`` and
    ``encoder_options`` (``KEY=VALUE`` strings, as ``--encoder-option`` gives them, or a mapping)
    go to the encoder as FFmpeg takes them. ``provenance``: how the output was made (task,
    weights, runtime, precision ...), recorded as JSON in the container's ``comment`` tag or in
    a frame folder's ``rvrt-provenance.json`` (:func:`.writer.read_provenance` reads either back).
    """

    def __init__(self, path: str | os.PathLike, frame_rate: Fraction, width: int, height: int, *,
                 codec: str | None = None, crf: int | None = None, lossless: bool = False, overwrite: bool = False,
                 like: FrameSource | None = None, bit_depth: int | None = None, pix_fmt: str | None = None,
                 inputs: tuple = (), preset: str | None = None, encoder_options=None,
                 provenance: dict | None = None):
        self.pipe = os.fspath(path) == PIPE
        self.path = Path(path)
        self.folder = is_folder_output(path)
        sources = tuple(inputs) + ((like.path,) if like is not None and like.path is not None else ())
        check_output_path(path, inputs=sources, overwrite=overwrite)
        self.like = like
        self.frame_rate = Fraction(frame_rate)
        self.size = (width, height)
        self.depth = bit_depth or default_depth(like, self.folder)
        self.encoding = None
        if not self.folder:
            suffix = PIPE_SUFFIX if self.pipe else self.path.suffix.lower()
            self.encoding = choose_encoding(suffix, width, height, depth=self.depth, codec=codec, crf=crf,
                                            lossless=lossless, pix_fmt=pix_fmt, preset=preset,
                                            encoder_options=encoder_options)
        elif codec or crf is not None or pix_fmt or preset or encoder_options:
            raise_folder_flags(codec, crf, pix_fmt, preset, encoder_options)
        self.provenance = provenance
        self.staging = None
        self.writer = None

    @property
    def notes(self) -> list[str]:
        return self.writer.notes if self.writer else []

    def __enter__(self):
        colour = self.like.colour if self.like is not None else Colour()
        if self.pipe:
            self.writer = VideoWriter(sys.stdout.buffer, self.encoding, self.frame_rate, *self.size, like=self.like,
                                      colour=colour, container_format="yuv4mpegpipe", suffix="YUV4MPEG2")
            return self.writer
        self.staging = Staging(self.path, self.folder)
        try:
            if self.folder:
                self.writer = PngFolderWriter(self.staging.temporary, self.depth, self.provenance)
            else:
                self.writer = VideoWriter(str(self.staging.temporary), self.encoding, self.frame_rate, *self.size,
                                          like=self.like, colour=colour, suffix=self.path.suffix.lower(),
                                          provenance=self.provenance)
        except BaseException:
            self.staging.discard()
            raise
        if self.like is not None and self.like.other_streams and self.folder:
            self.writer.notes.append(f"{', '.join(self.like.other_streams)} not kept: a frame folder holds frames only")
        return self.writer

    def validate(self) -> None:
        """Open the real encoder and muxer on a temporary output and remove it again: every
        choice is checked before the model is loaded. Not for ``-`` (the header would reach stdout)."""
        if self.pipe:
            return
        self.__enter__()
        self._discard()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.writer.close()
            except BaseException:
                self._discard()
                raise
            if self.staging:
                self.staging.commit()
        else:
            self._discard()
        return False

    def _discard(self) -> None:
        self.writer.abort()
        if self.staging:
            self.staging.discard()


def raise_folder_flags(codec, crf, pix_fmt, preset=None, encoder_options=None):
    given = [flag for flag, value in (("--codec", codec), ("--crf", crf is not None), ("--pix-fmt", pix_fmt),
                                      ("--preset", preset), ("--encoder-option", encoder_options)) if value]
    raise VideoOutputError(f"{', '.join(given)}: the output is a frame folder (PNG, lossless); give a video file "
                           f"name (.mp4, .mkv ...) to encode a video")
