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
import itertools
import logging
import os
import signal
import sys
import threading
import time
import warnings
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
from rvrt_engines.manifest import ArtifactError, read_manifest

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


@contextmanager
def ray_start_messages(verbose: bool) -> Iterator[None]:
    """Ray's start-up lines (its log records, and what it and the processes it starts print to this
    process's standard error, such as the token-authentication warning) go nowhere unless
    ``verbose``; a failure to start is still raised, and reported in one line by the commands."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("ray", "ray.worker", "ray._private.worker")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
        for log, level in zip(loggers, levels):
            log.setLevel(level)


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
        return describe_backend(self.loaded()), ray.get_runtime_context().get_node_id(), os.getpid()

    @ray.method(max_task_retries=-1)
    def ping(self) -> tuple[str, int]:
        """Answers (node id, pid) once the worker is up again after a restart (on another node when
        its node is lost); fails once Ray gave up on it."""
        return ray.get_runtime_context().get_node_id(), os.getpid()

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
    shared or the work waits on a GPU), and failures (windows that failed on it, deaths included).
    ``node``: the Ray node it runs on (its name, by default its IP address, and the start of its
    node id, which tells apart nodes sharing an address)."""

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
        return (f"worker {self.index} (node {self.node}, pid {self.pid}): {count_of(self.windows, 'window')}, "
                f"{count_of(self.frames, 'frame')}, {self.seconds:.1f} s ({self.cpu_seconds:.1f} s CPU){rate}{failed}")


@dataclass
class _Worker:
    actor: object
    stats: WorkerStats
    busy: bool = False
    down: bool = False                  # died; Ray is bringing it back (a ping is out)
    lost: bool = False                  # Ray gave up on it


@dataclass(eq=False)
class _Job:
    """One input window of a video and what became of it."""

    index: int
    window: object                      # ObjectRef of the packed input, dropped once restored
    frames: int
    tiling: Tiling
    result: np.ndarray | None = None
    failed_on: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    out_of_attempts: bool = False


@dataclass
class _Task:
    """A call in flight: a window on a worker (job None once its video was given up) or a ping."""

    worker: _Worker
    job: _Job | None
    ping: bool = False


class Cancelled(RuntimeError):
    """The pool is stopping (the driver was interrupted): windows not handed back are dropped."""


class FileWindows:
    """One video's share of a :class:`RayWindows` pool: a window runner for ``restore_video`` (entering
    and leaving it leaves the pool as it is). Videos restored at once through several of these are
    given the pool's window slots in the order their runners were made: the first wanting a slot
    gets it, so a long video keeps every worker busy and later videos wait, holding no window."""

    def __init__(self, pool: RayWindows, order: int):
        self.pool = pool
        self.order = order
        self.backend = pool.backend

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, windows: Iterable[np.ndarray], tiling: Tiling) -> Iterator[np.ndarray]:
        return self.pool._map(windows, tiling, self.order)


class RayWindows:
    """Restores temporal windows on Ray actors: a window runner like ``rvrt_engines.restore.LocalWindows``.

    load_args: what ``load_backend`` takes (model, task, checkpoint, random_weights, device,
    allow_unvalidated): every worker loads the backend from it once (paths must exist on every
    node). address: ``"local"`` starts a Ray cluster in this process, ``"auto"`` or an address
    joins a running one; when Ray is already initialised in this process, that connection is
    used and left alone. workers: actors (default: one per GPU for backends that need a GPU,
    else one per node with a CPU), each with ``threads`` CPUs (ONNX Runtime / PyTorch threads; default:
    the machine's CPUs shared out on a local cluster, 1 on a joined one) and one GPU where the
    backend needs one. max_in_flight: windows read and not yet handed back, over every video
    restored at once (default 2 per worker): memory stays flat in the videos' length and number.
    attempts: tries per window, on another worker where one is free, before its video stops with
    :class:`WindowFailed`. verbose: let Ray's start-up messages through to standard error.

    Entering starts the workers and loads their backends (load errors are raised as they are);
    ``backend`` then describes the model for ``restore_video``. Entering again while entered
    keeps the same workers; the last exit, also on errors and Ctrl-C, kills the workers and shuts
    down a cluster it started. ``map`` restores one video; ``for_file()`` gives a runner per video
    for several videos restored at once from several threads (``rvrt-batch``): one scheduler
    thread hands windows to idle workers, collects what comes back and resends what a dead worker
    or a lost node took with it.
    """

    def __init__(self, load_args: dict, *, address: str = "local", workers: int | None = 1,
                 threads: int | None = None, max_in_flight: int | None = None, attempts: int = 3,
                 loader: Callable[..., Backend] = load_backend, verbose: bool = False):
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
        self.verbose = verbose
        self.backend: Backend | None = None
        self.retries = 0
        self._depth = 0
        self._connected = False
        self._pool: list[_Worker] = []
        self._needs: tuple[int, int] = (1, 0)
        self._nodes: dict[str, str] = {}
        self._order = itertools.count()
        self._state = threading.Condition()
        # Everything below is guarded by _state; the scheduler thread and the videos' threads share it.
        self._running: dict[object, _Task] = {}
        self._queue: deque[_Job] = deque()
        self._in_flight = 0
        self._waiting: set[int] = set()
        self._fatal: tuple[type[RuntimeError], str] | None = None
        self._stopping = False
        self._checked = 0.0
        self._scheduler: threading.Thread | None = None

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
            with ray_start_messages(self.verbose):
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
            # One per machine that can run one: a head started with --num-cpus 0 only drives.
            alive = sum(1 for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) >= 1)
            self.workers = int(ray.cluster_resources().get("GPU", 0)) if gpus else max(alive, 1)
        self.max_in_flight = self.max_in_flight or 2 * self.workers
        threads = self.threads or self._default_threads()
        self._check_resources(threads, gpus)
        self._needs = (threads, gpus)
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
            worker.stats.node, worker.stats.pid = self._node_name(node), pid
        self.backend = described[0][0]
        self._fatal, self._stopping, self.retries = None, False, 0
        self._scheduler = threading.Thread(target=self._serve, name="ray-windows", daemon=True)
        self._scheduler.start()

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

    def _node_name(self, node_id: str) -> str:
        """'NAME ID8': the node's name in Ray (its IP address unless set otherwise) and the
        start of its id."""
        if node_id not in self._nodes:
            for node in ray.nodes():
                name = node.get("NodeName") or node["NodeManagerAddress"]
                self._nodes[node["NodeID"]] = f"{name} {node['NodeID'][:8]}"
        return self._nodes.get(node_id, node_id[:8])

    def _stop(self) -> None:
        with self._state:
            self._stopping = True
            self._state.notify_all()
        if self._scheduler is not None:
            self._scheduler.join()
            self._scheduler = None
        for worker in self._pool:
            if worker.actor is not None:
                ray.kill(worker.actor, no_restart=True)
                # Its handle holds a reference until dropped; the statistics stay for the summary.
                worker.actor = None
        with self._state:
            self._running.clear()
            self._queue.clear()
        if self._connected:
            ray.shutdown()
            self._connected = False

    def cancel(self, reason: str) -> None:
        """Stop every video being restored: each raises :class:`Cancelled` at its next window."""
        with self._state:
            self._fatal = self._fatal or (Cancelled, reason)
            self._state.notify_all()

    def report(self) -> list[str]:
        """One line per worker: windows, frames, seconds restoring, frames per second, failures."""
        lines = []
        for worker in self._pool:
            gone = " (lost)" if worker.lost else " (died; not back by the end)" if worker.down else ""
            lines.append(worker.stats.line() + gone)
        if self.retries:
            lines.append(f"{count_of(self.retries, 'window')} restored again after a failure")
        return lines

    def for_file(self) -> FileWindows:
        """A runner for one of several videos restored at once; videos get window slots in the order
        their runners were made."""
        return FileWindows(self, next(self._order))

    def map(self, windows: Iterable[np.ndarray], tiling: Tiling) -> Iterator[np.ndarray]:
        """Input windows (n, t, cin, H, W) in order -> restored windows (n, t, 3, H*s, W*s) in the same
        order, restored on the workers with at most ``max_in_flight`` windows read and not yet yielded."""
        return self._map(windows, tiling, next(self._order))

    def _map(self, windows: Iterable[np.ndarray], tiling: Tiling, order: int) -> Iterator[np.ndarray]:
        if not self._depth:
            raise RuntimeError("RayWindows.map needs the workers: use it inside 'with RayWindows(...)'")
        source = iter(windows)
        jobs: dict[int, _Job] = {}
        read = emitted = 0
        exhausted = False
        try:
            while True:
                step = self._next_step(order, jobs, emitted, exhausted)
                if step == "read":
                    lq = next(source, None)
                    if lq is None:
                        exhausted = True
                        with self._state:
                            self._in_flight -= 1
                            self._state.notify_all()
                        continue
                    job = _Job(read, ray.put(pack_window(lq)), lq.shape[1], tiling)
                    del lq
                    with self._state:
                        jobs[read] = job
                        self._queue.append(job)
                        self._dispatch()
                        self._state.notify_all()
                    read += 1
                elif step == "yield":
                    job = jobs.pop(emitted)
                    emitted += 1
                    # A copy: arrays from Ray's object store are read-only, and the copy lets the store
                    # free the result before the caller blends it.
                    restored, job.result = job.result.copy(), None
                    with self._state:
                        self._in_flight -= 1
                        self._state.notify_all()
                    yield restored
                elif step == "done":
                    return
                else:
                    failed = step
                    if not exhausted and failed.index == read - 1:
                        exhausted = next(source, None) is None
                    raise WindowFailed(self._failure_message(failed, tiling, read if exhausted else None))
        finally:
            with self._state:
                for job in jobs.values():
                    if job in self._queue:
                        self._queue.remove(job)
                for task in self._running.values():
                    if task.job is not None and jobs.get(task.job.index) is task.job:
                        task.job = None
                self._in_flight -= len(jobs)
                self._state.notify_all()

    def _next_step(self, order: int, jobs: dict[int, _Job], emitted: int, exhausted: bool):
        """Wait until this video can read a window ("read": a slot is taken for it), hand one back
        ("yield"), is finished ("done") or has a window out of attempts (that window is returned).
        A free slot goes to the first video (in the order of their runners) waiting for one."""
        with self._state:
            if not exhausted:
                self._waiting.add(order)
            try:
                while True:
                    if self._fatal is not None:
                        kind, message = self._fatal
                        raise kind(message)
                    failed = next((job for job in jobs.values() if job.out_of_attempts), None)
                    if failed is not None:
                        return failed
                    if not exhausted and self._in_flight < self.max_in_flight and min(self._waiting) == order:
                        self._in_flight += 1
                        return "read"
                    ready = jobs.get(emitted)
                    if ready is not None and ready.result is not None:
                        return "yield"
                    if exhausted and not jobs:
                        return "done"
                    self._state.wait()
            finally:
                self._waiting.discard(order)

    def _serve(self) -> None:
        """The scheduler thread: hand queued windows to idle workers and account for what comes back."""
        try:
            while True:
                with self._state:
                    if self._stopping:
                        return
                    self._dispatch()
                    self._check_workers()
                    calls = list(self._running)
                    if not calls:
                        self._state.wait(0.5)
                        continue
                ready, _ = ray.wait(calls, num_returns=1, timeout=0.05)
                del calls
                if ready:
                    with self._state:
                        self._complete(ready[0])
                        self._state.notify_all()
                    del ready
        except Exception as err:
            with self._state:
                self._fatal = (RuntimeError, f"the Ray scheduler stopped: {type(err).__name__}: {err}")
                self._state.notify_all()

    def _dispatch(self) -> None:
        """Hand queued windows to idle workers, a retried window to one it has not failed on where possible."""
        while self._queue:
            idle = [worker for worker in self._pool if not (worker.busy or worker.down or worker.lost)]
            if not idle:
                return
            job = self._queue.popleft()
            fresh = [worker for worker in idle if worker.stats.index not in job.failed_on]
            worker = (fresh or idle)[0]
            worker.busy = True
            self._running[worker.actor.restore.remote(job.window, job.tiling)] = _Task(worker, job)

    def _check_workers(self) -> None:
        """With windows waiting and no worker to take them: stop the run when none can come back."""
        if not self._queue or self._fatal is not None:
            return
        if any(not (worker.down or worker.lost) for worker in self._pool):
            return
        if all(worker.lost for worker in self._pool):
            self._fatal = (RuntimeError, f"all {len(self._pool)} Ray workers are lost (each died more than "
                                         f"{WORKER_RESTARTS} times or its node is gone); see the Ray logs")
            self._state.notify_all()
            return
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        threads, gpus = self._needs
        nodes = ray.nodes()
        if any(node["Alive"] and node["Resources"].get("CPU", 0) >= threads and node["Resources"].get("GPU", 0) >= gpus
               for node in nodes):
            return      # Ray brings the workers back there
        gone = sorted({worker.stats.node for worker in self._pool})
        need = count_of(threads, "CPU") + (f" and {count_of(gpus, 'GPU')}" if gpus else "")
        self._fatal = (RuntimeError, f"every Ray worker is lost with its node ({', '.join(gone)}) and no node left in "
                                     f"the cluster has {need} for one: start or rejoin a node (ray start --address "
                                     f"...) and run again")
        self._state.notify_all()

    def _complete(self, ready: object) -> None:
        """Account for one finished call: a restored window, a failure to retry or give up, a ping."""
        task = self._running.pop(ready)
        worker, job = task.worker, task.job
        try:
            value = ray.get(ready)
        except RayActorError as err:
            # Ray keeps the error as the call's value and raises that object again: its traceback
            # would hold these frames, and they the call's reference, so the error would never be freed.
            err.__traceback__ = None
            if task.ping:
                worker.lost = isinstance(err, ActorDiedError)
                worker.down = False
                return
            error = f"worker {worker.stats.index} (pid {worker.stats.pid} on node {worker.stats.node}) died: " \
                    f"{str(err).splitlines()[0]}"
            # A worker that died comes back as a new process (on another node when its node is lost),
            # or not at all: ask before sending it more.
            worker.busy, worker.down = False, True
            self._running[worker.actor.ping.remote()] = _Task(worker, None, ping=True)
        except RayTaskError as err:
            err.__traceback__ = None
            error = f"worker {worker.stats.index} (pid {worker.stats.pid} on node {worker.stats.node}): " \
                    f"{type(err.cause).__name__}: {err.cause}"
            worker.busy = False
        else:
            worker.busy = False
            if task.ping:
                node, worker.stats.pid = value
                worker.stats.node, worker.down = self._node_name(node), False
            else:
                result, seconds, cpu_seconds, worker.stats.pid = value
                if job is not None:
                    worker.stats.windows += 1
                    worker.stats.frames += job.frames
                    worker.stats.seconds += seconds
                    worker.stats.cpu_seconds += cpu_seconds
                    job.result, job.window = result, None
            return
        worker.stats.failures += 1
        if job is None:
            return
        job.failed_on.append(worker.stats.index)
        job.errors.append(error)
        if len(job.errors) >= self.attempts:
            job.out_of_attempts = True
            return
        self.retries += 1
        self._queue.appendleft(job)

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
