"""Where an output may go, and how it gets there without ever losing a file.

- ``--overwrite`` replaces only what this program writes: a file, or the frames (``000000.png``,
  ``000001.png`` ...: :data:`FRAME_NAME`, and :data:`PROVENANCE_FILE`) of a frame folder. A folder holding anything else,
  the current folder, the input itself and any folder containing the input are refused.
- Everything is written under a temporary name in the destination folder (same file system,
  so the final rename is atomic) and renamed on success; every failure path, including
  errors before the first frame and SIGTERM/SIGHUP (see :func:`rvrt_engines.signals.signals_as_exceptions`),
  removes the temporary.
- Files and folders are created with the usual permissions (0666/0777 less the umask).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

from .errors import VideoOutputError

FRAME_NAME = re.compile(r"\d{6,}\.png")
"""The names of the frames this program writes into a frame folder."""
PROVENANCE_FILE = "rvrt-provenance.json"
"""Beside the frames: how they were made (:func:`.writer.provenance_text`)."""
PIPE = "-"


def frame_name(index: int) -> str:
    return f"{index:06d}.png"


def is_folder_output(path: str | os.PathLike) -> bool:
    """A frame folder: an existing folder, a path ending in a separator, or a name without a suffix."""
    text = os.fspath(path)
    return text != PIPE and (Path(text).is_dir() or text.endswith(os.sep) or Path(text).suffix == "")


def is_ours(entry: Path) -> bool:
    """A file this program writes into a frame folder; nothing else there is ever replaced."""
    return entry.is_file() and (FRAME_NAME.fullmatch(entry.name) is not None or entry.name == PROVENANCE_FILE)


def strangers(folder: Path) -> list[str]:
    """Entries of ``folder`` that this program did not write."""
    return sorted(entry.name for entry in folder.iterdir() if not is_ours(entry))


def check_output_path(path: str | os.PathLike, *, inputs: tuple[str | os.PathLike, ...] = (),
                      overwrite: bool = False) -> None:
    """Raise VideoOutputError when writing ``path`` could destroy something or cannot work."""
    if os.fspath(path) == PIPE:
        return
    path = Path(path)
    target = path.resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise VideoOutputError(f"-o {path}: that is the current folder or one containing it; "
                               f"give a new file name or a new folder for the frames")
    for source in inputs:
        if os.fspath(source) == PIPE:
            continue
        source = Path(source).resolve()
        if target == source or (path.exists() and Path(source).exists() and os.path.samefile(path, source)):
            raise VideoOutputError(f"-o {path}: that is the input; give another output name")
        if target in source.parents:
            raise VideoOutputError(f"-o {path}: that folder contains the input {source}; give another output name")
    if is_folder_output(path):
        if path.exists() and not path.is_dir():
            raise VideoOutputError(f"-o {path}: a file of that name exists; frame folders are written to a folder "
                                   f"(give a video suffix such as .mp4 for a video file)")
        if path.is_dir():
            others = strangers(path)
            if others:
                shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
                raise VideoOutputError(f"-o {path}: the folder holds files this program did not write ({shown}); "
                                       f"--overwrite only replaces frames named 000000.png, 000001.png ... and "
                                       f"{PROVENANCE_FILE}: "
                                       f"give a new or empty folder")
            if any(path.iterdir()) and not overwrite:
                raise VideoOutputError(f"-o {path}: the folder already holds frames; pass --overwrite to replace them")
    elif path.is_dir():
        raise VideoOutputError(f"-o {path}: a folder of that name exists; give a file name, or a folder without "
                               f"a suffix for PNG frames")
    elif path.exists() and not overwrite:
        raise VideoOutputError(f"-o {path}: the file exists; pass --overwrite to replace it")


def make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VideoOutputError(f"-o {path}: cannot create the folder {path.parent} ({err.strerror})") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise VideoOutputError(f"-o {path}: the folder {path.parent} is not writable")


class Staging:
    """A temporary file or folder beside ``path`` that becomes ``path`` on :meth:`commit` and
    disappears on :meth:`discard`. For frame folders over an existing one, the new frames are
    moved in one by one and only then are the old frames of ours that the new set lacks removed:
    other files that appear meanwhile are never touched."""

    def __init__(self, path: Path, folder: bool):
        self.path = path
        self.folder = folder
        make_parent(path)
        tag = secrets.token_hex(4)
        suffix = "" if folder else path.suffix
        self.temporary = path.parent / f".{path.stem if not folder else path.name}.partial-{tag}{suffix}"
        try:
            if folder:
                os.mkdir(self.temporary, 0o777)
            else:
                os.close(os.open(self.temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except OSError as err:
            raise VideoOutputError(f"-o {path}: cannot write in {path.parent} ({err.strerror})") from None

    def commit(self) -> None:
        if not self.folder:
            os.replace(self.temporary, self.path)
            return
        if not self.path.exists():
            os.replace(self.temporary, self.path)
            return
        new = sorted(os.listdir(self.temporary))
        for name in new:
            os.replace(self.temporary / name, self.path / name)
        os.rmdir(self.temporary)
        for entry in self.path.iterdir():
            if is_ours(entry) and entry.name not in new:
                entry.unlink()

    def discard(self) -> None:
        if self.folder:
            shutil.rmtree(self.temporary, ignore_errors=True)
        else:
            self.temporary.unlink(missing_ok=True)
