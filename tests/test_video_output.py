"""Outputs never destroy a file: --overwrite replaces only what this program writes, every
failure path (errors before the first frame, exceptions, SIGTERM, Ctrl-C) leaves nothing behind,
and a signal ends rvrt-run with 128 + its number."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from rvrt_engines.cli import main as run_cli
from rvrt_engines.synthetic import moving_photo_frames, write_video
from rvrt_engines.video import VideoOutputError

FRAMES = moving_photo_frames(3, 48, 48, seed=5)


@pytest.fixture()
def clip(tmp_path):
    path = tmp_path / "in" / "clip.mkv"
    path.parent.mkdir()
    write_video(path, FRAMES, lossless=True)
    return path


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(args):
    return CliRunner().invoke(run_cli, ["sr", *map(str, args), "--random-weights", "--tile", "48", "--quiet"])


@pytest.mark.parametrize("target,message", [
    (lambda tmp, clip: ".", "current folder"),
    (lambda tmp, clip: clip, "that is the input"),
    (lambda tmp, clip: clip.parent, "contains the input"),
])
def test_overwrite_refuses_what_it_did_not_write(tmp_path, clip, monkeypatch, target, message):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    result = run([clip, "-o", target(tmp_path, clip), "--overwrite"])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert snapshot(tmp_path) == before


def test_frame_folder_with_a_stranger_file_is_refused(tmp_path, clip):
    folder = tmp_path / "frames"
    write_video(folder, FRAMES, lossless=True)
    (folder / "holiday.jpg").write_bytes(b"not ours")
    before = snapshot(tmp_path)
    result = run([clip, "-o", folder, "--overwrite"])
    assert result.exit_code == 2 and "holiday.jpg" in result.output
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_our_frames_only(tmp_path):
    folder = tmp_path / "frames"
    write_video(folder, moving_photo_frames(5, 48, 48, seed=1), lossless=True)
    assert sorted(os.listdir(folder)) == [f"{i:06d}.png" for i in range(5)]
    with pytest.raises(VideoOutputError, match="--overwrite"):
        write_video(folder, FRAMES, lossless=True, overwrite=False)
    write_video(folder, FRAMES, lossless=True, overwrite=True)
    assert sorted(os.listdir(folder)) == [f"{i:06d}.png" for i in range(3)]
    assert sorted(os.listdir(tmp_path)) == ["frames"]


def test_overwritten_file_is_replaced_atomically_with_usual_permissions(tmp_path):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"old")
    old_mask = os.umask(0o022)
    try:
        write_video(target, FRAMES, overwrite=True)
        write_video(tmp_path / "frames", FRAMES)
    finally:
        os.umask(old_mask)
    assert target.read_bytes()[:3] != b"old"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "frames").stat().st_mode & 0o777) == oct(0o755)
    assert oct((tmp_path / "frames" / "000000.png").stat().st_mode & 0o777) == oct(0o644)
    assert sorted(os.listdir(tmp_path)) == ["frames", "out.mp4"]


@pytest.mark.parametrize("args,message", [
    (["-o", "{tmp}/a.webm", "--crf", "80"], "--crf 80: libvpx-vp9 takes 0 (best) to 63"),
    (["-o", "{tmp}/a.mp4", "--codec", "h264_nvenc"], "--codec h264_nvenc"),
    (["-o", "{tmp}/a.mp4", "--codec", "nosuchcodec"], "--codec nosuchcodec: no such encoder"),
    (["-o", "{tmp}/a.mp4", "--codec", "aac"], "audio encoder"),
    (["-o", "{tmp}/a.webm", "--codec", "libx264"], "cannot hold it"),
    (["-o", "{tmp}/a.mp4", "--bit-depth", "16"], "--bit-depth 16"),
    (["-o", "{tmp}/a.xyz"], "unsupported output container '.xyz'"),
    (["-o", "/proc/nope/a.mp4"], "cannot create the folder"),
    (["-o", "{tmp}/a.mp4", "--sigma", "5"], "--sigma only applies to denoising"),
    (["-o", "{tmp}/a.mp4", "--start", "1:xx"], "--start 1:xx"),
    (["-o", "{tmp}/a.mp4", "--start", "9"], "past the last frame"),
    (["-o", "{tmp}/a.mp4", "--fps", "30"], "--fps 30: expected a positive frame rate, for a folder of frames"),
    (["-o", "-", "--crf", "20"], "-o - writes uncompressed YUV4MPEG2"),
    (["-o", "{tmp}/frames", "--codec", "libx264"], "the output is a frame folder"),
])
def test_bad_choices_fail_before_any_work_and_leave_nothing(tmp_path, clip, args, message):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    began = time.perf_counter()
    result = run([clip, *[a.format(tmp=out_dir) for a in args]])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.count("\n") == 1
    assert time.perf_counter() - began < 10
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize("sigma", ["-5", "5000"])
def test_sigma_outside_the_8_bit_scale_is_refused(tmp_path, clip, sigma):
    result = CliRunner().invoke(run_cli, ["denoise", str(clip), "-o", str(tmp_path / "o.mp4"), "--random-weights",
                                          "--sigma", sigma])
    assert result.exit_code == 2 and "from 0 to 255" in result.output


SLOW_RUN = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_model
from test_run import eager_backend
from rvrt_engines.restore import restore_video
from rvrt_engines.video import signals_as_exceptions

def report(status):
    if status.work_done > 0:
        print("working", flush=True)

with signals_as_exceptions():
    restore_video(eager_backend("sr", tiny_model("sr")), sys.argv[1], sys.argv[2], tile=48, window=4,
                  progress=report)
"""


@pytest.mark.parametrize("name", ["out.mp4", "frames"])
def test_sigterm_leaves_no_file(tmp_path, name):
    source = tmp_path / "long.mkv"
    write_video(source, np.repeat(FRAMES, 20, axis=0), lossless=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    script = SLOW_RUN.format(tests=os.path.dirname(__file__))
    process = subprocess.Popen([sys.executable, "-c", script, str(source), str(out_dir / name)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "working"
    assert os.listdir(out_dir), "the temporary output exists while working"
    os.kill(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode != 0
    assert os.listdir(out_dir) == []


def default_ctrl_c():
    """In the child: Ctrl-C as a terminal delivers it, whatever the test runner's own setting
    (a background job starts with SIGINT ignored, and Python then installs no handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum, status, message", [
    (signal.SIGTERM, 143, "rvrt-run: stopped by SIGTERM; nothing was written"),
    (signal.SIGINT, 130, "rvrt-run: interrupted (Ctrl-C); nothing was written"),
])
def test_a_signal_to_rvrt_run_exits_128_plus_it_and_leaves_no_file(tmp_path, tiny_export, signum, status, message):
    _, _, export_dir = tiny_export("sr")
    source = tmp_path / "long.mkv"
    write_video(source, np.repeat(FRAMES, 20, axis=0), lossless=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    process = subprocess.Popen(["rvrt-run", str(export_dir), str(source), "-o", str(out_dir / "x.mp4"),
                                "--window", "4"], stderr=subprocess.PIPE, text=True, preexec_fn=default_ctrl_c)
    deadline = time.monotonic() + 120
    while not os.listdir(out_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(out_dir), "the temporary output appears while working"
    time.sleep(2)
    os.kill(process.pid, signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status and message in stderr, stderr
    assert "Aborted!" not in stderr and "Traceback" not in stderr
    assert os.listdir(out_dir) == []
