"""Temporal windows restored by Ray actors: the window runner behind ``rvrt-run --ray`` and ``rvrt-batch``.

RVRT's temporal windows are independent by construction (the official ``test_video`` restores each window
on its own and averages the overlaps), so a video's windows can be restored anywhere. The driver decodes,
sends each window through Ray's object store and gets the restored windows back in order; blending and
encoding stay with the caller (``restore_video``), so the frames written are the ones one process writes.

What travels: input windows as the integers they were decoded from (uint8 for 8-bit video, uint16 for deeper
input) whenever the worker's division gives back the very same floats, checked per window (not so for a
denoising sigma plane whose value is not a whole level: such windows travel as float32); restored windows as
float32, because overlapping frames are averaged before they are rounded and rounding earlier would change
the output.

What Ray does here: placing the workers (one actor each, its CPUs and GPU), bringing a dead one back
(``max_restarts``: a new process, on another node when its node is lost), moving windows, and blocking until
a call ends. Why not Ray's own pools, measured with ``python benchmarks/ray_scaling.py --pools`` (two actors
that sleep 0.1 and 0.5 s alternately, 16 windows, so that the shared cores do not blur it): ActorPool's
ordered ``map`` took 4.03 s, this module 2.66 s, against 2.40 s with every actor busy while windows are left.

- ``ray.util.ActorPool`` frees an actor only when its result is collected, and ``get_next`` collects in
  submission order, so a worker done with a short window idles behind a long one (above: 1.68x the bound).
  It holds one stream for the whole pool and is not thread-safe, where ``rvrt-batch`` restores several
  files at once, each in order; after a failed call it hands the actor back to the next submit, which waits
  there for a restart that never comes when the actor's node is lost (read from its source).
- Ray Data's ``map_batches`` over an actor pool needs pyarrow and pandas, which the ``[cluster]`` extra
  (``ray`` alone) lacks; it reads its input itself, where windows are decoded lazily by the driver from files
  only the driver may have (``from_items`` would hold every window at once), and its actor pool belongs to
  one dataset: one per file would load the model once per file.

So the scheduler is one driver thread per worker: it takes the most urgent window (the earliest file's, then
the earliest window) from a shared queue, blocks on its call, and puts it back for any worker when the call
failed. Memory stays flat: at most ``max_in_flight`` windows are read and not yet handed back, over every
video restored at once.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from rvrt import Tiling, restore_window
from rvrt_engines.backends import Description
from rvrt_engines.wording import count_of

WORKER_RESTARTS = 3
"""How often Ray brings a dead worker back (a new process, same resources; on another node when its node is
lost) before the worker counts as lost."""

class WindowFailed(RuntimeError):
    """A temporal window that failed on every attempt; the message names it and the last error."""


class Cancelled(RuntimeError):
    """The pool is stopping (the driver was interrupted): windows not handed back are dropped."""


def pack_window(lq: np.ndarray) -> np.ndarray:
    """(n, t, cin, H, W) float32 in [0, 1] -> uint8 or uint16 levels where ``unpack_window`` gives back the
    very same floats (4x or 2x less to send), else the float32 array itself."""
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
    process's standard error, such as the token-authentication warning) go nowhere unless ``verbose``; a
    failure to start is still raised, and reported in one line by the commands."""
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


@ray.remote(max_restarts=WORKER_RESTARTS, max_task_retries=0)
class WindowWorker:
    """One process holding one backend, opened once, restoring whole temporal windows (all their tiles).

    The backend opens on first use, so a worker that Ray restarts after its process died opens it again by
    itself. Failed windows are not retried here (max_task_retries=0): the driver puts them back for any
    worker and counts the attempts.
    """

    def __init__(self, description: Description, threads: int, driver_directory: str):
        # The job's working_dir (an empty folder: see RayWindows._connect) keeps the driver's folder off this
        # process's import path; its current directory is the driver's again where this node has that
        # folder, so relative paths in the description mean what they mean to the driver.
        if os.path.isdir(driver_directory):
            os.chdir(driver_directory)
        self.description = description.with_threads(threads)
        self.opened = None
        self.backend = None

    @ray.method(max_task_retries=-1)
    def where(self) -> tuple[str, int]:
        """(node id, pid) once the backend is open: at start, and once Ray brought the worker back."""
        if self.backend is None:
            self.opened = self.description.open()
            self.backend = self.opened.__enter__()
        return ray.get_runtime_context().get_node_id(), os.getpid()

    def restore(self, window: np.ndarray, tiling: Tiling) -> tuple[np.ndarray, float, float, int]:
        """window (n, t, cin, H, W) from ``pack_window`` -> (restored (n, t, 3, H*s, W*s) float32, seconds
        spent, CPU seconds of this process meanwhile, this process's id)."""
        start, cpu = time.perf_counter(), time.process_time()
        self.where()
        config = self.backend.config
        restored = restore_window(self.backend.restore, unpack_window(window), config.upscale, tiling,
                                  config.min_tile)
        return restored, time.perf_counter() - start, time.process_time() - cpu, os.getpid()


@dataclass
class WorkerStats:
    """One worker's share of the work: windows restored, their frames, seconds spent restoring, the CPU
    seconds its process used meanwhile (below ``seconds`` x threads when the machine is shared or the work
    waits on a GPU), and failures (windows that failed on it, deaths included). ``node``: the Ray node it
    runs on (its name, by default its IP address, and the start of its node id, which tells apart nodes
    sharing an address)."""

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
    down: bool = False                  # died; Ray is bringing it back
    lost: bool = False                  # Ray gave up on it


@dataclass(eq=False)
class _Job:
    """One input window of a video: ``key`` (the video's runner, the window's index) orders the queue."""

    key: tuple[int, int]
    window: object                      # ObjectRef of the packed input, dropped once restored
    frames: int
    tiling: Tiling
    done: Future = field(default_factory=Future)
    errors: list[str] = field(default_factory=list)

    def __lt__(self, other: _Job) -> bool:
        return self.key < other.key


def _settle(future: Future, result=None, error: BaseException | None = None) -> None:
    """Set a window's outcome unless it has one already (a give-up and a late result may race)."""
    try:
        future.set_exception(error) if error is not None else future.set_result(result)
    except InvalidStateError:
        pass


class FileWindows:
    """One video's share of a :class:`RayWindows` pool: a window runner for ``restore_video`` (entering and
    leaving it leaves the pool as it is). The windows of videos restored at once through several of these go
    to the workers in the order their runners were made, so a long video keeps every worker busy and later
    videos' windows wait."""

    def __init__(self, pool: RayWindows, order: int):
        self.pool = pool
        self.order = order

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, windows: Iterable[np.ndarray], tiling: Tiling, spans: Sequence[tuple[int, int]] = ()
            ) -> Iterator[np.ndarray]:
        return self.pool._map(windows, tiling, self.order, spans)


class RayWindows:
    """Restores temporal windows on Ray actors: a window runner like ``rvrt_engines.restore.LocalWindows``.

    description: what every worker opens once (``Description.open``; paths must exist on every node, or the
    description says how a node makes them). address: ``"local"`` starts a Ray cluster in this process,
    ``"auto"`` or an address joins a running one; when Ray is already initialised in this process, that
    connection is used and left alone. workers: actors (default: one per GPU for descriptions that need a
    GPU, else one per node with a CPU), each with ``threads`` CPUs (default: the machine's CPUs shared out
    on a local cluster, 1 on a joined one) and one GPU where the description needs one. max_in_flight:
    windows read and not yet handed back, over every video restored at once (default 2 per worker).
    attempts: tries per window, on whichever worker is free, before its video stops with
    :class:`WindowFailed`. verbose: let Ray's start-up messages through to standard error.

    Entering starts the workers and opens their backends (errors opening them are raised as they are);
    entering again while entered keeps the same workers; the last exit, also on errors and Ctrl-C, kills
    the workers and shuts down a cluster it started. ``map`` restores one video; ``for_file()`` gives a
    runner per video for several videos restored at once from several threads (``rvrt-batch``).
    """

    def __init__(self, description: Description, *, address: str = "local", workers: int | None = None,
                 threads: int | None = None, max_in_flight: int | None = None, attempts: int = 3,
                 verbose: bool = False):
        for name, value in (("--workers", workers), ("--threads", threads), ("max_in_flight", max_in_flight)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.description = description
        self.address = address
        self.workers = workers
        self.threads = threads
        self.max_in_flight = max_in_flight
        self.attempts = attempts
        self.verbose = verbose
        self.retries = 0
        self._depth = 0
        self._connected = False
        self._pool: list[_Worker] = []
        self._needs = (1, 0)
        self._nodes: dict[str, str] = {}
        self._order = itertools.count()
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._slots = threading.Semaphore(0)
        self._lock = threading.Lock()           # statistics, _live and _fatal
        self._live: set[_Job] = set()
        self._fatal: BaseException | None = None
        self._threads: list[threading.Thread] = []

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

    def _connect(self) -> None:
        options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        if self.address != "local":
            options["address"] = self.address
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if main_thread else None
        # With a working_dir, Ray does not put the driver's folder first on the workers' import path, where
        # a folder named like one of our packages (a checkout called rvrt) would shadow the installed one.
        # An empty folder: Ray packs it at start, so it can go at once.
        with tempfile.TemporaryDirectory(prefix="rvrt-ray-") as empty, ray_start_messages(self.verbose):
            ray.init(runtime_env={"working_dir": empty}, **options)
        self._connected = True
        if callable(previous):
            # ray.init replaces the SIGTERM handler with one that exits at once; the caller's own (rvrt-run's
            # raises Terminated) unwinds through __exit__, which stops Ray as well.
            signal.signal(signal.SIGTERM, previous)

    def _start(self) -> None:
        if not ray.is_initialized():
            self._connect()
        gpus = 1 if self.description.needs_gpu else 0
        if self.workers is None:
            # One per machine that can run one: a head started with --num-cpus 0 only drives.
            alive = sum(1 for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) >= 1)
            self.workers = int(ray.cluster_resources().get("GPU", 0)) if gpus else max(alive, 1)
        self.max_in_flight = self.max_in_flight or 2 * self.workers
        self._slots = threading.Semaphore(self.max_in_flight)
        threads = self.threads or self._default_threads()
        self._check_resources(threads, gpus)
        self._needs = (threads, gpus)
        actors = [WindowWorker.options(num_cpus=threads, num_gpus=gpus).remote(self.description, threads,
                                                                                os.getcwd())
                  for _ in range(self.workers)]
        self._pool = [_Worker(actor, WorkerStats(index, "", 0)) for index, actor in enumerate(actors)]
        try:
            with signal_exceptions_unwrapped():
                started = ray.get([actor.where.remote() for actor in actors])
        except RayTaskError as err:
            raise err.cause from None
        for worker, (node, pid) in zip(self._pool, started):
            worker.stats.node, worker.stats.pid = self._node_name(node), pid
        self._fatal, self.retries = None, 0
        self._threads = [threading.Thread(target=self._serve, args=(worker,), name=f"ray-worker-{worker.stats.index}",
                                          daemon=True) for worker in self._pool]
        for thread in self._threads:
            thread.start()

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
        """'NAME ID8': the node's name in Ray (its IP address unless set otherwise) and the start of its id."""
        if node_id not in self._nodes:
            for node in ray.nodes():
                name = node.get("NodeName") or node["NodeManagerAddress"]
                self._nodes[node["NodeID"]] = f"{name} {node['NodeID'][:8]}"
        return self._nodes.get(node_id, node_id[:8])

    def _stop(self) -> None:
        self._give_up(Cancelled("the Ray workers are stopping"))
        for worker in self._pool:
            if worker.actor is not None:
                # A call in flight fails at once, and its thread ends on the stop below.
                ray.kill(worker.actor, no_restart=True)
        for index in range(len(self._threads)):
            self._queue.put(((-1, index), None))
        for thread in self._threads:
            thread.join()
        self._threads = []
        for worker in self._pool:
            # Its handle holds a reference until dropped; the statistics stay for the summary.
            worker.actor = None
        self._queue = queue.PriorityQueue()
        if self._connected:
            ray.shutdown()
            self._connected = False

    def _give_up(self, error: BaseException) -> None:
        """Every window not handed back fails with ``error``, and so does every window sent from now on."""
        with self._lock:
            self._fatal = self._fatal or error
            live = list(self._live)
        for job in live:
            _settle(job.done, error=self._fatal)

    def cancel(self, reason: str) -> None:
        """Stop every video being restored: each raises :class:`Cancelled` at its next window."""
        self._give_up(Cancelled(reason))

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
        """A runner for one of several videos restored at once; their windows go to the workers in the order
        the runners were made."""
        return FileWindows(self, next(self._order))

    def map(self, windows: Iterable[np.ndarray], tiling: Tiling, spans: Sequence[tuple[int, int]] = ()
            ) -> Iterator[np.ndarray]:
        """Input windows (n, t, cin, H, W) in order -> restored windows (n, t, 3, H*s, W*s) in the same order,
        restored on the workers with at most ``max_in_flight`` windows read and not yet yielded. ``spans``: the
        input frames [start, stop) of each window, as far as known when it is read (scene cuts move them off
        the tiling's regular starts); a window that fails is named by them."""
        return self._map(windows, tiling, next(self._order), spans)

    def _map(self, windows: Iterable[np.ndarray], tiling: Tiling, order: int, spans: Sequence[tuple[int, int]] = ()
             ) -> Iterator[np.ndarray]:
        if not self._depth:
            raise RuntimeError("RayWindows.map needs the workers: use it inside 'with RayWindows(...)'")
        source = iter(windows)
        pending: deque[_Job] = deque()          # read, not yet handed back: a slot each
        read, exhausted = 0, False
        try:
            while True:
                # Read ahead while slots are free; wait for one only with nothing to hand back.
                while not exhausted and self._slots.acquire(blocking=not pending):
                    lq = next(source, None)
                    if lq is None:
                        self._slots.release()
                        exhausted = True
                        break
                    pending.append(self._send(_Job((order, read), ray.put(pack_window(lq)), lq.shape[1], tiling)))
                    del lq
                    read += 1
                if not pending:
                    return
                job = pending[0]
                try:
                    # A copy: arrays from Ray's object store are read-only, and the copy lets the store free
                    # the result before the caller blends it.
                    restored = job.done.result().copy()
                except WindowFailed:
                    if not exhausted and job.key[1] == read - 1:
                        exhausted = next(source, None) is None
                    raise WindowFailed(self._failure_message(job, tiling, read if exhausted else None, spans)) from None
                pending.popleft()
                self._slots.release()
                with self._lock:
                    self._live.discard(job)
                del job
                yield restored
        finally:
            with self._lock:
                self._live.difference_update(pending)
            for job in pending:
                _settle(job.done, error=Cancelled("its video was given up"))
                # The failure's traceback holds this frame and so ``pending``: the inputs must not stay with it.
                job.window = None
                self._slots.release()

    def _send(self, job: _Job) -> _Job:
        with self._lock:
            self._live.add(job)
            fatal = self._fatal
        if fatal is not None:
            _settle(job.done, error=fatal)
        else:
            self._queue.put((job.key, job))
        return job

    def _serve(self, worker: _Worker) -> None:
        """A worker's driver thread: the most urgent window from the queue, one call at a time."""
        while True:
            _, job = self._queue.get()
            if job is None:
                return
            if not job.done.done() and not self._restore(worker, job):
                return

    def _restore(self, worker: _Worker, job: _Job) -> bool:
        """One window on ``worker``; False once the worker is gone (or the pool stops)."""
        window = job.window
        if window is None:                      # given up (its video failed) since it was queued
            return True
        try:
            restored, seconds, cpu_seconds, worker.stats.pid = ray.get(worker.actor.restore.remote(window, job.tiling))
        except RayActorError as err:
            # Ray keeps the error as the call's value and raises that object again: its traceback would hold
            # these frames, and they the call's reference, so the error would never be freed.
            err.__traceback__ = None
            if self._fatal is not None:
                return False
            self._failed(worker, job, f"worker {worker.stats.index} (pid {worker.stats.pid} on node "
                                      f"{worker.stats.node}) died: {str(err).splitlines()[0]}")
            return self._back(worker)
        except RayTaskError as err:
            err.__traceback__ = None
            self._failed(worker, job, f"worker {worker.stats.index} (pid {worker.stats.pid} on node "
                                      f"{worker.stats.node}): {type(err.cause).__name__}: {err.cause}")
            return True
        with self._lock:
            worker.stats.windows += 1
            worker.stats.frames += job.frames
            worker.stats.seconds += seconds
            worker.stats.cpu_seconds += cpu_seconds
        job.window = None
        _settle(job.done, restored)
        return True

    def _failed(self, worker: _Worker, job: _Job, error: str) -> None:
        """Count a failed call; the window goes back to the queue (first in line) or, out of attempts, fails."""
        with self._lock:
            worker.stats.failures += 1
            job.errors.append(error)
            again = len(job.errors) < self.attempts and not job.done.done()
            self.retries += again
        if again:
            self._queue.put((job.key, job))
        else:
            _settle(job.done, error=WindowFailed(error))

    def _back(self, worker: _Worker) -> bool:
        """Wait for a dead worker to come back (True), or for Ray to give up on it (False). While every
        worker is down, the run stops once no node left could hold one."""
        worker.down = True
        ping = worker.actor.where.remote()
        while True:
            try:
                node, worker.stats.pid = ray.get(ping, timeout=1.0)
            except GetTimeoutError:
                if self._fatal is not None:
                    return False
                if all(other.down or other.lost for other in self._pool) and not self._room_for_a_worker():
                    gone = sorted({other.stats.node for other in self._pool})
                    threads, gpus = self._needs
                    need = count_of(threads, "CPU") + (f" and {count_of(gpus, 'GPU')}" if gpus else "")
                    self._give_up(RuntimeError(
                        f"every Ray worker is lost with its node ({', '.join(gone)}) and no node left in the "
                        f"cluster has {need} for one: start or rejoin a node (ray start --address ...) and run again"))
                    return False
                continue
            except RayActorError as err:
                err.__traceback__ = None
                if self._fatal is not None:
                    return False            # killed by _stop: it stays "not back by the end"
                worker.down, worker.lost = False, True
                if all(other.lost for other in self._pool):
                    self._give_up(RuntimeError(f"all {len(self._pool)} Ray workers are lost (each died more than "
                                               f"{WORKER_RESTARTS} times or its node is gone); see the Ray logs"))
                return False
            worker.stats.node, worker.down = self._node_name(node), False
            return True

    def _room_for_a_worker(self) -> bool:
        threads, gpus = self._needs
        return any(node["Alive"] and node["Resources"].get("CPU", 0) >= threads
                   and node["Resources"].get("GPU", 0) >= gpus for node in ray.nodes())

    @staticmethod
    def _failure_message(job: _Job, tiling: Tiling, windows_in_video: int | None,
                         spans: Sequence[tuple[int, int]] = ()) -> str:
        """Names the window by its input frames (counted from 0): its span where known, else from the tiling
        (windows start every window - overlap frames except the last, which ends on the video's last frame)."""
        index = job.key[1]
        if windows_in_video == 1 and index == 0:
            where = f"window 0 (input frames 0-{job.frames - 1}, the whole video)"
        elif index < len(spans):
            where = f"window {index} (input frames {spans[index][0]}-{spans[index][1] - 1})"
        elif windows_in_video is not None and index == windows_in_video - 1:
            where = f"window {index} (the video's last {count_of(job.frames, 'input frame')})"
        else:
            first = index * (tiling.window - tiling.window_overlap)
            where = f"window {index} (input frames {first}-{first + job.frames - 1})"
        return f"{where} failed {count_of(len(job.errors), 'time')}; last error on {job.errors[-1]}"
