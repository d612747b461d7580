"""Scene cuts: where the shots of a video begin, so that no temporal window spans two shots.

RVRT carries features through a whole temporal window, both ways, by optical flow; across a hard
cut the features of one shot flow into the other ("the previous frame imprints onto the next
one"). The official script, vsrvrt and vs-mlrt ignore cuts. Here each shot is restored as a video
of its own, with the window and overlap rules of :func:`rvrt.window_spans` inside it, so a frame
is the frame its shot alone would give.

Where the cuts come from (``scene_cuts``):

- ``"auto"``: FFmpeg's ``scdet`` filter, through a PyAV filter graph fed the decoded frames as they
  flow to the network (no second decode; files, folders, pipes and streams alike). Its score is
  FFmpeg's: the mean absolute frame difference, less the previous one's, in percent; a frame
  scoring at least the threshold (FFmpeg's default, 10) starts a shot. Like FFmpeg's ``select``
  score it compares a frame with the one before only, so two cuts on consecutive frames (a
  one-frame shot) are found only when the differences across them are unlike.
- a file: the first frame of each shot, one frame number a line (``#`` comments, blank lines and a
  leading 0 allowed), or PySceneDetect's scene-list CSV (``scenedetect list-scenes``; its "Start
  Frame" column counts from 1). Frame numbers are the input's: a segment (``--start``) takes the
  cuts inside it.
- a list of frame numbers, counted in the frames restored (0 = the first restored);
- ``"off"``: no cuts, the official behaviour.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import numpy as np

from rvrt import Tiling, window_spans

from .wording import count_of

AUTO, OFF = "auto", "off"
THRESHOLD = 10.0
"""scdet's own default threshold (percent)."""

EXPECTED = ("expected auto, off, or a file listing the first frame of each shot (one frame number a line, or "
            "PySceneDetect's scene-list CSV)")

StartsShot = Callable[[int, np.ndarray], bool]
"""(index, frame) -> whether frame ``index`` (an (H, W, 3) uint8/uint16 RGB frame) begins a shot;
called once for every frame, in order, as the frames are read."""


class SceneDetector:
    """FFmpeg's ``scdet`` on frames handed over one at a time, in order (a :data:`StartsShot`).

    scdet decides on a frame as soon as it has it (it holds the previous frame, nothing ahead), so
    a cut is known when its first frame is read. ``seconds``: the time spent in it so far.
    """

    def __init__(self, threshold: float = THRESHOLD):
        self.threshold = threshold
        self.graph: av.filter.Graph | None = None
        self.seconds = 0.0

    def __call__(self, index: int, frame: np.ndarray) -> bool:
        began = time.perf_counter()
        if self.graph is None:
            self.graph = scdet_graph(frame.shape[1], frame.shape[0], self.threshold)
        # 16-bit frames go in as their top 8 bits: one detector, one threshold for every depth.
        pixels = frame if frame.dtype == np.uint8 else (frame >> 8).astype(np.uint8)
        video = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        video.pts = index
        self.graph.push(video)
        # scdet tags the frames whose score reaches the threshold with their time: its own decision.
        cut = "lavfi.scd.time" in self.graph.pull().metadata
        self.seconds += time.perf_counter() - began
        return cut and index > 0


def scdet_graph(width: int, height: int, threshold: float) -> av.filter.Graph:
    graph = av.filter.Graph()
    source = graph.add_buffer(width=width, height=height, format="rgb24", time_base=Fraction(1, 25))
    detector = graph.add("scdet", f"threshold={threshold:g}")
    sink = graph.add("buffersink")
    source.link_to(detector)
    detector.link_to(sink)
    graph.configure()
    return graph


def listed(cuts: Sequence[int]) -> StartsShot:
    """The rule of a known cut list."""
    starts = frozenset(cuts)
    return lambda index, frame: index in starts


OPTION = "--scene-cuts {}"
"""How messages name the value given: rvrt-run's flag; the VapourSynth filter's is "scene_cuts={!r}"."""


def read_cut_file(path: str | os.PathLike, option: str = OPTION) -> list[int]:
    """The first frames of the shots that ``path`` lists, ascending, without 0 (the input's own
    numbering); ValueError in one line naming the value as ``option`` does, and what was expected."""
    where = option.format(os.fspath(path))
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file; {EXPECTED}") from None
    except IsADirectoryError:
        raise ValueError(f"{where}: a folder, not a file; {EXPECTED}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{where}: cannot be read ({error}); {EXPECTED}") from None
    rows = list(enumerate(csv.reader(io.StringIO(text)), 1))
    header = next(((number, [cell.strip().lower() for cell in row]) for number, row in rows
                   if "start frame" in (cell.strip().lower() for cell in row)), None)
    if header is not None:
        # PySceneDetect's scene list: an optional "Timecode List:" row, the header, one row a scene.
        column = header[1].index("start frame")
        starts = [(number, row[column] if column < len(row) else "", 1) for number, row in rows
                  if number > header[0] and any(cell.strip() for cell in row)]
    else:
        starts = [(number, line.strip(), 0) for number, line in enumerate(text.splitlines(), 1)
                  if line.strip() and not line.lstrip().startswith("#")]
    if not starts:
        raise ValueError(f"{where}: lists no frame; {EXPECTED}")
    frames = set()
    for number, cell, first in starts:
        try:
            frame = int(cell.strip())
        except ValueError:
            frame = None
        if frame is None or frame < first:
            what = "a frame number" if first == 0 else "a Start Frame (PySceneDetect counts from 1)"
            raise ValueError(f"{where}: line {number}: {cell.strip()!r} is not {what}; {EXPECTED}")
        frames.add(frame - first)
    return sorted(frames - {0})


def checked_list(cuts, option: str = "scene_cuts={!r}") -> list[int]:
    """A list of cut frames as given from Python, as a sorted list without 0; ValueError unless
    every item is a frame number >= 0."""
    if not isinstance(cuts, Sequence) or not all(
            isinstance(cut, (int, np.integer)) and not isinstance(cut, bool) and cut >= 0 for cut in cuts):
        raise ValueError(f"{option.format(cuts)}: {EXPECTED}, or a list of frame numbers")
    return sorted({int(cut) for cut in cuts} - {0})


def segment_first_frame(source) -> int:
    """The input's index of a frame source's first frame: 0, or where ``--start`` put it, by the
    source's own rule (a stream skips round(start * rate) frames; files and folders begin at the
    first frame at or after start, on their constant rate: variable rates are refused)."""
    if source.segment.whole:
        return 0
    rate = source.frame_rate
    if source.path is None:
        return round(source.segment.start * rate)
    return math.ceil((source.segment.start - 1e-6) * rate)


def cut_rule(scene_cuts, source, option: str = OPTION) -> tuple[StartsShot | None, list[int] | None, list[str]]:
    """(rule, cuts known up front, notes) for ``scene_cuts`` on an open frame source: the rule is
    None for "off", a :class:`SceneDetector` for "auto"; a file's cuts are moved to the source's
    numbering (a segment keeps those inside it). Bad values raise ValueError in one line."""
    if isinstance(scene_cuts, str) and scene_cuts in (AUTO, OFF):
        return (SceneDetector() if scene_cuts == AUTO else None), ([] if scene_cuts == OFF else None), []
    if isinstance(scene_cuts, (str, os.PathLike)):
        first, count = segment_first_frame(source), source.frame_count
        cuts = [cut - first for cut in read_cut_file(scene_cuts, option) if cut > first]
        inside = [cut for cut in cuts if count is None or cut < count]
        notes = []
        if len(inside) < len(cuts) and source.segment.whole:
            # Past the end of a whole input: the list was most likely made for another video.
            notes.append(f"note: {option.format(os.fspath(scene_cuts))}: "
                         f"{count_of(len(cuts) - len(inside), 'cut')} at or past the end ignored (from frame "
                         f"{cuts[len(inside)]}; the input has {count_of(count, 'frame')})")
        return listed(inside), inside, notes
    cuts = checked_list(scene_cuts, "scene_cuts={!r}")
    return listed(cuts), cuts, []


def shot_spans(count: int, cuts: Sequence[int], tiling: Tiling) -> list[tuple[int, int]]:
    """The temporal windows [start, stop) of ``count`` frames whose shots begin at ``cuts``: each shot's
    :func:`rvrt.window_spans`, moved to where it begins; starts and stops both ascend."""
    bounds = [0, *sorted(cut for cut in set(cuts) if 0 < cut < count), count]
    return [(begin + start, begin + stop) for begin, end in pairwise(bounds)
            for start, stop in window_spans(end - begin, tiling)]


def describe_cuts(cuts: Sequence[int], shown: int = 20) -> str:
    """"3 scene cuts, at frames 12, 40, 77" (the first ``shown`` of them), or "no scene cuts"."""
    if not cuts:
        return "no scene cuts"
    where = ", ".join(map(str, cuts[:shown])) + (f" and {len(cuts) - shown} more" if len(cuts) > shown else "")
    return f"{count_of(len(cuts), 'scene cut')}, at frame{'s' if len(cuts) > 1 else ''} {where}"
