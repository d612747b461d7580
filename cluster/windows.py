"""Temporal windows restored by Ray actors: the window runner behind ``rvrt-run --ray`` and ``rvrt-batch``.

RVRT's temporal windows are independent by construction (the official ``test_video``
restores each window on its own and averages the overlaps), so a video's windows can be
restored anywhere. The driver decodes, sends each window through Ray's object store, and
gets the restored windows back in order; blending and encoding stay with the caller
(``restore_video``), so the frames written are the ones a single process writes.

What travels: input windows as the integers they were decoded from (uint8 for 8-bit video,
uint16 for deeper input) whenever the worker's division gives back the very same floats,
which is checked per window (it fails for a denoising sigma plane whose value is not a whole
level: such windows travel as float32); restored windows as float32, because overlapping
frames are averaged before they are rounded to 8 or 16 bits and rounding earlier would change
the output.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from rvrt import Tiling, restore_window
from rvrt_engines.backends import Backend, load_backend
from rvrt_engines.wording import count_of
from rvrt_export.manifest import ArtifactError, read_manifest

WORKER_RESTARTS = 3
"""How often Ray brings a dead worker back (a new process, same resources; on another node
when its node is lost) before the worker counts as lost."""


class WindowFailed(RuntimeError):
    """A temporal window that failed on every attempt; the message names it and the last error."""


def pack_window(lq: np.ndarray) -> np.ndarray:
    """(n, t, cin, H, W) float32 in [0, 1] -> uint8 or uint16 levels where ``unpack_window`` gives
    back the very same floats (4x or 2x less to send), else the float32 array itself."""
    for dtype in (np.uint8, np.uint16):
        top = np.iinfo(dtype).max
        levels = np.clip(np.rint(lq * top), 0, top).astype(dtype)
        if np.array_equal(unpack_window(levels), lq):
            return levels
    return lq


def unpack_window(window: np.ndarray) -> np.ndarray:
    """The inverse of ``pack_window``: the reader's own division of 8- or 16-bit levels, bit for bit."""
    if window.dtype in (np.uint8, np.uint16):
        return window.astype(np.float32) / float(np.iinfo(window.dtype).max)
    return window


@contextmanager
def signal_exceptions_unwrapped():
    """An exception that a signal handler raises while Ray waits (rvrt-run's Terminated on SIGTERM, a
    BaseException) leaves Ray's compiled wait as a SystemError caused by it: raise it as itself."""
    try:
        yield
    except SystemError as err:
        if isinstance(err.__cause__, BaseException) and not isinstance(err.__cause__, Exception):
            raise err.__cause__ from None
        raise


def needs_gpu(load_args: dict) -> bool:
    """True for TensorRT (engine directories, ``runtime='tensorrt'``) and ``device='cuda...'``: one
    GPU per worker."""
    if str(load_args.get("device") or "cpu").startswith("cuda") or load_args.get("runtime") == "tensorrt":
        return True
    model = Path(load_args.get("model", ""))
    if not (model / "manifest.json").is_file():
        return False
    try:
        return "engine" in read_manifest(model)
    except ArtifactError:
        return False


def describe_backend(backend: Backend) -> Backend:
    """What the driver needs of a backend (task, architecture, fixed tile and batch) without its stages."""
    return dataclasses.replace(backend, stages=None)


@ray.remote(max_restarts=WORKER_RESTARTS, max_task_retries=0)
class WindowWorker:
    """One process holding one backend, loaded once, restoring whole temporal windows (all their tiles).

    The backend loads on first use, so a worker that Ray restarts after its process died loads
    it again by itself. Failed windows are not retried here (max_task_retries=0): the driver
    resubmits them, on another worker where it can, and counts the attempts.
    """

    def __init__(self, loader: Callable[..., Backend], load_args: dict, threads: int | None):
        self.loader = loader
        self.load_args = load_args
        self.threads = threads
        self.backend = None

    def loaded(self) -> Backend:
        if self.backend is None:
            self.backend = self.loader(**self.load_args).__enter__()
            if self.threads and "torch" in sys.modules:
                # Eager runtimes compute with PyTorch's pool; ONNX Runtime takes ``threads`` itself.
                sys.modules["torch"].set_num_threads(self.threads)
        return self.backend

    def describe(self) -> tuple[Backend, str, int]:
        return describe_backend(self.loaded()), socket.gethostname(), os.getpid()

    @ray.method(max_task_retries=-1)
    def ping(self) -> int:
        """Answers once the worker is up again after a restart; fails once Ray gave up on it."""
        return os.getpid()

    def restore(self, window: np.ndarray, tiling: Tiling) -> tuple[np.ndarray, float, float, int]:
        """window (n, t, cin, H, W) from ``pack_window`` -> (restored (n, t, 3, H*s, W*s) float32,
        seconds spent, CPU seconds of this process meanwhile, this process's id)."""
        start, cpu = time.perf_counter(), time.process_time()
        backend = self.loaded()
        restored = restore_window(backend.restore, unpack_window(window), backend.config.upscale, tiling,
                                  backend.config.min_tile)
        return restored, time.perf_counter() - start, time.process_time() - cpu, os.getpid()


@dataclass
class WorkerStats:
    """One worker's share of the work: windows restored, their frames, seconds spent restoring,
    the CPU seconds its process used meanwhile (below ``seconds`` x threads when the machine is
    shared or the work waits on a GPU), and failures (windows that failed on it, deaths included)."""

    index: int
    node: str
    pid: int
    windows: int = 0
    frames: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    failures: int = 0

    def line(self) -> str:
        rate = f", {self.frames / self.seconds:.2f} frames/s" if self.seconds else ""
        failed = f", {self.failures} failed" if self.failures else ""
        return (f"worker {self.index} ({self.node}, pid {self.pid}): {count_of(self.windows, 'window')}, "
                f"{count_of(self.frames, 'frame')}, {self.seconds:.1f} s ({self.cpu_seconds:.1f} s CPU){rate}{failed}")


@dataclass
class _Worker:
    actor: object
    stats: WorkerStats
    busy: bool = False
    lost: bool = False


@dataclass
class _Job:
    """One input window of the current video and what became of it."""

    index: int
    window: object                      # ObjectRef of the packed input, kept until the window is done
    frames: int
    result: np.ndarray | None = None
    failed_on: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class _Task:
    """A call in flight: a window on a worker (job None once its video was given up) or a ping."""

    worker: _Worker
    job: _Job | None
    ping: bool = False


class RayWindows:
    """Restores temporal windows on Ray actors: a window runner like ``rvrt_engines.restore.LocalWindows``.

    load_args: what ``load_backend`` takes (model, task, checkpoint, random_weights, device,
    allow_unvalidated): every worker loads the backend from it once (paths must exist on every
    node). address: ``"local"`` starts a Ray cluster in this process, ``"auto"`` or an address
    joins a running one; when Ray is already initialised in this process, that connection is
    used and left alone. workers: actors (default: one per GPU for backends that need a GPU,
    else one per node), each with ``threads`` CPUs (ONNX Runtime / PyTorch threads; default:
    the machine's CPUs shared out on a local cluster, 1 on a joined one) and one GPU where the
    backend needs one. max_in_flight: windows read and not yet handed back (default 2 per
    worker): memory stays flat in the video's length. attempts: tries per window, on another
    worker where one is free, before the run stops with :class:`WindowFailed`.

    Entering starts the workers and loads their backends (load errors are raised as they are);
    ``backend`` then describes the model for ``restore_video``. Entering again while entered
    keeps the same workers (``rvrt-batch`` holds one pool over many ``restore_video`` calls);
    the last exit, also on errors and Ctrl-C, kills the workers and shuts down a cluster it
    started.
    """

    def __init__(self, load_args: dict, *, address: str = "local", workers: int | None = 1,
                 threads: int | None = None, max_in_flight: int | None = None, attempts: int = 3,
                 loader: Callable[..., Backend] = load_backend):
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        if threads is not None and threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.load_args = dict(load_args)
        self.address = address
        self.workers = workers
        self.threads = threads
        self.max_in_flight = max_in_flight
        self.attempts = attempts
        self.loader = loader
        self.backend: Backend | None = None
        self.retries = 0
        self._depth = 0
        self._connected = False
        self._pool: list[_Worker] = []
        self._running: dict[object, _Task] = {}

    @property
    def stats(self) -> list[WorkerStats]:
        return [worker.stats for worker in self._pool]

    def __enter__(self):
        if self._depth:
            self._depth += 1
            return self
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        self._depth = 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if not self._depth:
            self._stop()
        return False

    def _start(self) -> None:
        if not ray.is_initialized():
            options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            main_thread = threading.current_thread() is threading.main_thread()
            previous = signal.getsignal(signal.SIGTERM) if main_thread else None
            if self.address == "local":
                ray.init(**options)
            else:
                ray.init(address=self.address, **options)
            self._connected = True
            if callable(previous):
                # ray.init replaces the SIGTERM handler with one that exits at once; the caller's own
                # (rvrt-run's raises Terminated) unwinds through __exit__, which stops Ray as well.
                signal.signal(signal.SIGTERM, previous)
        gpus = 1 if needs_gpu(self.load_args) else 0
        if self.workers is None:
            alive = sum(1 for node in ray.nodes() if node["Alive"])
            self.workers = int(ray.cluster_resources().get("GPU", 0)) if gpus else alive
        self.max_in_flight = self.max_in_flight or 2 * self.workers
        threads = self.threads or self._default_threads()
        self._check_resources(threads, gpus)
        load_args = {**self.load_args, "threads": threads}
        actors = [WindowWorker.options(num_cpus=threads, num_gpus=gpus).remote(self.loader, load_args, threads)
                  for _ in range(self.workers)]
        self._pool = [_Worker(actor, WorkerStats(index, "", 0)) for index, actor in enumerate(actors)]
        try:
            with signal_exceptions_unwrapped():
                described = ray.get([actor.describe.remote() for actor in actors])
        except RayTaskError as err:
            raise err.cause from None
        for worker, (backend, node, pid) in zip(self._pool, described):
            worker.stats.node, worker.stats.pid = node, pid
        self.backend = described[0][0]

    def _default_threads(self) -> int:
        if not self._connected or self.address != "local":
            return 1
        return max(1, int(ray.cluster_resources().get("CPU", 1)) // self.workers)

    def _check_resources(self, threads: int, gpus: int) -> None:
        """Refuse what the cluster can never hold, instead of waiting forever for a worker."""
        total = ray.cluster_resources()
        cpus, have_gpus = int(total.get("CPU", 0)), int(total.get("GPU", 0))
        if self.workers * threads > cpus:
            raise ValueError(f"--workers {self.workers} with --threads {threads} need {self.workers * threads} CPUs; "
                             f"the Ray cluster has {cpus}: use fewer workers or threads")
        if gpus and not have_gpus:
            # Nothing the options can change: the machines lack it (exit status 1, as for no CUDA).
            raise RuntimeError("this backend needs one GPU per worker and the Ray cluster has no GPU: run it on a "
                               "cluster with NVIDIA GPUs, or serve an ONNX export on the CPU")
        if self.workers * gpus > have_gpus:
            raise ValueError(f"this backend needs one GPU per worker: --workers {self.workers} needs "
                             f"{count_of(self.workers, 'GPU')}, the Ray cluster has {have_gpus}")

    def _stop(self) -> None:
        for worker in self._pool:
            ray.kill(worker.actor, no_restart=True)
        self._running.clear()
        if self._connected:
            ray.shutdown()
            self._connected = False

    def report(self) -> list[str]:
        """One line per worker: windows, frames, seconds restoring, frames per second, failures."""
        lines = [worker.stats.line() + (" (lost)" if worker.lost else "") for worker in self._pool]
        if self.retries:
            lines.append(f"{count_of(self.retries, 'window')} restored again after a failure")
        return lines

    def map(self, windows: Iterable[np.ndarray], tiling: Tiling) -> Iterator[np.ndarray]:
        """Input windows (n, t, cin, H, W) in order -> restored windows (n, t, 3, H*s, W*s) in the same
        order, restored on the workers with at most ``max_in_flight`` windows read and not yet yielded."""
        if not self._depth:
            raise RuntimeError("RayWindows.map needs the workers: use it inside 'with RayWindows(...)'")
        source = iter(windows)
        jobs: dict[int, _Job] = {}
        queue: deque[_Job] = deque()
        read = emitted = 0
        exhausted = False
        try:
            while True:
                while not exhausted and len(jobs) < self.max_in_flight:
                    lq = next(source, None)
                    if lq is None:
                        exhausted = True
                        break
                    jobs[read] = _Job(read, ray.put(pack_window(lq)), lq.shape[1])
                    queue.append(jobs[read])
                    read += 1
                self._dispatch(queue, tiling)
                done = jobs.get(emitted)
                if done is not None and done.result is not None:
                    del jobs[emitted]
                    emitted += 1
                    # A copy: arrays from Ray's object store are read-only.
                    yield done.result.copy()
                    continue
                if not jobs:
                    return
                failed = self._complete_one(queue)
                if failed is not None:
                    if not exhausted and failed.index == read - 1:
                        exhausted = next(source, None) is None
                    raise WindowFailed(self._failure_message(failed, tiling, read if exhausted else None))
        finally:
            for task in self._running.values():
                task.job = None

    def _dispatch(self, queue: deque[_Job], tiling: Tiling) -> None:
        """Hand queued windows to idle workers, a retried window to one it has not failed on where possible."""
        while queue:
            idle = [worker for worker in self._pool if not worker.busy and not worker.lost]
            if not idle:
                if not self._running:
                    raise RuntimeError(f"all {len(self._pool)} Ray workers are lost (each died more than "
                                       f"{WORKER_RESTARTS} times or its node is gone); see the Ray logs")
                return
            job = queue.popleft()
            fresh = [worker for worker in idle if worker.stats.index not in job.failed_on]
            worker = (fresh or idle)[0]
            worker.busy = True
            self._running[worker.actor.restore.remote(job.window, tiling)] = _Task(worker, job)

    def _complete_one(self, queue: deque[_Job]) -> _Job | None:
        """Wait for one call to finish and account for it; returns a window that is out of attempts."""
        with signal_exceptions_unwrapped():
            ready, _ = ray.wait(list(self._running), num_returns=1)
        task = self._running.pop(ready[0])
        worker, job = task.worker, task.job
        try:
            value = ray.get(ready[0])
        except RayActorError as err:
            if task.ping:
                worker.lost = isinstance(err, ActorDiedError)
                worker.busy = False
                return None
            error = f"worker {worker.stats.index} (pid {worker.stats.pid} on {worker.stats.node}) died: " \
                    f"{str(err).splitlines()[0]}"
            # A worker that died comes back as a new process, or not at all: ask before sending it more.
            self._running[worker.actor.ping.remote()] = _Task(worker, None, ping=True)
        except RayTaskError as err:
            error = f"worker {worker.stats.index} (pid {worker.stats.pid} on {worker.stats.node}): " \
                    f"{type(err.cause).__name__}: {err.cause}"
            worker.busy = False
        else:
            worker.busy = False
            if task.ping:
                worker.stats.pid = value
            elif job is not None:
                result, seconds, cpu_seconds, worker.stats.pid = value
                worker.stats.windows += 1
                worker.stats.frames += job.frames
                worker.stats.seconds += seconds
                worker.stats.cpu_seconds += cpu_seconds
                job.result = result
            return None
        worker.stats.failures += 1
        if job is None:
            return None
        job.failed_on.append(worker.stats.index)
        job.errors.append(error)
        if len(job.errors) >= self.attempts:
            return job
        self.retries += 1
        queue.appendleft(job)
        return None

    @staticmethod
    def _failure_message(job: _Job, tiling: Tiling, windows_in_video: int | None) -> str:
        """Names the window by its input frames (counted from 0). Windows start every window - overlap
        frames except the last, which ends on the video's last frame."""
        if windows_in_video == 1 and job.index == 0:
            where = f"window 0 (input frames 0-{job.frames - 1}, the whole video)"
        elif windows_in_video is not None and job.index == windows_in_video - 1:
            where = f"window {job.index} (the video's last {count_of(job.frames, 'input frame')})"
        else:
            first = job.index * (tiling.window - tiling.window_overlap)
            where = f"window {job.index} (input frames {first}-{first + job.frames - 1})"
        return (f"{where} failed {count_of(len(job.errors), 'time')}; last error on {job.errors[-1]}")
