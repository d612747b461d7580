"""rvrt-run's windows on a real local Ray cluster: same frames as one process, workers killed, windows
that fail, a driver started from a folder that shadows our packages; rvrt-batch over a folder (files
restored at once, a segment of each, a killed batch run again), Ctrl-C and SIGTERM; rvrt-run --ray and
rvrt-batch with --runtime openvino (the workers' OpenVINO gives the frames of one process). Several nodes:
test_cluster_nodes.py."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import ray
from click.testing import CliRunner

from rvrt import Tiling
from rvrt_cluster import RayWindows, WindowFailed
from rvrt_cluster.windows import pack_window, unpack_window
from rvrt_cluster.cli import collect_inputs, plan, probe, restore_all
from rvrt_cluster.cli import main as batch_cli
from rvrt_engines.backends import Description, load_backend
from rvrt_engines.cli import main as run_cli
from rvrt_engines.frontend import Prepared
from rvrt_engines.restore import resolve_tiling, restore_video
from rvrt_engines.synthetic import degrade, moving_photo_frames, write_video
from rvrt_engines.video import open_frames

# Windows of 6 frames overlapping by 2 over 14 frames: spans 0-5, 4-9, 8-13. Frames of 64x48 in
# 48 px tiles overlapping by 16: 2 tiles, one backend call per window at the export's batch of 2.
OPTIONS = dict(window=6, window_overlap=2, tile_overlap=16)
# The OpenVINO runs, kept short: the clip's first 4 frames in one window of two clips (the steps with GDA run).
OPENVINO_OPTIONS = dict(frames=4, window=4, tile_overlap=16)
OPENVINO_FLAGS = [part for name, value in OPENVINO_OPTIONS.items()
                  for part in (f"--{name.replace('_', '-')}", str(value))]


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray cluster for this module; the hooks below travel to workers by value."""
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


@dataclasses.dataclass(frozen=True)
class Hooked:
    """A real description whose opened backend sends each of its calls through ``hook(note, restore, lq)``:
    how a test makes a worker die, fail or log (the workers open it as they open a real one)."""

    description: Description
    hook: Callable
    note: str = ""
    needs_gpu = False

    def with_threads(self, threads):
        return dataclasses.replace(self, description=self.description.with_threads(threads))

    @contextmanager
    def open(self):
        with self.description.open() as backend:
            yield SimpleNamespace(config=backend.config, restore=lambda lq: self.hook(self.note, backend.restore, lq))


def killed_mid_window(pid_file, restore, lq):
    """At the first backend call over all workers (inside a window), write this process's pid for the test
    to kill and compute on after a pause: killed mid-window, once."""
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


def refusing_black_frames(_, restore, lq):
    """Raise on tiles holding an all-black frame, as a backend fails on bad input."""
    if (lq.reshape(*lq.shape[:2], -1).max(axis=2) == 0).any():
        raise RuntimeError("black frame in this tile")
    return restore(lq)


def test_cluster_gives_the_frames_of_one_process(cluster, video, tiny_export, single_process, tmp_path):
    description = load_backend(tiny_export("sr")[2])
    with RayWindows(description, workers=2, threads=1, max_in_flight=2) as pool:
        summary = restore_video(description, video, tmp_path / "out", windows=pool, **OPTIONS)
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
    description = load_backend(tiny_export("sr")[2])
    with RayWindows(Hooked(description, killed_mid_window, pid_file), workers=2, threads=1) as pool:
        restore_video(description, video, tmp_path / "out", windows=pool, **OPTIONS)
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
    description = load_backend(tiny_export("sr")[2])
    with RayWindows(Hooked(description, refusing_black_frames), workers=2, threads=1) as pool:
        with pytest.raises(WindowFailed) as failure:
            # Cuts off: the black frame would start a shot of its own.
            restore_video(description, tmp_path / "in", out, windows=pool, scene_cuts="off", **OPTIONS)
        message = str(failure.value)
        assert message.startswith("window 0 (input frames 0-5) failed 3 times; last error on worker ")
        assert message.endswith("RuntimeError: black frame in this tile")
        # A cut at 3 moves the windows after it off the regular starts: the failing one is named by its own span.
        poisoned = frames.copy()
        poisoned[5] = 0
        write_video(tmp_path / "cut", poisoned)
        with pytest.raises(WindowFailed, match=r"^window 1 \(input frames 3-8\) failed 3 times; last error on "):
            restore_video(description, tmp_path / "cut", out, windows=pool, scene_cuts=[3], **OPTIONS)
        # The pool outlives a failed video: the next one is restored by the same workers.
        restore_video(description, video, tmp_path / "fine", windows=pool, **OPTIONS)
    assert list((tmp_path / "out").iterdir()) == []
    assert np.array_equal(read_all(tmp_path / "fine"), single_process)


def test_a_driver_started_beside_a_folder_named_like_our_packages_is_served(video, tiny_export, single_process,
                                                                               tmp_path):
    # Ray puts the driver's folder first on its workers' import path: a folder "rvrt" there (a checkout of
    # the official code) would be imported in place of the package, and every worker would fail to start.
    folder, script = tmp_path / "work", tmp_path / "driver" / "run.py"
    (folder / "rvrt").mkdir(parents=True)
    script.parent.mkdir()
    script.write_text(textwrap.dedent(f"""
        from rvrt_cluster import RayWindows
        from rvrt_engines.backends import load_backend
        from rvrt_engines.restore import restore_video
        description = load_backend({str(tiny_export("sr")[2])!r})
        with RayWindows(description, workers=1, threads=1) as pool:
            restore_video(description, {str(video)!r}, "out", windows=pool, **{OPTIONS!r})
    """))
    ray_dir = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))      # Ray's socket paths must stay short
    try:
        run = subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "RAY_TMPDIR": str(ray_dir)})
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert run.returncode == 0, run.stderr
    assert np.array_equal(read_all(folder / "out"), single_process)


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


def logging_calls(log, restore, lq):
    """Note when each backend call began and ended, and in which process."""
    began = time.time()
    restored = restore(lq)
    with open(log, "a") as file:
        file.write(f"{os.getpid()} {began} {time.time()}\n")
    return restored


def test_a_batch_of_one_window_files_keeps_every_worker_busy(cluster, frames, tiny_export, tmp_path, capsys):
    folder, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "calls"
    for index in range(4):
        write_video(folder / f"clip{index}.mkv", frames[2 * index:2 * index + 2], lossless=True)
    items = plan(collect_inputs((folder,)), out, "")          # frame folders: lossless, compared below
    probe(items, None, False, {}, dict(start=None, frames=None))
    tiling = dict(window=2, window_overlap=0, tile=None, tile_overlap=16, batch=None)
    description = load_backend(tiny_export("sr")[2])
    prepared = Prepared(description, tiling, resolve_tiling(description, **tiling))
    with RayWindows(Hooked(description, logging_calls, str(log)), workers=2, threads=1) as pool:
        restore_all(items, pool, prepared, quiet=False, options=dict(sigma=None, overwrite=False), interval=0.0)
    assert [item.state for item in items] == ["done"] * 4
    assert driver_references() == {}            # every window's input and result released
    # One backend call per window: windows of different files ran at the same time on the two workers.
    calls = [line.split() for line in log.read_text().splitlines()]
    assert len(calls) == 4 and len({pid for pid, *_ in calls}) == 2
    assert any(float(a[1]) < float(b[2]) and float(b[1]) < float(a[2]) for a in calls for b in calls if a[0] != b[0])
    reference = load_backend(tiny_export("sr")[2], threads=1)
    for index in range(4):
        restore_video(reference, folder / f"clip{index}.mkv", tmp_path / f"reference{index}", **tiling)
        assert np.array_equal(read_all(out / f"clip{index}"), read_all(tmp_path / f"reference{index}"))
    progress = capsys.readouterr().err.splitlines()
    assert progress[0].startswith("rvrt-batch: 0/4 files, ") and ", ETA " in progress[0]
    assert progress[-1].startswith("rvrt-batch: 4/4 files, 4/4 windows on 2 workers, 8 frames, ")
    assert progress[-1].endswith(" fps, ETA 0:00")


def test_batch_restores_the_segment_asked_for(cluster, frames, tiny_export, tmp_path):
    write_video(tmp_path / "clip.mkv", frames, lossless=True)      # 25 frames per second
    command = [str(tiny_export("sr")[2]), str(tmp_path / "clip.mkv"), "-o", str(tmp_path / "out"), "--workers", "2",
               "--threads", "1", "--start", "0.2", "--frames", "7", "--suffix", "png", "--window", "4",
               "--window-overlap", "2", "--tile-overlap", "16", "--quiet"]
    result = CliRunner().invoke(batch_cli, command)
    assert result.exit_code == 0, result.output
    assert "(7 frames, " in result.stdout
    restore_video(load_backend(tiny_export("sr")[2], threads=1), tmp_path / "clip.mkv", tmp_path / "reference",
                  start=0.2, frames=7, window=4, window_overlap=2, tile_overlap=16)
    assert np.array_equal(read_all(tmp_path / "out" / "clip"), read_all(tmp_path / "reference"))


@pytest.fixture(scope="module")
def openvino_single_process(video, openvino_entry, tmp_path_factory):
    """The reference of the OpenVINO runs: the entry restored in this process with two threads, as their worker
    runs it."""
    out = tmp_path_factory.mktemp("openvino-reference") / "out"
    restore_video(load_backend(openvino_entry, runtime="openvino", threads=2), video, out, **OPENVINO_OPTIONS)
    return read_all(out)


def test_rvrt_run_ray_serves_openvino_with_the_frames_of_one_process(cluster, video, openvino_entry,
                                                                      openvino_single_process, tmp_path):
    result = CliRunner().invoke(run_cli, [str(openvino_entry), str(video), "-o", str(tmp_path / "out"), "--runtime",
                                          "openvino", "--ray", "local", "--workers", "1", "--threads", "2",
                                          *OPENVINO_FLAGS])
    assert result.exit_code == 0, result.output
    assert "; openvino float32" in result.stderr and "fps, openvino) -> " in result.stderr
    assert np.array_equal(read_all(tmp_path / "out"), openvino_single_process)


def test_batch_serves_openvino_with_the_frames_of_one_process(cluster, video, openvino_entry, openvino_single_process,
                                                              tmp_path):
    out = tmp_path / "restored"
    result = CliRunner().invoke(batch_cli, [str(openvino_entry), str(video), "-o", str(out), "--runtime", "openvino",
                                            "--workers", "1", "--threads", "2", *OPENVINO_FLAGS])
    assert result.exit_code == 0, result.output
    assert "; openvino float32" in result.stderr and "1 done, 0 failed, 0 skipped in " in result.stdout
    assert np.array_equal(read_all(out / video.name), openvino_single_process)


def test_a_killed_batch_run_again_restores_only_what_is_missing(frames, tiny_export, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    names = ["a.mkv", "b.mkv", "c.mkv", "d.mkv"]
    for name in names:
        write_video(folder / name, frames[:6], lossless=True)
    ray_dir = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))
    command = [sys.executable, "-m", "rvrt_cluster.cli", str(tiny_export("sr")[2]), str(folder), "-o", str(out),
               "--ray", "local", "--workers", "1", "--threads", "1", "--window", "2", "--window-overlap", "0",
               "--tile-overlap", "16", "--quiet"]
    env = {**os.environ, "RAY_TMPDIR": str(ray_dir)}
    try:
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (out / "a.mkv").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first.kill()
        assert first.wait(30) == -signal.SIGKILL
        # Two files are restored at once: the first output is written, another may be; the rest are partial.
        kept = {name: (out / name).read_bytes() for name in names if (out / name).exists()}
        partial = sorted(path.name for path in out.iterdir() if ".partial-" in path.name)
        assert "a.mkv" in kept and len(kept) < len(names) and partial
        for line in ray_processes(ray_dir):          # the killed driver's own cluster: ours to end
            os.kill(int(line.split()[0]), signal.SIGKILL)
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    finally:
        for line in ray_processes(ray_dir):
            os.kill(int(line.split()[0]), signal.SIGKILL)
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[:4] == [f"skipped: {folder / name}: {out / name} exists (--overwrite replaces it)" if name in kept
                         else lines[index] for index, name in enumerate(names)]
    assert all(line.startswith(f"done: {folder / name} -> ") for line, name in zip(lines, names) if name not in kept)
    assert lines[4].startswith(f"{4 - len(kept)} done, 0 failed, {len(kept)} skipped in ")
    assert [f"removed {out / name}: an unfinished output left by a run that was killed" for name in partial] == \
        again.stderr.splitlines()
    assert sorted(path.name for path in out.iterdir()) == names
    assert all((out / name).read_bytes() == content for name, content in kept.items())
    for name in names[1:]:
        assert np.array_equal(read_all(out / name), read_all(out / "a.mkv"))


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
    stderr = batch.stderr.read()
    assert f"rvrt-batch: {message}; the files in progress were not written" in stderr
    assert "Token authentication" not in stderr and "INFO" not in stderr      # Ray's start-up, kept off
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


def driver_references(seconds: float = 5.0) -> dict:
    """Objects this process still references, owned or borrowed (what keeps windows in the object
    stores of the nodes), once Ray has dropped what was released (``ray memory`` reads the same
    counts; it needs grpcio, which Ray's minimal install lacks)."""
    worker = ray._private.worker.global_worker.core_worker
    deadline = time.monotonic() + seconds
    while (held := worker.get_all_reference_counts()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return held


def ray_processes(ray_dir: Path) -> list[str]:
    """'PID COMMAND LINE' of live processes of the Ray cluster kept under ``ray_dir``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(ray_dir) in command:
            found.append(f"{proc.name} {command}")
    return found
