"""rvrt-run end to end on synthetic but realistic videos: moving photographs, degraded per task."""

import os
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import tiny_model
from rvrt import get_task
from rvrt_engines.backends import eager_description, load_backend
from rvrt_engines.cli import main as run_cli
from rvrt_engines.restore import restore_video
from rvrt_engines.synthetic import degrade, moving_photo_frames, write_video
from rvrt_engines.video import VideoInputError, open_frames


def eager_backend(kind, model):
    task = get_task({"sr": "sr", "deblur": "deblur-dvd", "denoise": "denoise"}[kind])
    return eager_description(task, model)


@pytest.fixture(scope="module")
def sr_video(tmp_path_factory):
    """12 frames 56x48 (LR of a 224x192 pan-and-zoom clip, bicubic x4 down), as mp4."""
    path = tmp_path_factory.mktemp("videos") / "lr.mp4"
    hr = moving_photo_frames(12, 192, 224, image="coffee", seed=3)
    write_video(path, degrade(hr, "sr"), frame_rate=24)
    return path


def read_all(path):
    return np.stack(list(open_frames(path)))


def test_onnxruntime_and_eager_give_the_same_frames(sr_video, tiny_export, tmp_path):
    model, _, export_dir = tiny_export("sr")
    eager_out, ort_out = tmp_path / "eager.mkv", tmp_path / "ort.mkv"
    options = dict(window=6, window_overlap=2, tile_overlap=16, lossless=True)
    eager = restore_video(eager_backend("sr", model), sr_video, eager_out, tile=48, batch=2, **options)
    served = restore_video(load_backend(export_dir), sr_video, ort_out, **options)
    a, b = read_all(eager_out), read_all(ort_out)
    assert a.shape == b.shape == (12, 192, 224, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert eager.frames == served.frames == 12 and served.output_size == (224, 192)
    with av.open(str(ort_out)) as container:
        assert Fraction(container.streams.video[0].average_rate) == 24


def test_frame_order_and_count_survive_windows(tmp_path):
    """A per-frame marker (frame index in the brightness) comes out in order: windows averaged right."""
    frames = np.stack([np.full((48, 48, 3), 10 + 20 * i, np.uint8) for i in range(11)])
    write_video(tmp_path / "in", frames)
    model = tiny_model("sr")
    out = tmp_path / "out"
    restore_video(eager_backend("sr", model), tmp_path / "in", out, window=4, window_overlap=2, tile=48)
    restored = read_all(out)
    assert restored.shape == (11, 192, 192, 3)
    # The frames, and the record of what made them.
    assert sorted(os.listdir(out)) == [f"{i:06d}.png" for i in range(11)] + ["rvrt-provenance.json"]
    means = restored.reshape(11, -1).mean(1)
    assert np.all(np.diff(means) > 0)


@pytest.mark.parametrize("kind", ["deblur", "denoise"])
def test_deblur_and_denoise_videos_restore(kind, tmp_path):
    hr = moving_photo_frames(4, 136, 144, image="astronaut", seed=1)
    path = tmp_path / "in.mkv"
    write_video(path, degrade(hr, kind, sigma=25), lossless=True)
    out = tmp_path / "out.mp4"
    summary = restore_video(eager_backend(kind, tiny_model(kind)), path, out, window=4, tile=136,
                            sigma=25 if kind == "denoise" else None)
    assert read_all(out).shape == (4, 136, 144, 3) and summary.frames == 4


def test_denoise_needs_sigma_and_others_refuse_it(tmp_path, sr_video):
    with pytest.raises(ValueError, match="denoising needs the noise level"):
        restore_video(eager_backend("denoise", tiny_model("denoise")), sr_video, tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="sigma only applies to denoising"):
        restore_video(eager_backend("sr", tiny_model("sr")), sr_video, tmp_path / "x.mp4", sigma=10)


def test_grayscale_and_alpha_inputs_are_converted_and_reported(tmp_path, tiny_export):
    _, _, export_dir = tiny_export("sr")
    for pix_fmt, expect in (("gray", "grayscale"), ("rgba", "alpha dropped")):
        folder = tmp_path / pix_fmt
        folder.mkdir()
        for i in range(3):
            with av.open(str(folder / f"f{i}.png"), "w", format="image2") as container:
                stream = container.add_stream("png")
                stream.width, stream.height, stream.pix_fmt = 48, 40, pix_fmt
                image = np.full((40, 48, 3), 60 * i, np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
                for packet in [*stream.encode(frame), *stream.encode()]:
                    container.mux(packet)
        result = CliRunner().invoke(run_cli, [str(export_dir), str(folder), "-o", str(tmp_path / f"{pix_fmt}.mkv"),
                                              "--window", "4", "--quiet"])
        assert result.exit_code == 0, result.output
        assert f"input converted: {pix_fmt}" in result.output and expect in result.output


def test_variable_frame_rate_is_refused(tmp_path):
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 48, "bgr0"
        stream.time_base = Fraction(1, 1000)
        for i, pts in enumerate((0, 40, 80, 200, 240, 400)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 48, 3), i * 30, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert open_frames(path).variable_frame_rate
    with pytest.raises(VideoInputError, match="variable frame rate"):
        restore_video(eager_backend("sr", tiny_model("sr")), path, tmp_path / "o.mp4", tile=48)


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing.mp4", "no such file or folder"),
    (lambda p: (p / "noise.mp4").write_bytes(os.urandom(4000)) and p / "noise.mp4", "not a readable video"),
    (lambda p: (p / "notes.txt").write_text("hi") and p / "notes.txt", "unsupported container '.txt'"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no frames found"),
])
def test_unreadable_inputs_fail_clearly(tmp_path, make, message):
    source = make(tmp_path)
    result = CliRunner().invoke(run_cli, ["sr", str(source), "-o", str(tmp_path / "o.mp4"), "--random-weights"])
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "o.mp4").exists()


def test_model_task_and_tile_mismatches_fail_clearly(sr_video, tiny_export, tmp_path):
    _, _, export_dir = tiny_export("sr")
    runner = CliRunner()
    result = runner.invoke(run_cli, [str(export_dir), str(sr_video), "-o", str(tmp_path / "a.mp4"),
                                     "--task", "denoise"])
    assert result.exit_code != 0 and "exported for task 'sr'" in result.output
    result = runner.invoke(run_cli, [str(export_dir), str(sr_video), "-o", str(tmp_path / "b.mp4"), "--tile", "64"])
    assert result.exit_code != 0 and "exported for 48 px tiles, not 64" in result.output
    result = runner.invoke(run_cli, ["sr", str(sr_video), "-o", str(tmp_path / "c.mp4")])
    assert result.exit_code != 0 and "no checkpoint given" in result.output
    result = runner.invoke(run_cli, [str(tmp_path), str(sr_video), "-o", str(tmp_path / "d.mp4")])
    assert result.exit_code != 0 and "not an export directory" in result.output


def test_existing_output_is_kept_without_overwrite(sr_video, tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"precious")
    result = CliRunner().invoke(run_cli, ["sr", str(sr_video), "-o", str(out), "--random-weights"])
    assert result.exit_code != 0 and "--overwrite" in result.output
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupted_run_leaves_no_output(sr_video, tmp_path, error):
    def interrupt(status):
        if status.frames_written == 3:
            raise error("stop")

    out = tmp_path / "partial.mp4"
    with pytest.raises(error):
        restore_video(eager_backend("sr", tiny_model("sr")), sr_video, out, tile=48, window=4, progress=interrupt)
    assert list(tmp_path.iterdir()) == []


# VmHWM is this process's own peak: ru_maxrss of a child forked from the (large) test process
# starts from the parent's size, which hid the child's peak whenever the parent was larger.
PEAK_RSS_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import tiny_model
from test_run import eager_backend
from rvrt_engines.restore import restore_video
restore_video(eager_backend("sr", tiny_model("sr")), sys.argv[1], sys.argv[2], window=6, tile=48, lossless=True)
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_video_length(tmp_path):
    """Peak RSS for 20 vs 80 frames (4 and 16 windows) at the same window: within 10 %.

    The output is intra-only (FFV1): x264's look-ahead holds up to ~40 frames, a constant
    that a short video never fills and that would blur the comparison. One process at a time:
    two at once, each with its threads, oversubscribe two cores."""
    peaks = {}
    for count in (20, 80):
        frames = degrade(moving_photo_frames(count, 192, 192, seed=count), "sr")
        write_video(tmp_path / f"{count}.mp4", frames)
        script = PEAK_RSS_SCRIPT.format(tests=os.path.dirname(__file__))
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{count}.mp4"),
                              str(tmp_path / f"out{count}.mkv")], capture_output=True, text=True, check=True)
        peaks[count] = int(out.stdout.split()[-1])
    assert peaks[80] <= 1.10 * peaks[20], peaks
