"""Windows of one video spread over Ray workers: restore time for each worker count, side by side in one run.

The full-size SR network (random weights, announced) is exported once with
``rvrt-export onnx --task sr --tile 64 --random-weights`` and cached under runs/. A clip of
``--frames`` LR frames (``--size`` px square, bicubic x4 down of a pan-and-zoom clip) is
restored in windows of ``--window`` frames through ``RayWindows(address="local")`` (what
``rvrt-run --ray local`` uses) with each worker count of ``--workers``, every worker with
``--threads`` ONNX Runtime threads. Printed per run: seconds to start the cluster and load the
model on every worker, seconds restoring (what scales), windows per worker, peak memory of the
driver and of each worker; then the speed-up over the first worker count (wall clock, and from
the CPU seconds of the busiest worker: what the wall clock would give if no other process
took the cores) and whether all outputs are bit-identical (``--single-process`` also compares
with an in-process run).

    python benchmarks/ray_scaling.py                 # 24 frames 64x64, workers 1 and 2, 1 thread each

``--batch`` measures ``rvrt-batch`` instead, as a user runs it (one process per run, ``--ray
local``, start-up included): ``--batch-files`` short files (alternately ``--window`` and
2 x ``--window`` - 2 frames: one and two windows, overlapping by 2) restored with ``--workers 2 --threads 1``, with
``--workers 1`` (its default threads: every core) and with ``--workers 1 --threads 1``. Printed
per run: wall clock, windows and CPU seconds per worker, the driver's peak RSS (GNU time), and
the speed-ups; the outputs of all runs must be bit-identical (lossless frame folders).

    python benchmarks/ray_scaling.py --batch         # 8 files of 1-2 windows of 8 frames 64x64

``--pools`` measures what ``ray.util.ActorPool`` would give instead of RayWindows' own threads, on two
actors that sleep (so the shared cores do not blur it) for windows of uneven cost, 0.1 and 0.5 s
alternately: wall clock of its ordered ``map`` against the greedy bound (every actor busy while windows
are left, which RayWindows' one blocking thread per worker follows), and how many actors it still uses
after one of them died once and Ray brought it back.

    python benchmarks/ray_scaling.py --pools
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from rvrt import Tiling
from rvrt_cluster import RayWindows
from rvrt_engines.backends import load_backend
from rvrt_engines.restore import restore_video
from rvrt_engines.synthetic import degrade, moving_photo_frames, write_video
from rvrt_engines.video import open_frames

ROOT = Path(__file__).resolve().parent.parent


def export(directory: Path) -> Path:
    if (directory / "manifest.json").is_file():
        print(f"export: cached {directory}")
        return directory
    print(f"export: full-size SR network with RANDOM WEIGHTS (outputs are not restorations), tile 64 -> {directory} "
          f"(about 2 min)", flush=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["rvrt-export", "onnx", "--task", "sr", "--tile", "64", "--random-weights", "-o", str(directory)],
                   check=True)
    return directory


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a live local process (a worker on this machine)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_cluster(model: Path, clip: Path, out: Path, workers: int, threads: int, window: int) -> dict:
    began = time.perf_counter()
    with RayWindows({"model": str(model)}, address="local", workers=workers, threads=threads) as pool:
        ready = time.perf_counter()
        summary = restore_video(pool.backend, clip, out, window=window, windows=pool)
        restoring = time.perf_counter() - ready
        workers_rss = [peak_rss_mib(stats.pid) for stats in pool.stats]
        report = pool.report()
        busiest_cpu = max(stats.cpu_seconds for stats in pool.stats)
    return dict(start=ready - began, restore=restoring, frames=summary.frames, report=report, rss=workers_rss,
                cpu=busiest_cpu)


WORKER = re.compile(r"worker (\d+) \(node .*?, pid \d+\): (\d+) windows?, .*?, ([\d.]+) s \(([\d.]+) s CPU\)")


def run_batch(model: Path, folder: Path, out: Path, workers: int, threads: int | None, window: int) -> dict:
    """One ``rvrt-batch --ray local`` process over ``folder``: wall clock, per-worker windows and CPU seconds,
    the peak RSS GNU time reports for it."""
    command = ["rvrt-batch", str(model), str(folder), "-o", str(out), "--suffix", "png", "--ray", "local",
               "--workers", str(workers), "--window", str(window), "--quiet"]
    if threads:
        command += ["--threads", str(threads)]
    began = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "peak-rss-kb %M", *command], capture_output=True, text=True)
    wall = time.perf_counter() - began
    if result.returncode:
        sys.exit(f"rvrt-batch failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    peak = next(int(line.split()[1]) for line in result.stderr.splitlines() if line.startswith("peak-rss-kb "))
    workers_seen = [WORKER.match(line).groups() for line in result.stdout.splitlines() if line.startswith("worker ")]
    return dict(wall=wall, peak=peak / 1024, windows=[int(w[1]) for w in workers_seen],
                cpu=max(float(w[3]) for w in workers_seen), lines=result.stdout.splitlines())


def batch_case(args, model: Path, scratch: Path) -> bool:
    size = args.size * 4
    folder = scratch / "files"
    folder.mkdir()
    windows = 0
    for index in range(args.batch_files):
        frames = 2 * args.window - 2 if index % 2 else args.window
        write_video(folder / f"file{index}.mkv", degrade(moving_photo_frames(frames, size, size, seed=index), "sr"),
                    lossless=True)
        windows += 1 + (index % 2)
    print(f"batch: {args.batch_files} files of {args.window} and {2 * args.window - 2} frames {args.size}x{args.size} "
          f"({windows} windows of {args.window}, overlap 2), rvrt-batch --ray local on "
          f"{len(os.sched_getaffinity(0))} cores; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    runs = {"--workers 2 --threads 1": (2, 1), "--workers 1": (1, None), "--workers 1 --threads 1": (1, 1)}
    results, outputs = {}, {}
    for name, (workers, threads) in runs.items():
        outputs[name] = scratch / f"batch-out-{workers}-{threads}"
        results[name] = result = run_batch(model, folder, outputs[name], workers, threads, args.window)
        print(f"{name}: {result['wall']:.1f} s, windows per worker {result['windows']}, CPU seconds of the busiest "
              f"worker {result['cpu']:.1f}, driver peak RSS {result['peak']:.0f} MiB; load average "
              f"{os.getloadavg()[0]:.2f}", flush=True)
    two = results["--workers 2 --threads 1"]
    for name in list(runs)[1:]:
        one = results[name]
        print(f"speed-up --workers 2 --threads 1 vs {name}: {one['wall'] / two['wall']:.2f}x wall clock "
              f"(start-up included); busiest worker's CPU seconds {one['cpu']:.1f} vs {two['cpu']:.1f} s: "
              f"{one['cpu'] / two['cpu']:.2f}x")
    first = outputs["--workers 2 --threads 1"]
    identical = all(np.array_equal(np.stack(list(open_frames(first / f"file{index}"))),
                                   np.stack(list(open_frames(path / f"file{index}"))))
                    for path in outputs.values() for index in range(args.batch_files))
    print(f"outputs bit-identical ({', '.join(runs)}): {'yes' if identical else 'NO'}")
    for path in outputs.values():
        shutil.rmtree(path)
    return identical


class Sleeping:
    """A description whose backend sleeps for the seconds written in each window's first value (×10): what
    RayWindows' workers open in ``--pools``."""

    needs_gpu = False

    def with_threads(self, threads):
        return self

    @contextlib.contextmanager
    def open(self):
        def restore(lq):
            time.sleep(float(lq.flat[0]) * 10)
            return np.repeat(lq[:, :, :1], 3, axis=2)
        yield types.SimpleNamespace(config=types.SimpleNamespace(upscale=1, min_tile=8), restore=restore)


def pools_case() -> None:
    import ray
    from ray.util import ActorPool

    @ray.remote(max_restarts=1)
    class Sleeper:
        def run(self, seconds: float) -> int:
            time.sleep(seconds)
            return os.getpid()

    costs = [0.1, 0.5] * 8
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        actors = [Sleeper.remote() for _ in range(2)]
        ray.get([actor.run.remote(0) for actor in actors])
        began = time.perf_counter()
        list(ActorPool(actors).map(lambda actor, cost: actor.run.remote(cost), costs))
        ordered = time.perf_counter() - began
        with RayWindows(Sleeping(), workers=2, threads=1) as windows:
            began = time.perf_counter()
            list(windows.map((np.full((1, 1, 1, 8, 8), cost / 10, np.float32) for cost in costs),
                             Tiling(window=1, tile=8, tile_overlap=0)))
            ours = time.perf_counter() - began
        print(f"pools: {len(costs)} windows of 0.1 and 0.5 s on 2 actors: ActorPool.map {ordered:.2f} s, RayWindows "
              f"{ours:.2f} s, greedy bound {sum(costs) / 2:.2f} s ({ordered / (sum(costs) / 2):.2f}x and "
              f"{ours / (sum(costs) / 2):.2f}x)")
        first = ray.get(actors[0].run.remote(0))
        pool = ActorPool(actors)
        for _ in actors:
            pool.submit(lambda actor, cost: actor.run.remote(cost), 3.0)
        time.sleep(1.0)
        os.kill(first, signal.SIGKILL)
        for _ in actors:
            try:
                pool.get_next_unordered()
            except ray.exceptions.RayActorError:
                pass
        back = ray.get(actors[0].run.remote(0), timeout=60)
        for _ in range(6):
            pool.submit(lambda actor, cost: actor.run.remote(cost), 0.2)
        pids = set()
        while pool.has_next():
            pids.add(pool.get_next_unordered())
        print(f"pools: after one actor died and Ray brought it back (pid {first} -> {back}), ActorPool used "
              f"{len(pids)} of 2 actors for the next 6 windows")
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=64, help="LR frame width and height")
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per worker")
    parser.add_argument("--export", type=Path, default=ROOT / "runs" / "ray-scaling" / "sr-tile64-random")
    parser.add_argument("--single-process", action="store_true",
                        help="also restore in this process (same threads) and compare")
    parser.add_argument("--batch", action="store_true", help="measure rvrt-batch over many short files instead")
    parser.add_argument("--batch-files", type=int, default=8)
    parser.add_argument("--pools", action="store_true", help="measure ray.util.ActorPool on sleeping actors instead")
    args = parser.parse_args()
    if args.pools:
        return pools_case()

    model = export(args.export)
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as scratch:
        scratch = Path(scratch)
        if args.batch:
            sys.exit(0 if batch_case(args, model, scratch) else 1)
        size = args.size * 4
        clip = scratch / "clip"
        write_video(clip, degrade(moving_photo_frames(args.frames, size, size, seed=7), "sr"))
        print(f"clip: {args.frames} frames {args.size}x{args.size} (PNG), windows of {args.window}, "
              f"{args.threads} thread(s) per worker, --ray local on {len(os.sched_getaffinity(0))} cores", flush=True)
        outputs, results = {}, {}
        for workers in args.workers:
            outputs[workers] = scratch / f"out-{workers}"
            results[workers] = run_cluster(model, clip, outputs[workers], workers, args.threads, args.window)
            result = results[workers]
            print(f"workers {workers}: start {result['start']:.1f} s, restore {result['restore']:.1f} s "
                  f"({result['frames'] / result['restore']:.3f} fps), worker peak RSS "
                  f"{', '.join(f'{rss:.0f}' for rss in result['rss'])} MiB", flush=True)
            for line in result["report"]:
                print(f"    {line}")
        if args.single_process:
            outputs["single"] = scratch / "out-single"
            began = time.perf_counter()
            restore_video(load_backend(model, threads=args.threads), clip, outputs["single"], window=args.window)
            print(f"single process: {time.perf_counter() - began:.1f} s (model load included)")
        frames = {key: np.stack(list(open_frames(path))) for key, path in outputs.items()}
        first = args.workers[0]
        for workers in args.workers[1:]:
            base, other = results[first], results[workers]
            print(f"speed-up {workers} vs {first} workers: restore {base['restore'] / other['restore']:.2f}x, "
                  f"start included {(base['restore'] + base['start']) / (other['restore'] + other['start']):.2f}x; "
                  f"CPU seconds of the busiest worker {base['cpu']:.1f} vs {other['cpu']:.1f} s: "
                  f"{base['cpu'] / other['cpu']:.2f}x where each worker has its cores to itself")
        identical = all(np.array_equal(frames[first], other) for other in frames.values())
        print(f"outputs bit-identical ({', '.join(map(str, outputs))}): {'yes' if identical else 'NO'}")
        print(f"driver peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        if not identical:
            sys.exit(1)


if __name__ == "__main__":
    main()
