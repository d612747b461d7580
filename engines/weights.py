"""The official RVRT weights, fetched once into the artefact cache: ``rvrt-fetch TASK...``.

The six ``.pth`` files of the official release (github JingyunLiang/RVRT, v0.0) go to
``<cache root>/weights/<task id>.pth`` (:func:`rvrt_engines.cache.default_root`), each with a
record ``<task id>.json`` of where it came from and the sha256 it had. A download:

- goes to a hidden ``.<task id>.pth.partial`` beside it, resumed with an HTTP Range request
  when a run was interrupted (the partial is the only thing an interrupted run leaves, on
  purpose: it is what the next run resumes);
- becomes ``<task id>.pth`` only after a strict ``weights_only=True`` load into the task's
  network (:mod:`rvrt.checkpoint`): a truncated file, an HTML error page or another task's
  weights are refused and removed, never renamed;
- comes from the release, or from a mirror holding the same file names (``--mirror URL`` or
  ``$RVRT_WEIGHTS_URL``).

:func:`official_checkpoint` is what ``--checkpoint official`` resolves to.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from rvrt import CheckpointError, RVRTConfig, Task, get_task
from rvrt_engines.manifest import sha256_of

from .cache import default_root
from .extras import require_extra

RELEASE_URL = "https://github.com/JingyunLiang/RVRT/releases/download/v0.0"
MIRROR_ENV = "RVRT_WEIGHTS_URL"
WEIGHTS_FOLDER = "weights"
CHUNK = 1 << 20
TIMEOUT_S = 60


class FetchFailed(RuntimeError):
    """The network or this machine failed a download (exit status 1); bad input is ValueError."""


def weights_folder(root: str | os.PathLike | None = None) -> Path:
    return Path(root if root is not None else default_root()) / WEIGHTS_FOLDER


def weights_path(task: Task, root: str | os.PathLike | None = None) -> Path:
    return weights_folder(root) / f"{task.id}.pth"


def record_path(task: Task, root: str | os.PathLike | None = None) -> Path:
    return weights_folder(root) / f"{task.id}.json"


OFFICIAL = "official"
"""``--checkpoint official``: the file rvrt-fetch put in the cache."""


def official_checkpoint(task: str | Task, root: str | os.PathLike | None = None) -> Path:
    """The fetched official ``.pth`` of ``task``; CheckpointError (one line, how to fetch it) when
    it has not been fetched, or was changed since (its size differs from the record)."""
    task = task if isinstance(task, Task) else get_task(task)
    path, record = weights_path(task, root), record_path(task, root)
    if not path.is_file() or not record.is_file():
        raise CheckpointError(f"--checkpoint official: the official weights of {task.short!r} ({task.id}.pth) are "
                              f"not in {path.parent} yet: run 'rvrt-fetch {task.short}'")
    try:
        expected = json.loads(record.read_text())["bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        expected = None
    if expected != path.stat().st_size:
        raise CheckpointError(f"--checkpoint official: {path} differs from what rvrt-fetch recorded in {record.name}: "
                              f"run 'rvrt-fetch {task.short} --force'")
    return path


def source_url(task: Task, mirror: str | None = None) -> str:
    """Where ``task``'s file is fetched from: ``<mirror>/<id>.pth`` (``mirror``, else
    ``$RVRT_WEIGHTS_URL``, else the official release)."""
    base = mirror or os.environ.get(MIRROR_ENV) or RELEASE_URL
    scheme = urllib.parse.urlsplit(base).scheme
    if scheme not in ("http", "https"):
        origin = "--mirror" if mirror else MIRROR_ENV
        raise ValueError(f"{origin} {base}: expected an http:// or https:// address of a folder holding the "
                         f"official file names (e.g. {RELEASE_URL})")
    return f"{base.rstrip('/')}/{task.id}.pth"


def architecture(task: Task) -> RVRTConfig:
    """The network a fetched file must load into: the task's official one (tests give a tiny one)."""
    return task.config


@dataclass
class Fetched:
    task: Task
    path: Path
    sha256: str
    bytes: int
    url: str
    downloaded: bool  # False: it was already there


def fetch_weights(task: Task, *, mirror: str | None = None, root: str | os.PathLike | None = None,
                  config: RVRTConfig | None = None, force: bool = False, progress: bool = True) -> Fetched:
    """Download ``task``'s official weights (resuming a partial download), check them by a
    strict load into ``config`` [the task's architecture] and record their sha256.

    Raises ValueError/CheckpointError for bad input (the address has no such file, what it
    serves is not the task's weights) and FetchFailed where the network or the disk failed.
    """
    url = source_url(task, mirror)
    require_extra("export", "rvrt-fetch (it checks each file by loading it into the task's network)")
    config = config or architecture(task)
    folder = weights_folder(root)
    made = [path for path in (folder.parent, folder) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FetchFailed(f"cannot create {folder} ({err.strerror}): set RVRT_CACHE to a folder you can write") \
            from None
    try:
        return fetch_locked(task, url, config, root, force, progress)
    except BaseException:
        for path in reversed(made):   # folders this call made and left empty go too
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def fetch_locked(task: Task, url: str, config: RVRTConfig, root, force: bool, progress: bool) -> Fetched:
    folder = weights_folder(root)
    final, record = weights_path(task, root), record_path(task, root)
    partial = folder / f".{final.name}.partial"
    with locked(folder / f".{final.name}.lock"):
        if not force and final.is_file() and record.is_file():
            with contextlib.suppress(CheckpointError):
                path = official_checkpoint(task, root)
                return Fetched(task, path, json.loads(record.read_text())["sha256"], path.stat().st_size,
                               url, downloaded=False)
        try:
            download(url, partial, label=task.short, progress=progress)
        except ValueError:
            partial.unlink(missing_ok=True)   # that address has no such file: nothing to resume
            raise
        except BaseException:
            # An interrupted transfer keeps what it received, for the next run to resume; no more.
            if partial.is_file() and not partial.stat().st_size:
                partial.unlink()
            raise
        try:
            check_weights(partial, task, config, url)
        except Exception:
            partial.unlink(missing_ok=True)   # complete but wrong: resuming it cannot help
            raise
        digest, size = sha256_of(partial), partial.stat().st_size
        entry = {"task": task.id, "url": url, "bytes": size, "sha256": digest,
                 "fetched": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "checked": "strict weights_only load into the task's network"}
        staged_record = folder / f".{record.name}.partial"
        try:
            staged_record.write_text(json.dumps(entry, indent=2) + "\n")
            # The record first: a .pth is only ever found with the record of its own download.
            os.replace(staged_record, record)
            os.replace(partial, final)
        except OSError as err:
            staged_record.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
            raise FetchFailed(f"cannot write {final} ({err.strerror})") from None
    return Fetched(task, final, digest, size, url, downloaded=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One download per file across processes: a second ``rvrt-fetch`` of it waits for the first,
    then finds its file. The lock file is removed when released (nothing is left behind); a
    waiter that then holds a removed file's lock tries again on the path's current file."""
    while True:
        try:
            lock = open(path, "a")
        except OSError as err:
            raise FetchFailed(f"cannot write in {path.parent} ({err.strerror})") from None
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                break
        lock.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        lock.close()


def download(url: str, partial: Path, *, label: str, progress: bool) -> None:
    """Fill ``partial`` with the file at ``url``, continuing from the bytes it already holds."""
    start = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:
            # The partial is as long as (or longer than) the file: it may be complete or may be
            # of another file; the strict load decides, and a bad one is fetched from scratch.
            return
        if 400 <= err.code < 500:
            raise ValueError(f"{url}: the server has no such file (HTTP {err.code} {err.reason}); check --mirror or "
                             f"{MIRROR_ENV}, which must hold the official file names") from None
        raise FetchFailed(f"{url}: the server failed (HTTP {err.code} {err.reason}); try again later") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise FetchFailed(f"{url}: cannot connect ({getattr(err, 'reason', None) or err}); check the network, or "
                          f"use --mirror") from None
    with response:
        if start and response.status != 206:
            start = 0   # the server ignores ranges: it sends the whole file again
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        received = start
        try:
            out = open(partial, "ab" if start else "wb")
        except OSError as err:
            raise FetchFailed(f"cannot write {partial} ({err.strerror})") from None
        with out, tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                       file=sys.stderr, disable=None if progress else True, leave=False) as bar:
            while True:
                try:
                    block = response.read(CHUNK)
                except (http.client.HTTPException, OSError) as err:   # reset, timeout: the connection broke
                    raise FetchFailed(f"{url}: the transfer broke off after {received} bytes ({err}); run again "
                                      f"to resume from {partial}") from None
                if not block:
                    break
                try:
                    out.write(block)
                except OSError as err:
                    raise FetchFailed(f"cannot write {partial} ({err.strerror}); {received} bytes kept to resume") \
                        from None
                received += len(block)
                bar.update(len(block))
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as err:
                raise FetchFailed(f"cannot write {partial} ({err.strerror})") from None
    if total is not None and received < total:
        raise FetchFailed(f"{url}: the transfer broke off after {received} of {total} bytes; run again to resume "
                          f"from {partial}")


def check_weights(path: Path, task: Task, config: RVRTConfig, url: str) -> None:
    """Refuse ``path`` unless it loads, ``weights_only`` and strictly, into ``task``'s network."""
    from rvrt.checkpoint import check_state_dict, read_state_dict
    from rvrt.model import RVRT

    try:
        state = read_state_dict(path)
    except CheckpointError:
        raise CheckpointError(f"{url}: what was downloaded is not a readable PyTorch weights file (truncated, "
                              f"damaged or not a checkpoint); nothing was kept") from None
    model = RVRT(config)
    check_state_dict(model, state, task, url)
    model.load_state_dict(state, strict=True)
