"""Everything of the input but its pixels: other streams remuxed unchanged, metadata, chapters.

Audio, subtitle and data streams are copied packet for packet (no re-encoding) from a second
reading of the input, muxed in step with the restored video (packets up to the time of each
video packet go first), so the output interleaves as the input did and memory stays flat.
A stream the output container cannot hold is left out with a note naming it and a container
that can. For a segment (``--start``/``--frames``), packets are cut at packet boundaries and
shifted with the video.
"""

from __future__ import annotations

from fractions import Fraction

import av

from .reader import FrameSource

# Tags the muxer writes itself, or that describe the old encode (Matroska statistics tags).
STALE_TAGS = {"encoder", "major_brand", "minor_version", "compatible_brands", "duration", "number_of_frames",
              "number_of_bytes", "bps", "_statistics_writing_app", "_statistics_writing_date_utc",
              "_statistics_tags"}


def kept_tags(tags: dict | None) -> dict:
    return {key: value for key, value in (tags or {}).items()
            if key.lower() not in STALE_TAGS and not key.lower().startswith(("duration-", "bps-", "number_of"))}


class StreamCopy:
    """Remuxes the non-video streams of ``source`` into ``output`` (an open output container
    whose header is not written yet). ``notes`` collects what could not be kept."""

    def __init__(self, source: FrameSource, output: av.container.OutputContainer, suffix: str):
        self.notes: list[str] = []
        self.output = output
        self.input = av.open(str(source.path))
        self.streams = {}
        self.kept: list[str] = []
        for stream in self.input.streams:
            if stream.index == source.stream_index:
                continue
            name = stream.codec_context.codec.canonical_name if stream.codec_context else None
            what = f"{stream.type} stream {stream.index}" + (f" ({name})" if name else "")
            if stream.type == "video":
                self.notes.append(f"{what} not kept: only the first video stream is restored")
            elif stream.type not in ("audio", "subtitle", "data") or not name:
                self.notes.append(f"{what} not kept: PyAV cannot copy {stream.type} streams")
            elif name not in output.supported_codecs:
                self.notes.append(f"{what} not kept: {suffix} cannot hold {name}; {better_container(name)}")
            else:
                copy = output.add_stream_from_template(stream)
                copy.metadata.update(kept_tags(stream.metadata))
                copy.disposition = stream.disposition
                self.streams[stream.index] = copy
                self.kept.append(what)
        self.origin = Fraction(0)
        self.end = None
        if not source.segment.whole:
            self.origin = source.timestamps[0] * source.time_base
            self.end = (source.timestamps[-1] * source.time_base + 1 / source.frame_rate)
        self.packets = self.input.demux(*[self.input.streams[i] for i in self.streams]) if self.streams else iter(())
        self.pending = None

    def copy_until(self, seconds: Fraction | None) -> None:
        """Mux every packet that starts before ``seconds`` of the input timeline (None: all)."""
        while True:
            packet = self.pending or next(self.packets, None)
            self.pending = None
            if packet is None:
                return
            if packet.dts is None and packet.pts is None:
                continue
            time = (packet.pts if packet.pts is not None else packet.dts) * packet.time_base
            if seconds is not None and time > seconds:
                self.pending = packet
                return
            self.mux(packet, time)

    def mux(self, packet: av.Packet, time: Fraction) -> None:
        if self.end is not None:
            ends = time + (packet.duration or 0) * packet.time_base
            if ends <= self.origin or time >= self.end:
                return
            shift = round(self.origin / packet.time_base)
            packet.pts = None if packet.pts is None else packet.pts - shift
            packet.dts = None if packet.dts is None else packet.dts - shift
        packet.stream = self.streams[packet.stream_index]
        self.output.mux(packet)

    def close(self) -> None:
        self.input.close()


def better_container(codec: str) -> str:
    if codec in ("mov_text",):
        return "use .mp4/.mov, or convert the subtitles first (ffmpeg -c:s srt) for .mkv"
    if codec in ("subrip", "ass", "ssa", "webvtt"):
        return "use .mkv to keep it"
    return "use .mkv, which holds almost every codec"


def copy_container_tags(source: FrameSource, output: av.container.OutputContainer, video: av.video.VideoStream):
    """Container and video stream tags (language, title, ...), less what describes the old encode."""
    output.metadata.update(kept_tags(source.metadata))
    video.metadata.update(kept_tags(source.stream_metadata))


def copy_chapters(source: FrameSource, output: av.container.OutputContainer, origin: Fraction) -> None:
    """Chapters of the input, shifted and clipped to a segment."""
    with av.open(str(source.path)) as container:
        chapters = container.chapters()
    kept = []
    for chapter in chapters:
        base = Fraction(chapter["time_base"])
        shift = round(origin / base)
        start, end = chapter["start"] - shift, chapter["end"] - shift
        if end <= 0:
            continue
        kept.append({**chapter, "start": max(start, 0), "end": end})
    if kept:
        output.set_chapters(kept)
