"""``rvrt-fetch TASK...``: the official weights of each task, downloaded once into the cache,
resumed when interrupted, kept only once they load strictly into the task's network.

Exit status: 0 done (or already there), 1 the network or this machine failed (a partial
download is kept to resume), 2 bad input (unknown task, a mirror without the file, a file
that is not the task's weights), 128 + N when stopped by signal N.
"""

from __future__ import annotations

import click

from rvrt import TASKS, get_task

from . import weights
from .extras import require_extra
from .signals import stopped_by_signals


class UserError(click.ClickException):
    """One line on stderr, exit status 2 (the README's "Exit status" table)."""

    exit_code = 2


def tasks_of(names: tuple[str, ...]):
    """The tasks named (short names, official ids or ``all``), each once, in the order given."""
    chosen = []
    for name in names:
        for task in TASKS.values() if name == "all" else [get_task(name)]:
            if task not in chosen:
                chosen.append(task)
    return chosen


@click.command()
@click.argument("names", metavar="TASK...", nargs=-1, required=True)
@click.option("--mirror", metavar="URL", help=f"A folder URL holding the official file names [${weights.MIRROR_ENV}, "
                                              f"else {weights.RELEASE_URL}].")
@click.option("--force", is_flag=True, help="Download again even when the file is already there.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(names, mirror, force, quiet):
    """Download the official weights of each TASK (sr, sr-vimeo, sr-bd, deblur-dvd, deblur-gopro,
    denoise, an official id, or all) for --checkpoint official."""
    try:
        tasks = tasks_of(names)
        for task in tasks:   # every address and the exporter are checked before the first download
            weights.source_url(task, mirror)
        require_extra("export", "rvrt-fetch (it checks each file by loading it into the task's network)")
    except ValueError as err:
        raise UserError(str(err)) from None
    with stopped_by_signals("rvrt-fetch", "what was received is kept: run again to resume"):
        for task in tasks:
            if not quiet:
                click.echo(f"{task.short}: {weights.source_url(task, mirror)}", err=True)
            try:
                fetched = weights.fetch_weights(task, mirror=mirror, force=force, progress=not quiet)
            except ValueError as err:
                raise UserError(str(err)) from None
            except (RuntimeError, OSError) as err:
                raise click.ClickException(str(err)) from None
            state = "fetched" if fetched.downloaded else "already fetched"
            click.echo(f"{task.short}: {state} {fetched.path} ({fetched.bytes / 2**20:.1f} MiB, sha256 "
                       f"{fetched.sha256})")
