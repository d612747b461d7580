"""The two kinds of user error of the video layer: input that cannot be read, output that cannot be written."""


class VideoInputError(ValueError):
    """Input that cannot be read as a video, a folder of frames or a YUV4MPEG2 stream."""


class VideoOutputError(ValueError):
    """An output that cannot or must not be written (path, container, codec, quality, bit depth)."""
