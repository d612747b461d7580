"""Scene cuts (rvrt_engines.scenes): no temporal window spans a cut, so each shot comes out as that shot
restored alone; found by FFmpeg's scdet as the frames are read (files, folders, pipes), or read from a
list (one number a line, PySceneDetect's CSV); segments and Ray windows cut the same way."""

import io
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest

from rvrt import Tiling, window_spans
from rvrt_engines.backends import load_backend
from rvrt_engines.restore import WindowFeed, restore_video, to_uint8
from rvrt_engines.scenes import (SceneDetector, cut_rule, describe_cuts, read_cut_file, segment_first_frame,
                                 shot_spans)
from rvrt_engines.synthetic import PHOTOS, moving_photo_frames, write_video
from rvrt_engines.video import Segment, open_frames
from rvrt_engines.video.pipe import PipeSource
from test_serving import caches  # noqa: F401 (a fixture vs_env needs)
from test_vapoursynth import checked, run, vs_env  # noqa: F401 (vs_env: a fixture)

DATA = Path(__file__).parent / "data"
SIZE = 48                                    # one 48 px tile of the tiny SR model
OPTIONS = dict(window=4, window_overlap=2, tile=48, tile_overlap=16)     # spans (0, 4), (2, 6), (4, 8) ...


def shots_clip(lengths, seed=0):
    """(T, SIZE, SIZE, 3) uint8: one pan over a different photograph per shot, hard cuts between."""
    return np.concatenate([moving_photo_frames(length, SIZE, SIZE, image=PHOTOS[(seed + k) % len(PHOTOS)],
                                               seed=seed + k) for k, length in enumerate(lengths)])


@pytest.fixture(scope="module")
def backend(tiny_export):
    """The tiny SR export on ONNX Runtime, as rvrt-run serves it (48 px tiles, batches of 2)."""
    return load_backend(tiny_export("sr")[2], threads=2)


def decoded(path):
    return np.stack(list(open_frames(path)))


def restored(backend, source, out, **options):
    summary = restore_video(backend, source, out, **OPTIONS, **options)
    return decoded(out), summary


def restored_alone(backend, frames, base, bounds):
    """Each shot [bounds[k], bounds[k+1]) of ``frames`` restored as a video of its own, concatenated."""
    pieces = []
    for index, (begin, end) in enumerate(zip(bounds, bounds[1:])):
        folder = base / f"shot{index}"
        write_video(folder, frames[begin:end])
        pieces.append(restored(backend, folder, base / f"shot{index}-out", scene_cuts="off")[0])
    return np.concatenate(pieces)


def levels(a, b):
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("count, window, overlap, cuts", [
    (12, 4, 2, [5]), (12, 4, 2, [4]), (12, 4, 2, [6]), (12, 4, 2, [5, 6]), (12, 4, 2, [1]), (12, 4, 2, [11]),
    (12, 4, 2, [1, 2, 3, 10, 11]), (20, 6, 2, [6, 7, 13]), (9, 0, 2, [3, 4]), (16, 8, 5, [9]), (7, 4, 0, [])])
def test_streamed_windows_are_each_shots_own_windows(count, window, overlap, cuts):
    """The feed's spans, found as frames arrive, are each shot's window_spans moved to it; each known
    before the window before it is handed out (blending needs the next start); none spans a cut."""
    tiling = Tiling(window=window, window_overlap=overlap)
    frames = (np.full((2, 2, 3), i, np.uint8) for i in range(count))
    feed = WindowFeed(frames, lambda f: f[0, 0, :1].astype(np.float32), tiling, lambda i, f: i in cuts)
    windows, known = [], []
    for window_frames in feed.windows():
        windows.append(window_frames[0, :, 0].tolist())
        known.append(len(feed.spans))
    spans = shot_spans(count, cuts, tiling)
    assert feed.spans == spans and feed.cuts == cuts and feed.count == count
    assert all(k >= min(i + 2, len(spans)) for i, k in enumerate(known))
    assert windows == [list(map(float, range(start, stop))) for start, stop in spans]
    bounds = [0, *cuts, count]
    for start, stop in spans:
        assert any(a <= start and stop <= b for a, b in zip(bounds, bounds[1:]))
    if not cuts:
        assert spans == window_spans(count, tiling)


@pytest.fixture(scope="module")
def hard_cut(backend, tmp_path_factory):
    """(mp4 with a hard cut at frame 5 of 12, its decoded frames, the default restore's frames, summary, statuses)."""
    base = tmp_path_factory.mktemp("hard-cut")
    video = base / "cut.mp4"
    write_video(video, shots_clip([5, 7]))                  # libx264 through PyAV: a real lossy file
    statuses = []
    cut, summary = restored(backend, video, base / "auto", progress=statuses.append)
    return video, decoded(video), cut, summary, statuses


def test_a_hard_cut_in_an_mp4_is_found_and_each_shot_equals_that_shot_restored_alone(backend, hard_cut, tmp_path):
    video, frames, cut, summary, statuses = hard_cut
    assert summary.cuts == [5] and describe_cuts(summary.cuts) == "1 scene cut, at frame 5"
    alone = restored_alone(backend, frames, tmp_path, [0, 5, 12])
    assert cut.shape == alone.shape == (12, 4 * SIZE, 4 * SIZE, 3)
    assert np.array_equal(cut, alone)                        # same windows, same arithmetic: bit for bit
    # The meter planned one shot of 12 frames, and planned again at the cut: (0, 4), (1, 5); (5, 9), (7, 11), (8, 12).
    assert statuses[-1].work_total == sum(b - a for a, b in shot_spans(12, [5], Tiling(window=4)))
    official, off = restored(backend, video, tmp_path / "off", scene_cuts="off")
    assert off.cuts == []
    # Across the cut the recurrence carries one shot into the other: the frames next to it change.
    assert levels(official[4], alone[4]) > 1 and levels(official[5], alone[5]) > 1
    assert np.array_equal(official[0], alone[0])             # in window (0, 4) alone either way


def test_ray_windows_respect_the_cuts_as_one_process_does(backend, hard_cut, tmp_path):
    """rvrt-run --ray and rvrt-batch: Ray workers restore the windows the driver's feed cuts (on a
    local cluster of the runner's own, even where another runs on this machine)."""
    from rvrt_cluster import RayWindows

    video, _, cut, _, _ = hard_cut
    with RayWindows(backend, workers=1, threads=2) as pool:
        on_ray, summary = restored(backend, video, tmp_path / "ray", windows=pool)
    assert summary.cuts == [5] and np.array_equal(on_ray, cut)


def test_cuts_at_window_borders_and_one_frame_shots(backend, tmp_path):
    """Listed cuts (a list, as rvrt-batch may pass them) where windows (0, 4), (2, 6), (4, 8)... of the
    uncut clip begin and end, and shots of a single frame (shorter than a clip) first, inside and last."""
    lengths = [1, 3, 2, 1, 4, 1]                             # cuts at 1, 4, 6, 7, 11
    frames = shots_clip(lengths, seed=1)
    write_video(tmp_path / "in", frames)
    bounds = [int(bound) for bound in np.cumsum([0, *lengths])]
    cut, summary = restored(backend, tmp_path / "in", tmp_path / "out", scene_cuts=bounds[1:-1])
    assert summary.cuts == [1, 4, 6, 7, 11]
    assert np.array_equal(cut, restored_alone(backend, frames, tmp_path, bounds))


def test_folders_and_pipes_are_cut_as_files_are(backend, tmp_path):
    """Detection on every input: YUV4MPEG2 read once from a stream of unknown length, a PNG folder."""
    frames = shots_clip([6, 6], seed=2)
    stream = io.BytesIO()
    with av.open(stream, "w", format="yuv4mpegpipe") as container:
        video = container.add_stream("rawvideo", rate=25)
        video.width, video.height, video.pix_fmt = SIZE, SIZE, "yuv444p"
        for rgb in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv444p")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    piped = PipeSource(io.BytesIO(stream.getvalue()))
    assert piped.frame_count is None
    from_pipe, summary = restored(backend, piped, tmp_path / "from-pipe")
    assert summary.cuts == [6] and summary.frames == 12
    write_video(tmp_path / "folder", np.stack(list(PipeSource(io.BytesIO(stream.getvalue())))))
    from_folder, summary = restored(backend, tmp_path / "folder", tmp_path / "from-folder")
    assert summary.cuts == [6] and np.array_equal(from_pipe, from_folder)


def test_a_segment_takes_the_cuts_inside_it(backend, hard_cut, tmp_path):
    """--start/--frames: detected cuts and a file's cuts (the input's frame numbers) land on the segment's frames."""
    video, frames, _, _, _ = hard_cut                        # 25 fps, the cut at input frame 5
    segment = dict(start=2 / 25, frames=7)                  # input frames 2-8
    assert segment_first_frame(open_frames(video, segment=Segment(**segment))) == 2
    listing = tmp_path / "cuts.txt"
    listing.write_text("0\n5\n10\n")                        # 10: after the segment
    detected, summary = restored(backend, video, tmp_path / "auto", **segment)
    assert summary.cuts == [3] and summary.frames == 7
    listed, summary = restored(backend, video, tmp_path / "listed", scene_cuts=str(listing), **segment)
    assert summary.cuts == [3] and np.array_equal(listed, detected) and not summary.notes
    write_video(tmp_path / "segment", frames[2:9])
    assert np.array_equal(detected, restored(backend, tmp_path / "segment", tmp_path / "alone", scene_cuts=[3])[0])


def test_cut_lists_one_number_a_line_and_pyscenedetect_csv(tmp_path):
    plain = tmp_path / "cuts.txt"
    plain.write_text("# first frame of each shot\n0\n\n120\n 48 \n120\n")
    assert read_cut_file(plain) == [48, 120]
    # Written by PySceneDetect 0.6.7's write_scene_list (shots 0-4, 5, 6-11; "Start Frame" counts from 1).
    assert read_cut_file(DATA / "pyscenedetect-0.6.7-scenes.csv") == [5, 6]
    cli = tmp_path / "video-Scenes.csv"                      # the command line's list-scenes, cut list first
    cli.write_text("Timecode List:,00:00:03.333\n"
                   "Scene Number,Start Frame,Start Timecode,Start Time (seconds),End Frame,End Timecode,"
                   "End Time (seconds),Length (frames),Length (timecode),Length (seconds)\n"
                   "1,1,00:00:00.000,0.000,100,00:00:03.333,3.333,100,00:00:03.333,3.333\n"
                   "2,101,00:00:03.333,3.333,480,00:00:16.000,16.000,380,00:00:12.667,12.667\n")
    assert read_cut_file(cli) == [100]


@pytest.mark.parametrize("content, expected", [
    (None, "--scene-cuts {}: no such file; expected auto, off, or a file listing the first frame of each shot"),
    ("0\n12\ntwelve\n", "--scene-cuts {}: line 3: 'twelve' is not a frame number; expected auto, off"),
    ("5\n-3\n", "--scene-cuts {}: line 2: '-3' is not a frame number"),
    ("# nothing\n\n", "--scene-cuts {}: lists no frame; expected auto, off"),
    ("Scene Number,Start Frame\n1,0\n", "--scene-cuts {}: line 2: '0' is not a Start Frame (PySceneDetect counts "
                                        "from 1)"),
    ("Scene Number,Start Frame\n1,1\n2,x\n", "--scene-cuts {}: line 3: 'x' is not a Start Frame")])
def test_a_bad_cut_file_fails_in_one_line_naming_the_flag(tmp_path, content, expected):
    path = tmp_path / "cuts.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError) as failure:
        read_cut_file(path)
    message = str(failure.value)
    assert message.startswith(expected.format(path)) and "\n" not in message, message


def test_bad_scene_cuts_values_fail_before_any_work(backend, tmp_path):
    write_video(tmp_path / "in", shots_clip([3]))
    for value, part in ((tmp_path / "missing.txt", "--scene-cuts " + str(tmp_path / "missing.txt") + ": no such file"),
                        ("auto-ish", "--scene-cuts auto-ish: no such file; expected auto, off, or a file"),
                        ([3, "x"], "scene_cuts=[3, 'x']: expected auto, off"), ([-1], "scene_cuts=[-1]: expected")):
        with pytest.raises(ValueError, match="^" + re.escape(part)):
            restore_video(backend, tmp_path / "in", tmp_path / "out", scene_cuts=value, **OPTIONS)
        assert not (tmp_path / "out").exists()


def test_cuts_listed_past_the_end_of_the_input_are_noted(tmp_path):
    write_video(tmp_path / "in", shots_clip([4]))
    listing = tmp_path / "cuts.txt"
    listing.write_text("2\n4\n9\n")
    _, cuts, notes = cut_rule(str(listing), open_frames(tmp_path / "in"))
    assert cuts == [2]
    assert notes == [f"note: --scene-cuts {listing}: 2 cuts at or past the end ignored (from frame 4; the input has "
                     f"4 frames)"]


def test_detection_on_deep_frames_and_its_cost():
    """16-bit frames are judged by their top 8 bits (one threshold); the detector's time is its own."""
    frames = shots_clip([5, 5], seed=4)
    detector, deep = SceneDetector(), SceneDetector()
    assert [i for i, f in enumerate(frames) if detector(i, f)] == [5]
    assert [i for i, f in enumerate(frames) if deep(i, f.astype(np.uint16) * 257)] == [5]
    assert 0 < detector.seconds < 1
    assert describe_cuts([]) == "no scene cuts"
    assert describe_cuts(list(range(1, 25))) == ("24 scene cuts, at frames 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, "
                                                 "13, 14, 15, 16, 17, 18, 19, 20 and 4 more")


VS_HARNESS = '''
"""The filter's windows with scene cuts, in VapourSynth: python harness.py EXPORT FRAMES.npy CUTFILE OUTPUT."""
import json, sys
import numpy as np
import vapoursynth as vs
from rvrt_engines.backends import load_backend
from rvrt_engines.restore import resolve_tiling
from rvrt_engines.scenes import shot_spans
from rvrt_engines.vapoursynth import WindowRestorer, clip_cuts

core = vs.core
messages = []
core.add_log_handler(lambda kind, message: messages.append(message))
export, source, listing, output = sys.argv[1:5]
data = np.load(source)
CUT = int(sys.argv[5])


def clip_of(frames, marked):
    base = core.std.BlankClip(format=vs.RGB24, width=frames.shape[2], height=frames.shape[1], length=len(frames))

    def fill(n, f):
        out = f.copy()
        for plane in range(3):
            np.copyto(np.asarray(out[plane]), frames[n, ..., plane])
        out.props.update(_Matrix=vs.MATRIX_RGB, _Range=vs.RANGE_FULL)
        if marked:      # as misc.SCDetect marks: both sides of the cut
            out.props.update(_SceneChangePrev=int(n == CUT), _SceneChangeNext=int(n == CUT - 1))
        return out
    return core.std.ModifyFrame(base, base, fill)


backend = load_backend(export, threads=2)
tiling = resolve_tiling(backend, window=4, window_overlap=2)
result, arrays = {}, {}
# The cuts each way of giving them finds; the frames of the two distinct outcomes (a cut at CUT, none).
for name, clip, value in (("auto", clip_of(data, True), "auto"), ("unmarked", clip_of(data, False), "auto"),
                          ("listed", clip_of(data, False), listing), ("off", clip_of(data, True), "off")):
    messages.clear()
    cuts = clip_cuts(clip, value)
    if name in ("unmarked", "listed"):
        result[name] = dict(cuts=cuts, spans=shot_spans(len(data), cuts, tiling), messages=list(messages))
        continue
    restorer = WindowRestorer(clip, backend, tiling, None, 2, cuts)
    node = restorer.output_in(core.get_video_format(vs.RGBS))
    order = [len(data) - 1, CUT, 0, CUT - 1, *range(len(data))]      # seeking first, then the rest
    frames = {}
    for n in order:
        frames.setdefault(n, np.stack([np.array(node.get_frame(n)[p]) for p in range(3)]))
    arrays[name] = np.stack([frames[n] for n in range(len(data))])
    result[name] = dict(cuts=cuts, spans=restorer.spans, messages=list(messages))
for name in ("bad file", "bad list"):
    try:
        clip_cuts(clip_of(data, False), listing + ".missing" if name == "bad file" else [2, "x"])
        result[name] = None
    except vs.Error as error:
        result[name] = str(error)
np.savez(output + ".npz", **arrays)
with open(output + ".json", "w") as out:
    json.dump(result, out)
'''


def test_the_vapoursynth_filter_cuts_at_the_clips_marks_or_a_file_and_seeks_within_shots(vs_env, tiny_export,  # noqa: F811
                                                                                         tmp_path):
    """The filter's windows never span a cut marked by _SceneChangePrev/_SceneChangeNext (or listed in a
    file): each frame, requested in any order, equals rvrt-run's with the same cut, quantised as its PNGs."""
    venv, env = vs_env
    export = tiny_export("sr")[2]
    frames = shots_clip([5, 5], seed=5)                      # 10 frames of 48x48: one tile of the export
    np.save(tmp_path / "frames.npy", frames)
    (tmp_path / "cuts.txt").write_text("5\n")
    (tmp_path / "harness.py").write_text(VS_HARNESS)
    checked(run([venv / "bin" / "python", tmp_path / "harness.py", export, tmp_path / "frames.npy",
                 tmp_path / "cuts.txt", tmp_path / "out", 5], env, cwd=tmp_path, timeout=900))
    result = json.loads((tmp_path / "out.json").read_text())
    arrays = np.load(tmp_path / "out.npz")
    assert result["auto"]["cuts"] == result["listed"]["cuts"] == [5]
    assert result["auto"]["spans"] == result["listed"]["spans"] == [[0, 4], [1, 5], [5, 9], [6, 10]]
    assert result["unmarked"]["cuts"] == result["off"]["cuts"] == []
    assert result["unmarked"]["spans"] == result["off"]["spans"]
    assert any("carry no _SceneChangePrev or _SceneChangeNext" in m for m in result["unmarked"]["messages"])
    assert any(m.startswith("rvrt restore: 1 scene cut, at frame 5 (the clip's scene-change marks")
               for m in result["auto"]["messages"])
    assert result["bad file"].startswith(f"rvrt restore: scene_cuts='{tmp_path / 'cuts.txt.missing'}': no such file")
    assert result["bad list"].startswith("rvrt restore: scene_cuts=[2, 'x']: expected auto, off")
    write_video(tmp_path / "in", frames)
    backend = load_backend(export, threads=2)
    for name, cuts in (("auto", [5]), ("off", "off")):
        restore_video(backend, tmp_path / "in", tmp_path / f"rvrt-run-{cuts}", window=4, window_overlap=2,
                      scene_cuts=cuts)
        png = decoded(tmp_path / f"rvrt-run-{cuts}")
        assert np.array_equal(np.stack([to_uint8(frame) for frame in arrays[name]]), png), name
    assert not np.array_equal(arrays["auto"], arrays["off"])
