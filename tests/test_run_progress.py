"""Progress advances inside a window (per stage call and tile), the ETA comes from measured
throughput, and without a terminal, or on one that reports no width, a plain line is printed."""

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from conftest import tiny_model
from rvrt_engines.progress import Meter, ProgressDisplay, Status
from rvrt_engines.restore import restore_video
from rvrt_engines.synthetic import moving_photo_frames, write_video
from test_run import eager_backend


def test_progress_moves_before_the_first_window_is_done(tmp_path):
    write_video(tmp_path / "in.mkv", moving_photo_frames(4, 48, 96, seed=2), lossless=True)
    seen = []
    restore_video(eager_backend("sr", tiny_model("sr")), tmp_path / "in.mkv", tmp_path / "out.mkv", tile=48,
                  tile_overlap=8, window=4, progress=lambda s: seen.append((s.work_done, s.frames_written, s.tiles_done,
                                                                             s.eta)))
    before_first_frame = [work for work, written, _, _ in seen if written == 0]
    assert len(set(before_first_frame)) > 10, "work advances per stage call, not per window"
    assert max(tiles for _, written, tiles, _ in seen if written == 0) == 3
    works = [work for work, *_ in seen]
    assert works == sorted(works) and works[-1] == 4
    # No ETA before a whole tile call is measured; one from then on.
    assert all(eta is None for _, written, tiles, eta in seen if written == 0 and tiles == 0)
    assert all(eta is not None and eta >= 0 for _, written, tiles, eta in seen if written or tiles)


def test_eta_is_elapsed_per_work_times_work_left():
    meter = Meter(total=10, window_lengths=[6, 6])
    meter.status.started -= 30.0
    meter.window_started(0, 6, calls=2, steps=10)
    meter.tiles(1, 2)
    status = meter.status
    assert status.work_done == 3 and abs(status.frames_done - 2.5) < 1e-9
    assert abs(status.eta - 30.0 / 3 * 9) < 0.5 and abs(status.fps - 2.5 / 30) < 1e-3


def test_steps_are_weighted_by_what_they_cost_in_the_last_call(monkeypatch):
    """Two cheap stage calls (flows) then two dear ones (propagation): counted by steps, half of a
    call looks done after the cheap ones and the ETA climbs; weighted by the last call's step
    times, the ETA is the time really left."""
    from types import SimpleNamespace

    import rvrt_engines.progress as progress

    clock = [0.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    meter = Meter(total=6, window_lengths=[6])
    meter.status.started = 0.0
    meter.window_started(0, 6, calls=2, steps=4)

    def call(costs):
        for cost in costs:
            clock[0] += cost
            meter.stage_call()

    call([1, 1])
    assert meter.status.eta is None                   # nothing whole measured yet
    call([8, 10])
    meter.tiles(1, 2)
    assert abs(meter.status.eta - 20) < 1e-6          # half the window in 20 s: 20 s left
    call([1, 1])
    assert abs(meter.status.eta - 18) < 1e-6          # the two dear steps are still to come
    assert abs(meter.status.work_done - 6 * (1 + 2 / 20) / 2) < 1e-9


def test_runners_that_report_only_windows_still_advance():
    """A distributed runner reports nothing inside a window; work advances by whole windows."""
    meter = Meter(total=10, window_lengths=[6, 6])
    meter.window_done(6)
    assert meter.status.work_done == 6 and meter.status.eta is not None


def test_plain_lines_without_a_terminal():
    stream = io.StringIO()
    display = ProgressDisplay(interval=0, stream=stream)
    status = Status(total=8, work_total=8.0)
    for done in range(1, 4):
        status.work_done = status.frames_written = done
        display(status)
    display.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3 and lines[-1].startswith("restoring: 3.0/8 frames (3 written)") and "ETA" in lines[-1]


SHOW_PROGRESS = """
from rvrt_engines.progress import ProgressDisplay, Status
display = ProgressDisplay(interval=0)
status = Status(total=8, work_total=8.0)
for done in range(1, 4):
    status.work_done = status.frames_written = done
    display(status)
display.close()
"""


def on_a_terminal(columns: int) -> str:
    """What SHOW_PROGRESS writes to standard error when that is a pseudo-terminal of ``columns``
    columns (0: a size nobody set, as a new pseudo-terminal has)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen([sys.executable, "-c", SHOW_PROGRESS], stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:        # EIO: the child has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=60) == 0
    return b"".join(chunks).decode()


def test_a_terminal_without_a_width_gets_plain_lines():
    shown = on_a_terminal(0)
    lines = [line for line in shown.splitlines() if line]
    assert lines[-1].startswith("restoring: 3.0/8 frames (3 written)") and "ETA" in lines[-1], shown
    assert len(lines) >= 3 and all(line.startswith("restoring: ") for line in lines), shown


@pytest.mark.parametrize("columns", [40, 120])
def test_a_terminal_with_a_width_gets_the_bar(columns):
    shown = on_a_terminal(columns)
    assert "restoring:" in shown and "%|" in shown and "(3 written)" not in shown, shown
