"""The video layer of ``rvrt-run``: reading frames (files, folders, YUV4MPEG2 on stdin) with
their colour and bit depth, and writing outputs that keep everything but the pixels, never
destroy a file and fail before any work when a choice cannot work.

- :mod:`.reader`, :mod:`.pipe`: frame sources; :mod:`.colour`: RGB conversion and tags;
- :mod:`.writer`: codec/pixel-format choice and encoders; :mod:`.streams`: audio, subtitles,
  data, tags and chapters copied unchanged;
- :mod:`.output`: overwrite rules, temporary names; :mod:`.sink`: ``open_writer``;
  SIGTERM and SIGHUP unwind like Ctrl-C within :func:`rvrt_engines.signals.signals_as_exceptions`.
"""

from ..signals import Terminated, signals_as_exceptions
from .errors import VideoInputError, VideoOutputError
from .output import FRAME_NAME, check_output_path, is_folder_output
from .reader import FrameSource, Segment, natural_key, open_frames
from .sink import open_writer

__all__ = ["FRAME_NAME", "FrameSource", "Segment", "Terminated", "VideoInputError", "VideoOutputError",
           "check_output_path", "is_folder_output", "natural_key", "open_frames", "open_writer",
           "signals_as_exceptions"]
