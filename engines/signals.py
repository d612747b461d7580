"""Stopping on a signal without losing anything, and saying so with the shell's exit status.

SIGTERM and SIGHUP end a Python process at once by default, skipping every ``finally``: a
temporary output or a half-assembled export folder would stay behind. Within
:func:`signals_as_exceptions` they raise :class:`Terminated` instead, which unwinds like Ctrl-C's
KeyboardInterrupt and removes what was being written. :func:`stopped_by_signals` is what the
commands wrap their work in: one line on standard error and exit status 128 + the signal's
number (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process killed by that signal,
instead of click's "Aborted!" and status 1.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived; raised so that every cleanup on the way out runs."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.exit_status = 128 + signum


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (main thread only), so
    that temporaries are removed as for Ctrl-C; the previous handlers come back afterwards."""
    def stop(signum, _frame):
        raise Terminated(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def stopped_by_signals(program: str, aftermath: str) -> Iterator[None]:
    """Run the block under :func:`signals_as_exceptions`; when Ctrl-C, SIGTERM or SIGHUP stops it,
    print ``"<program>: interrupted (Ctrl-C); <aftermath>"`` (or "stopped by SIGTERM") and exit
    with 128 + the signal's number."""
    try:
        with signals_as_exceptions():
            yield
    except Terminated as stop:
        click.echo(f"{program}: {stop}; {aftermath}", err=True)
        sys.exit(stop.exit_status)
    except KeyboardInterrupt:
        click.echo(f"{program}: interrupted (Ctrl-C); {aftermath}", err=True)
        sys.exit(128 + signal.SIGINT)
