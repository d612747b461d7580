"""rvrt-run in FFmpeg pipelines: YUV4MPEG2 in on stdin, out on stdout, messages on stderr,
through real processes; streams of unknown length are windowed exactly as files are."""

import io
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from rvrt import Tiling, window_spans
from rvrt_engines.restore import WindowFeed
from rvrt_engines.synthetic import moving_photo_frames

FRAMES = moving_photo_frames(5, 48, 48, image="rocket", seed=3)

PRODUCER = """
import sys, av, numpy as np
from rvrt_engines.synthetic import moving_photo_frames
pix_fmt = sys.argv[1]
frames = moving_photo_frames(5, 48, 48, image="rocket", seed=3)
with av.open(sys.stdout.buffer, "w", format="yuv4mpegpipe", options={"strict": "-1"}) as container:
    stream = container.add_stream("rawvideo", rate=24)
    stream.width, stream.height, stream.pix_fmt = 48, 48, pix_fmt
    for rgb in frames:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
"""


def read_y4m(data: bytes):
    with av.open(io.BytesIO(data), format="yuv4mpegpipe") as container:
        stream = container.streams.video[0]
        frames = [frame for frame in container.decode(stream)]
        return frames, float(stream.average_rate)


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv420p10le"])
def test_yuv4mpeg_through_real_processes(tiny_export, pix_fmt):
    """python (PyAV) | rvrt-run EXPORT - -o - : frames, size, rate and bit depth come through."""
    _, _, export_dir = tiny_export("sr")
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, pix_fmt], stdout=subprocess.PIPE)
    restored = subprocess.run(["rvrt-run", str(export_dir), "-", "-o", "-", "--window", "4"],
                              stdin=producer.stdout, capture_output=True, timeout=600)
    producer.stdout.close()
    assert producer.wait() == 0
    assert restored.returncode == 0, restored.stderr.decode()
    frames, rate = read_y4m(restored.stdout)
    assert len(frames) == 5 and rate == 24 and (frames[0].width, frames[0].height) == (192, 192)
    assert frames[0].format.name == pix_fmt
    assert b"5 frames" in restored.stderr


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg executable on this machine "
                                                          "(apt-get install ffmpeg) for the FFmpeg pipeline test")
def test_ffmpeg_pipeline(tiny_export, tmp_path):
    """ffmpeg -i in.mkv -f yuv4mpegpipe - | rvrt-run MODEL - -o - | ffmpeg -i - out.mkv"""
    _, _, export_dir = tiny_export("sr")
    source = tmp_path / "in.mkv"
    with av.open(str(source), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 48, "yuv420p"
        for rgb in FRAMES:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "out.mkv"
    command = (f"ffmpeg -loglevel error -i {source} -f yuv4mpegpipe - | rvrt-run {export_dir} - -o - --window 4 "
               f"--quiet | ffmpeg -loglevel error -i - -c:v ffv1 {out}")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 5 and frames[0].width == 192


@pytest.mark.parametrize("count", [1, 3, 4, 5, 6, 9, 10, 17])
@pytest.mark.parametrize("window,overlap", [(4, 2), (6, 2), (4, 0), (0, 2)])
def test_streamed_windows_equal_the_windows_of_a_known_length(count, window, overlap):
    tiling = Tiling(window=window, window_overlap=overlap)
    frames = (np.full((2, 2, 3), i, np.uint8) for i in range(count))
    feed = WindowFeed(frames, lambda f: torch.from_numpy(f[0, 0, :1].astype(np.float32)), tiling)
    windows, known = [], []
    for window_frames in feed.windows():
        windows.append(window_frames[0, :, 0].tolist())
        known.append(len(feed.spans))
    spans = window_spans(count, tiling)
    # blend_windows needs the next window's start as soon as it holds a window.
    assert all(k >= min(i + 2, len(spans)) for i, k in enumerate(known))
    assert feed.spans == spans and feed.count == count
    assert windows == [list(map(float, range(start, stop))) for start, stop in spans]
