"""Several Ray nodes on one machine (``ray.cluster_utils.Cluster``: each node its own raylet, object
store and worker processes), joined as a user joins a cluster (``--ray ADDRESS``): windows spread
over the nodes, a node lost mid-run, the only node with workers lost, a long batch's memory.

What is real here: the nodes, their processes, their object stores and losing them; what is not:
the network between them (every node is on this machine's address), so network partitions and
slow links are not exercised.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

import test_cluster
from rvrt_cluster import RayWindows
from rvrt_engines.restore import restore_video
from rvrt_engines.synthetic import write_video
from rvrt_engines.backends import load_backend
from test_cluster import (OPTIONS, Hooked, driver_references, frames, killed_mid_window, read_all,  # noqa: F401
                          single_process, video)

STORE = 80 * 1024 * 1024
"""Object store per node: small, as a tiny model's windows need little (Ray's floor is 75 MiB)."""
NODE_DEATH = {"health_check_period_ms": 300, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3,
              "health_check_initial_delay_ms": 0}
"""A lost raylet is declared dead after about a second (Ray's default: about 15 s): the same path, sooner."""
FLAGS = ["--window", "6", "--window-overlap", "2", "--tile-overlap", "16"]      # OPTIONS, as command-line flags
WORKER_LINE = re.compile(r"worker (\d+) \(node \S+ ([0-9a-f]{8}), pid \d+\): (\d+) windows?")


@pytest.fixture(scope="module")
def nodes():
    """A head node that runs no workers (as a head without GPUs on a real cluster) and two worker
    nodes with one CPU each; this process is connected to it (in-process tests use the connection)."""
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, object_store_memory=STORE,
                                                                include_dashboard=False, _system_config=NODE_DEATH))
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=STORE)
        cluster.wait_for_nodes()
        cluster.connect()
        ray.cloudpickle.register_pickle_by_value(test_cluster)
        yield cluster
    finally:
        ray.cloudpickle.unregister_pickle_by_value(test_cluster)
        ray.shutdown()
        cluster.shutdown()


def node_of(cluster: Cluster, pid: int):
    """The worker node whose raylet started process ``pid``."""
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return next(node for node in cluster.worker_nodes if node.all_processes["raylet"][0].process.pid == parent)


def batch(cluster: Cluster, *args, **popen) -> subprocess.Popen:
    """rvrt-batch as a user runs it against the cluster (``--ray ADDRESS``)."""
    return subprocess.Popen([sys.executable, "-m", "rvrt_cluster.cli", *map(str, args), "--ray", cluster.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_windows_spread_over_both_nodes_and_give_the_frames_of_one_process(nodes, video, tiny_export, single_process,
                                                                           tmp_path):
    run = batch(nodes, tiny_export("sr")[2], video, "-o", tmp_path, "--workers", "2", "--threads", "1", *FLAGS,
                "--quiet")
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    workers = [WORKER_LINE.match(line).groups() for line in stdout.splitlines() if line.startswith("worker ")]
    assert sorted(node for _, node, _ in workers) == sorted(node.node_id[:8] for node in nodes.worker_nodes)
    assert all(int(windows) >= 1 for *_, windows in workers) and sum(int(w) for *_, w in workers) == 3
    assert np.array_equal(read_all(tmp_path / "frames"), single_process)
    assert stderr == ""


def test_a_node_lost_mid_run_costs_only_its_window(nodes, video, tiny_export, single_process, tmp_path):
    pid_file = str(tmp_path / "pid")
    lost = []

    def lose_its_node():
        while not os.path.exists(pid_file):
            time.sleep(0.05)
        pid = int(Path(pid_file).read_text())
        node = node_of(nodes, pid)
        lost.append(node.node_id)
        nodes.remove_node(node, allow_graceful=False)       # its raylet and object store, killed
        try:
            os.kill(pid, signal.SIGKILL)                    # and its worker, had it outlived its raylet
        except ProcessLookupError:
            pass

    killer = threading.Thread(target=lose_its_node, daemon=True)
    killer.start()
    description = load_backend(tiny_export("sr")[2])
    try:
        with RayWindows(Hooked(description, killed_mid_window, pid_file), address=nodes.address, workers=2,
                        threads=1) as pool:
            restore_video(description, video, tmp_path / "out", windows=pool, **OPTIONS)
            report, stats, retries = pool.report(), pool.stats, pool.retries
        held = driver_references()
    finally:
        killer.join(1)
        nodes.add_node(num_cpus=1, object_store_memory=STORE)
        nodes.wait_for_nodes()
    assert lost and retries == 1 and report[-1] == "1 window restored again after a failure"
    assert sum(s.failures for s in stats) == 1 and sum(s.windows for s in stats) == 3
    [on_lost_node] = [line for line in report if f" {lost[0][:8]}, pid " in line]
    assert on_lost_node.endswith("1 failed (died; not back by the end)")
    assert np.array_equal(read_all(tmp_path / "out"), single_process)
    assert held == {}


@pytest.fixture(scope="module")
def soak_folder(frames, tmp_path_factory):
    """30 inputs: 24 clips of 2 frames, 3 files that only claim to be videos, 3 whose output exists."""
    folder, out = tmp_path_factory.mktemp("soak"), tmp_path_factory.mktemp("soak-out")
    for index in range(24):
        write_video(folder / f"clip{index:02d}.mkv", frames[index % 12:index % 12 + 2], lossless=True)
    for index in range(3):
        (folder / f"broken{index}.mkv").write_bytes(os.urandom(2000 + index))
        write_video(folder / f"restored{index}.mkv", frames[:2], lossless=True)
        (out / f"restored{index}.mkv").write_bytes(b"an earlier run's output")
    return folder, out


def test_a_long_batch_keeps_the_driver_flat_and_its_summary_exact(nodes, soak_folder, tiny_export):
    folder, out = soak_folder
    run = batch(nodes, tiny_export("sr")[2], folder, "-o", out, "--workers", "2", "--threads", "1", "--window", "2",
                "--window-overlap", "0", "--tile-overlap", "16")
    samples = []        # (outputs written, driver RSS in kB)
    status = Path(f"/proc/{run.pid}/status")
    while run.poll() is None:
        try:
            rss = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            break
        samples.append((sum(1 for path in out.glob("clip*.mkv")), rss))
        time.sleep(0.05)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 1, stderr
    lines = stdout.splitlines()
    done = [f"done: {folder / f'clip{i:02d}.mkv'} -> {out / f'clip{i:02d}.mkv'} (2 frames, " for i in range(24)]
    assert sorted(line.split(" s)")[0].rsplit(" ", 1)[0] + " " for line in lines if line.startswith("done:")) == done
    failed = [line for line in lines if line.startswith("failed:")]
    assert [line.split(": ")[1] for line in failed] == [str(folder / f"broken{i}.mkv") for i in range(3)]
    assert all("not a readable video" in line for line in failed)
    assert [line for line in lines if line.startswith("skipped:")] == [
        f"skipped: {folder / f'restored{i}.mkv'}: {out / f'restored{i}.mkv'} exists (--overwrite replaces it)"
        for i in range(3)]
    assert lines[30].startswith("24 done, 3 failed, 3 skipped in ")
    assert sorted(path.name for path in out.iterdir()) == sorted([f"clip{i:02d}.mkv" for i in range(24)] +
                                                                 [f"restored{i}.mkv" for i in range(3)])
    assert [len(read_all(out / f"clip{i:02d}.mkv")) for i in range(24)] == [2] * 24
    # The driver's memory over the first and the last third of the files (start-up left out).
    first = [rss for written, rss in samples if 1 <= written <= 8]
    last = [rss for written, rss in samples if 16 < written < 24]
    assert first and last
    growth = np.mean(last) / np.mean(first) - 1
    print(f"driver RSS: first third {np.mean(first) / 1024:.1f} MiB, last third {np.mean(last) / 1024:.1f} MiB "
          f"({growth:+.1%}, {len(samples)} samples)")
    assert abs(growth) <= 0.10
    assert "rvrt-batch: 24/24 files, 24/24 windows on 2 workers, 48 frames" in stderr, stderr


def test_losing_the_only_nodes_that_run_workers_stops_the_run_in_one_line(nodes, video, tiny_export, tmp_path):
    # Last in this module: it leaves the cluster without a worker node.
    [first, second] = sorted(nodes.worker_nodes, key=lambda node: node.node_id)
    nodes.remove_node(second)
    out = tmp_path / "out"
    run = subprocess.Popen(["rvrt-run", str(tiny_export("sr")[2]), str(video), "-o", str(out), "--ray", nodes.address,
                            "--workers", "1", "--threads", "1", "--window", "2", "--window-overlap", "0",
                            "--tile-overlap", "16", "--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(tmp_path.glob(".out.partial-*/*.png")) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.poll() is None
        nodes.remove_node(first, allow_graceful=False)
        assert run.wait(60) == 1
    finally:
        run.kill()
    lines = run.stderr.read().splitlines()
    assert lines[-1].startswith(f"Error: every Ray worker is lost with its node (") and first.node_id[:8] in lines[-1]
    assert lines[-1].endswith("and no node left in the cluster has 1 CPU for one: start or rejoin a node "
                              "(ray start --address ...) and run again")
    assert sum("Error" in line for line in lines) == 1
    assert list(tmp_path.iterdir()) == []
