"""rvrt-run's windows on a real local Ray cluster: same frames as one process, workers killed, windows
that fail, rvrt-batch over a folder, Ctrl-C."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from click.testing import CliRunner

from rvrt import Tiling
from rvrt_cluster import RayWindows, WindowFailed
from rvrt_cluster.windows import pack_window, unpack_window
from rvrt_cluster.cli import main as batch_cli
from rvrt_engines.backends import load_backend
from rvrt_engines.restore import restore_video
from rvrt_engines.synthetic import degrade, moving_photo_frames, write_video
from rvrt_engines.video import open_frames

# Windows of 6 frames overlapping by 2 over 14 frames: spans 0-5, 4-9, 8-13. Frames of 64x48 in
# 48 px tiles overlapping by 16: 2 tiles, one backend call per window at the export's batch of 2.
OPTIONS = dict(window=6, window_overlap=2, tile_overlap=16)


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray cluster for this module; the test loaders below travel to workers by value."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def frames():
    """14 LR frames 64x48 of a pan-and-zoom clip (bicubic x4 down of 256x192)."""
    return degrade(moving_photo_frames(14, 192, 256, image="coffee", seed=5), "sr")


@pytest.fixture(scope="module")
def video(frames, tmp_path_factory):
    """The clip as a folder of PNGs: lossless, so test frames (black, marked) reach the model as made."""
    path = tmp_path_factory.mktemp("clip") / "frames"
    write_video(path, frames)
    return path


@pytest.fixture(scope="module")
def single_process(video, tiny_export, tmp_path_factory):
    """The reference: the same export restored in this process with one ONNX Runtime thread."""
    out = tmp_path_factory.mktemp("reference") / "out"
    restore_video(load_backend(tiny_export("sr")[2], threads=1), video, out, **OPTIONS)
    return read_all(out)


def read_all(path):
    return np.stack(list(open_frames(path)))


def loader_killed_mid_window(pid_file, **load_args):
    """A real backend whose process, at the first backend call over all workers (inside a window),
    writes its pid for the test to kill and computes on after a pause: killed mid-window, once."""
    backend = load_backend(**load_args)
    restore = backend.restore

    def restore_reporting(lq):
        try:
            with open(pid_file + ".claimed", "x"):
                pass
        except FileExistsError:
            return restore(lq)
        with open(pid_file + ".tmp", "w") as file:
            file.write(str(os.getpid()))
        os.replace(pid_file + ".tmp", pid_file)
        time.sleep(10)
        return restore(lq)

    backend.restore = restore_reporting
    return backend


def loader_refusing_black_frames(**load_args):
    """A real backend that raises on tiles holding an all-black frame, as a backend fails on bad input."""
    backend = load_backend(**load_args)
    restore = backend.restore

    def restore_checked(lq):
        if (lq.reshape(*lq.shape[:2], -1).max(axis=2) == 0).any():
            raise RuntimeError("black frame in this tile")
        return restore(lq)

    backend.restore = restore_checked
    return backend


def test_cluster_gives_the_frames_of_one_process(cluster, video, tiny_export, single_process, tmp_path):
    with RayWindows({"model": tiny_export("sr")[2]}, workers=2, threads=1, max_in_flight=2) as pool:
        summary = restore_video(pool.backend, video, tmp_path / "out", windows=pool, **OPTIONS)
        stats = [dataclasses.replace(s) for s in pool.stats]

        # Windows are read only as far as max_in_flight allows ahead of those handed back.
        read = []
        def windows():
            for index in range(5):
                read.append(index)
                yield np.random.default_rng(index).random((1, 2, 3, 48, 48), dtype=np.float32)
        for handed, window in enumerate(pool.map(windows(), Tiling(window=2, tile=48)), 1):
            assert window.shape == (1, 2, 3, 192, 192) and len(read) <= handed + 2
    assert summary.frames == 14 and summary.backend == "onnxruntime"
    assert np.array_equal(read_all(tmp_path / "out"), single_process)
    assert sum(s.windows for s in stats) == 3 and all(s.windows for s in stats)
    assert sum(s.frames for s in stats) == 18


def test_windows_travel_as_the_levels_they_were_decoded_from():
    eight = np.arange(256, dtype=np.uint8).reshape(1, 1, 1, 16, 16).astype(np.float32) / 255.0
    assert pack_window(eight).dtype == np.uint8 and np.array_equal(unpack_window(pack_window(eight)), eight)
    sixteen = np.arange(1, 65536, 256, dtype=np.float32).reshape(1, 1, 1, 16, 16) / 65535.0
    assert pack_window(sixteen).dtype == np.uint16 and np.array_equal(unpack_window(pack_window(sixteen)), sixteen)
    sigma = np.full((1, 1, 1, 4, 4), 12.5 / 255.0, dtype=np.float32)
    assert pack_window(sigma).dtype == np.float32 and np.array_equal(unpack_window(pack_window(sigma)), sigma)


def test_a_model_the_workers_cannot_load_is_a_usage_error(cluster, video_folder, tmp_path):
    result = CliRunner().invoke(batch_cli, [str(tmp_path), str(video_folder), "-o", str(tmp_path / "out"),
                                            "--workers", "1", "--threads", "1"])
    assert result.exit_code == 2 and "is not an export directory" in result.output
    assert not (tmp_path / "out").exists()


def test_worker_killed_mid_window_costs_a_retry_not_the_run(cluster, video, tiny_export, single_process,
                                                             tmp_path):
    pid_file = str(tmp_path / "pid")
    killed = []

    def kill_when_reported():
        while not os.path.exists(pid_file):
            time.sleep(0.05)
        killed.append(int(Path(pid_file).read_text()))
        os.kill(killed[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_when_reported, daemon=True)
    killer.start()
    load_args = {"model": tiny_export("sr")[2], "pid_file": pid_file}
    with RayWindows(load_args, workers=2, threads=1, loader=loader_killed_mid_window) as pool:
        restore_video(pool.backend, video, tmp_path / "out", windows=pool, **OPTIONS)
        stats, retries = pool.stats, pool.retries
    killer.join(1)
    assert killed and retries == 1
    assert sum(s.failures for s in stats) == 1 and sum(s.windows for s in stats) == 3
    assert np.array_equal(read_all(tmp_path / "out"), single_process)


def test_window_failing_on_every_worker_stops_the_run_naming_it(cluster, frames, video, tiny_export, single_process,
                                                                 tmp_path):
    poisoned = frames.copy()
    poisoned[2] = 0
    write_video(tmp_path / "in", poisoned)
    out = tmp_path / "out" / "restored.mp4"
    with RayWindows({"model": tiny_export("sr")[2]}, workers=2, threads=1, loader=loader_refusing_black_frames) as pool:
        with pytest.raises(WindowFailed) as failure:
            restore_video(pool.backend, tmp_path / "in", out, windows=pool, **OPTIONS)
        message = str(failure.value)
        assert message.startswith("window 0 (input frames 0-5) failed 3 times; last error on worker ")
        assert message.endswith("RuntimeError: black frame in this tile")
        # The pool outlives a failed video: the next one is restored by the same workers.
        restore_video(pool.backend, video, tmp_path / "fine", windows=pool, **OPTIONS)
    assert list((tmp_path / "out").iterdir()) == []
    assert np.array_equal(read_all(tmp_path / "fine"), single_process)


@pytest.fixture(scope="module")
def video_folder(frames, tmp_path_factory):
    """Two short videos and a file that only claims to be one."""
    folder = tmp_path_factory.mktemp("videos")
    write_video(folder / "first.mp4", frames[:6])
    write_video(folder / "second.mkv", frames[6:12], lossless=True)
    (folder / "broken.mp4").write_bytes(os.urandom(3000))
    return folder


def test_batch_restores_a_folder_and_reports_the_broken_file(cluster, video_folder, tiny_export, tmp_path):
    out = tmp_path / "restored"
    command = [str(tiny_export("sr")[2]), str(video_folder), "-o", str(out), "--workers", "2", "--threads", "1",
               "--window", "4", "--quiet"]
    result = CliRunner().invoke(batch_cli, command)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert f"done: {video_folder / 'first.mp4'} -> {out / 'first.mp4'} (6 frames" in lines[1]
    assert f"done: {video_folder / 'second.mkv'} -> {out / 'second.mkv'} (6 frames" in lines[2]
    assert lines[0].startswith(f"failed: {video_folder / 'broken.mp4'}: ") and "not a readable video" in lines[0]
    assert lines[3].startswith("2 done, 1 failed, 0 skipped in ")
    assert [line.split(" (")[0] for line in lines[4:]] == ["worker 0", "worker 1"]
    assert sorted(p.name for p in out.iterdir()) == ["first.mp4", "second.mkv"]
    assert [len(read_all(out / name)) for name in ("first.mp4", "second.mkv")] == [6, 6]

    again = CliRunner().invoke(batch_cli, command)
    assert again.exit_code == 1 and "0 done, 1 failed, 2 skipped" in again.stdout
    assert f"skipped: {video_folder / 'first.mp4'}: {out / 'first.mp4'} exists (--overwrite replaces it)" \
        in again.stdout


@pytest.mark.parametrize("signum,message", [(signal.SIGINT, "interrupted (Ctrl-C)"),
                                            (signal.SIGTERM, "stopped by SIGTERM")])
def test_ctrl_c_and_sigterm_stop_workers_and_the_local_cluster_leaving_nothing(signum, message, video, tiny_export,
                                                                                tmp_path):
    ray_dir = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))      # Ray's socket paths must stay short
    out = tmp_path / "restored"
    batch = subprocess.Popen(
        [sys.executable, "-m", "rvrt_cluster.cli", str(tiny_export("sr")[2]), str(video), "-o", str(out),
         "--ray", "local", "--workers", "1", "--threads", "1", "--window", "2", "--window-overlap", "0", "--quiet"],
        env={**os.environ, "RAY_TMPDIR": str(ray_dir)}, stderr=subprocess.PIPE, text=True,
        preexec_fn=interruptible)
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any(out.iterdir())) and batch.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert batch.poll() is None, batch.stderr.read()
        batch.send_signal(signum)
        assert batch.wait(60) == 128 + signum
    finally:
        batch.kill()
    assert f"rvrt-batch: {message}; the files in progress were not written" in batch.stderr.read()
    assert list(out.iterdir()) == []
    deadline = time.monotonic() + 20
    while ray_processes(ray_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_processes(ray_dir) == []
    shutil.rmtree(ray_dir, ignore_errors=True)


def interruptible() -> None:
    """SIGINT as a terminal's Ctrl-C finds it: a suite started in the background (``cmd &``,
    nohup) inherits SIGINT ignored, exec keeps it so, and Python then leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ray_processes(ray_dir: Path) -> list[str]:
    """Command lines of live processes of the Ray cluster kept under ``ray_dir``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(ray_dir) in command:
            found.append(command)
    return found
