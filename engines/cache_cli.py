"""``rvrt-cache list|prune``: what the artefact cache holds, and making room in it.

Each new frame size is a new export of minutes and hundreds of MB, so the cache grows. What
this tool reads and removes is only what the cache itself writes under its root
(:mod:`rvrt_engines.cache`): entries sealed with ``cache.json``, the ``.NAME.lock`` files of
their builds and the ``.NAME.partial-XXXXXXXX`` staging folders of builds that were killed.
Anything else under the root, symbolic links, and the root's parents are never touched; the
official weights (``weights/``, :mod:`rvrt_engines.weights`) are listed, never pruned.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from .cache import SEAL, default_root
from .memory_budget import parse_memory, size_text
from .weights import WEIGHTS_FOLDER
from .wording import count_of

LOCK = re.compile(r"\.(?P<name>[^/]+)\.lock")
PARTIAL = re.compile(r"\.\.?(?P<name>[^/]+?)\.partial-[0-9a-f]{8}")
STALE_LOCK_S = 3600
"""A lock file is removed only when free and untouched for this long: a process that has just
opened it to wait for a build would otherwise lock a removed file beside the next builder."""
DAY_S = 86400


class UserError(click.ClickException):
    """One line on stderr, exit status 2 (the README's "Exit status" table)."""

    exit_code = 2


@dataclass
class Entry:
    path: Path
    bytes: int
    built: float   # when its seal was written
    key: dict


@dataclass
class Contents:
    entries: list[Entry] = field(default_factory=list)
    weights: list[tuple[Path, int, float, dict]] = field(default_factory=list)
    locks: list[Path] = field(default_factory=list)
    partials: list[Path] = field(default_factory=list)
    others: list[Path] = field(default_factory=list)


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path``, links not followed."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def read_seal(path: Path) -> dict | None:
    """The key an entry's seal records, None where ``path`` is no sealed entry of this cache."""
    try:
        seal = json.loads((path / SEAL).read_text())
    except (OSError, ValueError):
        return None
    key = seal.get("key") if isinstance(seal, dict) else None
    return key if isinstance(key, dict) and "task" in key and isinstance(seal.get("files"), dict) else None


def scan(root: Path) -> Contents:
    found = Contents()
    if not root.is_dir():
        return found
    for path in sorted(root.iterdir()):
        if path.is_symlink():
            found.others.append(path)
        elif path.name == WEIGHTS_FOLDER and path.is_dir():
            for weights in sorted(path.glob("*.pth")):
                record = {}
                with contextlib.suppress(OSError, ValueError):
                    record = json.loads(weights.with_suffix(".json").read_text())
                stat = weights.lstat()
                found.weights.append((weights, stat.st_size, stat.st_mtime, record))
        elif path.is_dir() and PARTIAL.fullmatch(path.name):
            found.partials.append(path)
        elif path.is_dir() and (key := read_seal(path)) is not None:
            found.entries.append(Entry(path, tree_bytes(path), (path / SEAL).lstat().st_mtime, key))
        elif path.is_file() and LOCK.fullmatch(path.name) and path.lstat().st_size == 0:
            found.locks.append(path)
        else:
            found.others.append(path)
    return found


def age_text(seconds: float) -> str:
    for unit, scale in (("d", DAY_S), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def tile_text(tile) -> str:
    return "x".join(map(str, tile)) if isinstance(tile, list) else str(tile)


@click.group()
def main():
    """What the artefact cache ($RVRT_CACHE, else $XDG_CACHE_HOME/rvrt-deploy, else
    ~/.cache/rvrt-deploy) holds, and pruning it. Exit status: 0 done, 1 a file could not be
    removed, 2 bad input."""


@main.command("list")
def list_command():
    """Each entry's size, age and what it is for; the official weights; leftovers of killed builds."""
    root = default_root()
    found = scan(root)
    now = time.time()
    total = sum(entry.bytes for entry in found.entries)
    click.echo(f"cache {root}: {count_of(len(found.entries), 'entry', 'entries')}, {size_text(total)}")
    if found.entries:
        rows = [("SIZE", "AGE", "TASK", "TILE", "BATCH", "PRECISION", "RUNTIME", "WEIGHTS", "ENTRY")]
        for entry in sorted(found.entries, key=lambda entry: -entry.built):
            key = entry.key
            rows.append((size_text(entry.bytes), age_text(now - entry.built), key.get("task_short", key["task"]),
                         tile_text(key.get("tile")), str(key.get("batch")), str(key.get("precision")),
                         str(key.get("runtime")), describe_weights(str(key.get("weights", ""))), entry.path.name))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            click.echo("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    if found.weights:
        click.echo(f"official weights in {root / WEIGHTS_FOLDER} (never pruned):")
        for path, size, mtime, record in found.weights:
            digest = record.get("sha256", "no record: fetch it again with rvrt-fetch --force")
            click.echo(f"  {size_text(size)}  {age_text(now - mtime)}  {path.name}  sha256 {digest}")
    leftovers = [count_of(len(found.locks), "lock file")] if found.locks else []
    if found.partials:
        leftovers.append(f"{count_of(len(found.partials), 'staging folder')} "
                         f"({size_text(sum(map(tree_bytes, found.partials)))})")
    if leftovers:
        click.echo(f"builds' leftovers: {', '.join(leftovers)} (rvrt-cache prune removes those no build is using)")
    if found.others:
        click.echo(f"not written by the cache (never touched): {', '.join(path.name for path in found.others)}")


def describe_weights(weights: str) -> str:
    if weights.startswith("sha256:"):
        return weights[:7 + 12]
    return weights.replace("random-seed-", "random weights (seed ") + ")" if weights.startswith("random-") else weights


def days_option(ctx, param, value):
    if value is not None and value < 0:
        raise UserError(f"--older-than {value:g}: expected a number of days, 0 or more")
    return value


def size_option(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_memory(value)
    except ValueError as err:
        raise UserError(str(err).replace("--memory", "--max-size", 1)) from None


@main.command()
@click.option("--older-than", "older_than", type=float, metavar="DAYS", callback=days_option,
              help="Remove entries built more than DAYS days ago.")
@click.option("--max-size", "max_size", metavar="SIZE", callback=size_option,
              help="Keep the newest entries whose sizes add up to at most SIZE (e.g. 2G, 500M); remove the rest.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def prune(older_than, max_size, dry_run):
    """Remove entries by age or total size, and always the lock files and staging folders that
    no build is using. An entry being built or rebuilt (its lock held) is left alone."""
    root = default_root()
    found = scan(root)
    now = time.time()
    doomed, kept, full = [], 0, False
    for entry in sorted(found.entries, key=lambda entry: -entry.built):
        if older_than is not None and now - entry.built > older_than * DAY_S:
            doomed.append((entry, f"built {age_text(now - entry.built)} ago"))
        elif max_size is not None and (full or kept + entry.bytes > max_size):
            # "The newest within the size": once one does not fit, nothing older is kept.
            full = True
            doomed.append((entry, f"beyond --max-size {size_text(max_size)}"))
        else:
            kept += entry.bytes
    verb = "would remove" if dry_run else "removed"
    freed, removed, failures = 0, 0, []
    for entry, reason in doomed:
        try:
            if remove_entry(entry.path, dry_run):
                freed += entry.bytes
                removed += 1
                click.echo(f"{verb} {entry.path.name} ({size_text(entry.bytes)}, {reason})")
            else:
                kept += entry.bytes
                click.echo(f"kept {entry.path.name}: a build holds its lock")
        except OSError as err:
            failures.append(f"{entry.path}: {err.strerror}")
    leftovers = 0
    for partial in found.partials:
        name = PARTIAL.fullmatch(partial.name)["name"]
        size = tree_bytes(partial)
        try:
            with free_lock(root / f".{name}.lock") as free:
                if free:
                    if not dry_run:
                        shutil.rmtree(partial)
                    freed += size
                    leftovers += 1
        except OSError as err:
            failures.append(f"{partial}: {err.strerror}")
    for lock in found.locks:
        try:
            if now - lock.lstat().st_mtime > STALE_LOCK_S:
                with free_lock(lock) as free:
                    if free:
                        if not dry_run:
                            lock.unlink()
                        leftovers += 1
        except OSError as err:
            failures.append(f"{lock}: {err.strerror}")
    click.echo(f"{verb} {count_of(removed, 'entry', 'entries')} and {count_of(leftovers, 'leftover')} of killed "
               f"builds: {size_text(freed)} freed; {count_of(len(found.entries) - removed, 'entry', 'entries')} kept "
               f"({size_text(kept)})")
    if failures:
        raise click.ClickException(f"could not remove {'; '.join(failures)}")


@contextlib.contextmanager
def free_lock(path: Path):
    """Yields True holding ``path``'s lock when no process holds it (or there is none), False
    when one does; the lock file is neither created nor left open."""
    try:
        handle = open(path, "r")
    except FileNotFoundError:
        yield True
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_entry(path: Path, dry_run: bool) -> bool:
    """Remove a sealed entry unless a build holds its lock: renamed first to a staging name (what a
    killed prune leaves is then a leftover the next prune removes), then deleted."""
    with free_lock(path.parent / f".{path.name}.lock") as free:
        if not free:
            return False
        if not dry_run:
            doomed = path.parent / f".{path.name}.partial-{secrets.token_hex(4)}"
            path.rename(doomed)
            shutil.rmtree(doomed)
        return True
