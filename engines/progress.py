"""Honest progress: work counted at the finest step the runner reports (each backend stage call
inside a tile, each tile, each window), frames per second and ETA from measured throughput.

Work is measured in window-frames (a frame in two overlapping windows counts twice, as it is
computed twice) and shown in frames of the video; the ETA is elapsed time per unit of work
done so far times the work left. Stage calls differ in cost (a flow pair is a fraction of a
propagation step with its deformable attention), so the steps of a backend call are weighted
by the time each took in the last whole call, and no ETA is given before a whole call (a
group of tiles) or window has been measured: counted by steps alone, the flows and extractions
that come first made the ETA of a window climb from 0:37 to 3:25.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field

import click
from tqdm import tqdm


@dataclass
class Status:
    """Where a restore stands. ``total`` None: a stream of unknown length."""

    frames_written: int = 0
    total: int | None = None
    work_done: float = 0.0
    work_total: float | None = None
    window: int = 0
    tiles_done: int = 0
    tiles: int = 0
    measured: bool = False   # a whole backend call or window is done: the rate is known
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def frames_done(self) -> float:
        """Frames' worth of computation finished (fractional)."""
        if self.total and self.work_total:
            return self.total * self.work_done / self.work_total
        return float(self.frames_written)

    @property
    def fps(self) -> float:
        return self.frames_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if not self.work_total or self.work_done <= 0 or not self.measured:
            return None
        return self.elapsed / self.work_done * (self.work_total - self.work_done)


class Meter:
    """Turns runner events into a :class:`Status` and passes it to ``report`` on every change.

    A window is ``calls`` backend calls (groups of tiles), each of ``steps`` stage calls (flow
    pairs, clip extractions, propagation steps, reconstructions); runners that report nothing
    inside a window advance the work by whole windows."""

    def __init__(self, report=None, total: int | None = None, window_lengths: list[int] | None = None):
        self.report = report
        self.status = Status(total=total, work_total=float(sum(window_lengths)) if window_lengths else None)
        self.completed_work = 0.0
        self.length = 0
        self.calls = self.calls_done = self.steps = self.steps_per_call = 0
        self.call_started = 0.0
        self.step_ends: list[float] = []   # when each stage call of the current backend call ended
        self.shares: list[float] = []      # of the last whole call: its time spent by the end of each step

    def window_started(self, index: int, length: int, calls: int = 0, steps: int = 0) -> None:
        self.status.window, self.length = index, length
        self.calls, self.steps_per_call, self.calls_done, self.steps = calls, steps, 0, 0
        self._call_begins()

    def _call_begins(self) -> None:
        self.call_started, self.step_ends = time.perf_counter(), []

    def stage_call(self) -> None:
        self.steps += 1
        self.step_ends.append(time.perf_counter())
        self._update()

    def tiles(self, done: int, total: int) -> None:
        spent = self.step_ends[-1] - self.call_started if self.step_ends else 0.0
        if spent > 0 and len(self.step_ends) == self.steps_per_call:
            self.shares = [(end - self.call_started) / spent for end in self.step_ends]
        self.status.tiles_done, self.status.tiles = done, total
        self.status.measured = True
        self.calls_done += 1
        self.steps = 0
        self._call_begins()
        self._update()

    def window_done(self, length: int) -> None:
        """A window of ``length`` frames came back (from this process or another runner)."""
        self.completed_work += length
        self.length = self.calls = 0
        self.status.measured = True
        self._update()

    def _step_share(self) -> float:
        """The part of the current backend call done: by the times of the last whole call's steps
        where it had as many, else by the count of steps."""
        if not self.steps_per_call or not self.steps:
            return 0.0
        if len(self.shares) == self.steps_per_call:
            return self.shares[min(self.steps, self.steps_per_call) - 1]
        return self.steps / self.steps_per_call

    def frame_written(self, count: int) -> None:
        self.status.frames_written = count
        self._update()

    def _update(self) -> None:
        within = 0.0
        if self.calls:
            step = min(self._step_share(), 0.99)
            within = min(self.calls_done + step, self.calls) / self.calls
        self.status.work_done = self.completed_work + self.length * within
        if self.report:
            self.report(self.status)


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def describe(status: Status) -> str:
    total = f"/{status.total}" if status.total else ""
    tiles = f", window {status.window + 1} tile {status.tiles_done}/{status.tiles}" if status.tiles else ""
    return (f"{status.frames_done:.1f}{total} frames ({status.frames_written} written){tiles}, "
            f"{status.fps:.3g} fps, ETA {clock(status.eta)}")


class StderrLines(logging.Handler):
    """Log records as plain lines on the standard error of the moment (click resolves it at each
    line, so a command run in-process by a test writes where that run's output is captured)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def log_to_stderr(*loggers: str) -> None:
    """Progress that the named loggers report at INFO (exports, validation) as lines on standard
    error; once per logger however often a command runs in one process."""
    for name in loggers:
        log = logging.getLogger(name)
        if not any(isinstance(handler, StderrLines) for handler in log.handlers):
            log.addHandler(StderrLines())
        log.setLevel(logging.INFO)


def terminal_columns(stream) -> int:
    """The width of the terminal ``stream`` writes to; 0 when it is no terminal or reports no width
    (a pseudo-terminal whose size nobody set, as under some CI runners and ``docker exec -t``)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else 0
    except (AttributeError, OSError, ValueError):
        return 0


class ProgressDisplay:
    """A tqdm bar on a terminal; elsewhere (logs, pipes, and terminals that report no width, where
    a bar would draw nothing) a plain line every ``interval`` seconds and at the end. Everything
    goes to standard error."""

    def __init__(self, enabled: bool = True, interval: float = 10.0, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.terminal = enabled and terminal_columns(self.stream) > 0
        self.interval = interval
        self.last = None
        self.bar = None
        self.status = None

    def __call__(self, status: Status) -> None:
        self.status = status
        if not self.enabled:
            return
        if self.terminal:
            if self.bar is None:
                self.bar = tqdm(total=status.total, desc="restoring", unit="frame", dynamic_ncols=True,
                                file=self.stream, bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}{postfix}]")
            self.bar.n = round(status.frames_done, 1)
            self.bar.set_postfix_str(f"{status.fps:.3g} fps, ETA {clock(status.eta)}"
                                     + (f", tile {status.tiles_done}/{status.tiles}" if status.tiles else ""),
                                     refresh=False)
            self.bar.refresh()
            return
        now = time.perf_counter()
        # The first report at once (the work has begun), then one every ``interval`` seconds.
        if self.last is None or now - self.last >= self.interval:
            self.last = now
            click.echo(f"restoring: {describe(status)}", file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.status is not None and self.last is not None:
            click.echo(f"restoring: {describe(self.status)}", file=self.stream)
