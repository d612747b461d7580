"""Exports and engines made on first use and kept in the user's cache directory.

``rvrt-run sr video.mp4 --runtime onnxruntime`` needs the validated stage graphs of the SR
network; the first run makes them (``rvrt-export onnx``, and ``rvrt-export trt`` for TensorRT)
and later runs find them again. Three small objects:

- :class:`CacheKey`: everything the artefacts depend on (weights, task, architecture, tile,
  batch, precision, runtime and its version, the CPU or GPU they were validated on). Equal keys
  share an entry; any difference makes another.
- :class:`ArtefactCache`: entries under one root; ``fetch(key, make)`` returns a verified entry
  or builds it. An entry is assembled under a temporary name and renamed when complete, and
  sealed with ``cache.json`` (its key and every file's size and sha256), which every reuse
  checks: a half-written, truncated or edited entry is rebuilt, never served.
- :class:`ModelSource` and :func:`cached`: what to build an entry from, and the one way every
  runtime's ``artefacts`` (:mod:`rvrt_engines.runtimes`) gets its entry, which its own build
  function fills (the same ``export_onnx``, ``export_fp16`` and ``build_engines`` the
  ``rvrt-export`` commands run, with their validation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rvrt import RVRTConfig, Task
from rvrt.tiling import tile_name, tile_shape_of
from .manifest import MANIFEST, ArtifactError, assembled, sha256_of, versions

from .extras import missing_modules, require_extra

if TYPE_CHECKING:
    from rvrt.model import RVRT

    from .runtimes.base import Runtime

log = logging.getLogger(__name__)

CACHE_ENV = "RVRT_CACHE"
SEAL = "cache.json"
PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def default_root() -> Path:
    """``$RVRT_CACHE``, else ``$XDG_CACHE_HOME/rvrt-deploy``, else ``~/.cache/rvrt-deploy``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rvrt-deploy"


@dataclass(frozen=True)
class CacheKey:
    """What an entry's artefacts depend on.

    weights: ``sha256:<checkpoint sha256>`` or ``random-seed-N``. architecture: sha256 of the
    network's hyper-parameters (a test's tiny model differs from the official one). runtime_version
    and device: the runtime's own fields (:meth:`rvrt_engines.runtimes.base.Runtime.key_fields`): its
    version and the CPU or GPU the artefacts were validated on. tile: one int for a square, else
    (height, width).

    The exporter's library versions are not part of the key: a serving install, which has no exporter,
    must find what a full install cached. They are recorded in the entry's seal (``made_with``).
    """

    task: str
    task_short: str
    architecture: str
    weights: str
    tile: int | tuple[int, int]
    batch: int
    precision: str
    runtime: str
    runtime_version: str
    device: str

    @property
    def name(self) -> str:
        """Entry folder name: readable fields, then a digest of all of them."""
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()
        return (f"{self.task_short}-tile{tile_name(self.tile)}-b{self.batch}-{PRECISIONS[self.precision]}-"
                f"{self.runtime}-{digest[:16]}")

    @property
    def record(self) -> dict:
        """The key as its entry's seal holds it: JSON, where a tuple reads back as a list."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def file_records(directory: Path) -> dict[str, dict]:
    """relative path -> {bytes, sha256} of every file under ``directory`` but the seal."""
    return {str(path.relative_to(directory)): {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
            for path in sorted(directory.rglob("*")) if path.is_file() and path.name != SEAL}


class EntryMissing(LookupError):
    """A cache that may only read (``rvrt-run --dry-run``) lacks an entry; the message says what would be made."""


class ArtefactCache:
    """Entries (export or engine directories) under ``root``, one per :class:`CacheKey`. read_only: find
    entries, never make one (:class:`EntryMissing` says what would be made)."""

    def __init__(self, root: str | os.PathLike | None = None, *, read_only: bool = False):
        self.root = Path(root) if root is not None else default_root()
        self.read_only = read_only

    def entry(self, key: CacheKey) -> Path:
        return self.root / key.name

    def problem(self, key: CacheKey) -> str | None:
        """Why the entry of ``key`` cannot be served as it is; None when it can."""
        entry = self.entry(key)
        if not entry.is_dir():
            return "absent"
        try:
            seal = json.loads((entry / SEAL).read_text())
        except (OSError, json.JSONDecodeError):
            return f"no readable {SEAL} (an interrupted build)"
        if seal.get("key") != key.record:
            return f"its {SEAL} records another key"
        files = seal.get("files", {})
        if MANIFEST not in files:
            return f"its {SEAL} lists no {MANIFEST}"
        # Every file's presence and size before any hash: a missing or truncated file is found in a stat each,
        # not after reading the others' bytes (a full-size entry holds hundreds of MB).
        for name, record in files.items():
            path = entry / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != record["bytes"]:
                return f"{name} differs from the file it was built with"
        for name, record in files.items():
            if sha256_of(entry / name) != record["sha256"]:
                return f"{name} differs from the file it was built with"
        return None

    def lookup(self, key: CacheKey) -> Path | None:
        """The entry of ``key`` when it is complete and intact, else None."""
        problem = self.problem(key)
        if problem is None:
            return self.entry(key)
        if problem != "absent":
            log.warning("cache entry %s cannot be reused (%s): it will be built again", self.entry(key), problem)
        return None

    @contextlib.contextmanager
    def locked(self, key: CacheKey) -> Iterator[None]:
        """One builder per entry across processes: a second run waits, then reuses the entry."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / f".{key.name}.lock", "w")
        except OSError as err:
            raise ArtifactError(f"cannot write the export cache at {self.root} ({err.strerror}): set {CACHE_ENV} "
                                f"to a folder you can write, or export with 'rvrt-export onnx'") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def discard(self, key: CacheKey) -> None:
        """Remove what this cache wrote for ``key`` and cannot serve: a damaged entry and the
        staging folders of killed builds (only called while holding the entry's lock)."""
        name = key.name
        for path in [self.entry(key), *self.root.glob(f".{name}.partial-*"), *self.root.glob(f"..{name}.partial-*")]:
            if path.is_dir():
                shutil.rmtree(path)

    def fetch(self, key: CacheKey, make: Callable[[Path], object]) -> Path:
        """The entry of ``key``, built first by ``make(folder)`` if it is absent or damaged.
        ``make`` fills an empty folder (e.g. an ``export_onnx`` output directory)."""
        found = self.lookup(key)
        if found:
            log.info("reusing %s", found)
            return found
        with self.locked(key):
            if self.problem(key) is None:   # another process built it while this one waited
                return self.entry(key)
            self.discard(key)
            with assembled(self.entry(key)) as staging:
                make(staging)
                seal = {"key": key.record, "made_with": versions(), "files": file_records(staging)}
                (staging / SEAL).write_text(json.dumps(seal, indent=2) + "\n")
        log.info("cached %s", self.entry(key))
        return self.entry(key)


class ModelSource:
    """The eager network artefacts are made from: its identity for a key, and how to build it.

    The network is built only when an entry has to be made (a cache hit only hashes the
    checkpoint). checkpoint: an official ``.pth``; else ``seed`` (random weights, recorded).
    build: how to make the network, for tests' tiny models [rvrt.build_model of the task's
    official architecture]; with neither checkpoint nor seed, a network built in this process,
    whose weights no key can name (served eagerly, never cached).
    """

    def __init__(self, task: Task, *, checkpoint: str | os.PathLike | None = None, seed: int | None = None,
                 config: RVRTConfig | None = None, build: Callable[[], RVRT] | None = None):
        if build is None and (checkpoint is None) == (seed is None):
            raise ValueError("a model source needs a checkpoint or a random-weights seed, not both")
        self.task = task
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.seed = seed
        self.config = config or task.config
        self.build = build or self._official_architecture

    def _official_architecture(self) -> RVRT:
        from rvrt import build_model

        return build_model(self.task.id, self.checkpoint, random_weights=self.checkpoint is None, config=self.config,
                           seed=self.seed)

    @functools.cached_property
    def weights(self) -> str:
        if self.checkpoint is None and self.seed is None:
            raise ValueError("a network built in this process has no weights to name in a cache key")
        return f"sha256:{sha256_of(self.checkpoint)}" if self.checkpoint else f"random-seed-{self.seed}"

    @functools.cached_property
    def model(self) -> RVRT:
        return self.build()

    def __getstate__(self) -> dict:
        # A source travels to Ray workers and filters: the network it built here stays here.
        return {name: value for name, value in self.__dict__.items() if name != "model"}

    def key(self, runtime: Runtime, *, tile: int | Sequence[int], batch: int, precision: str) -> CacheKey:
        """The key of ``runtime``'s artefacts of this network; ``tile``: (height, width) in input px, or one
        int for a square."""
        runtime_version, device = runtime.key_fields()
        architecture = hashlib.sha256(json.dumps(dataclasses.asdict(self.config), sort_keys=True).encode())
        height, width = tile_shape_of(tile)
        return CacheKey(self.task.id, self.task.short, architecture.hexdigest(), self.weights,
                        height if height == width else (height, width), batch, precision, runtime.name,
                        runtime_version, device)


def check_tile_and_batch(source: ModelSource, tile: int | Sequence[int], batch: int) -> None:
    """Refuse a tile or batch no export can have, before any work."""
    min_tile = source.config.min_tile
    if any(side % 8 or side < min_tile for side in tile_shape_of(tile)):
        raise ValueError(f"--tile {tile_name(tile)} is impossible for task {source.task.short!r}: tile sides are "
                         f"multiples of 8 and at least {min_tile} input px (the official tile is "
                         f"{source.task.tile[1]})")
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")


def cached(cache: ArtefactCache, key: CacheKey, make: Callable[[Path], object], action: str) -> Path:
    """The entry of ``key``, made by ``make`` when it is absent or damaged. ``action``: what the entry is for,
    named in the one line that refuses where it must be made and the exporter (PyTorch) is not installed."""
    # problem() reads every byte of an entry, and fetch() does again: only where the exporter is missing is it
    # worth asking first, to refuse before fetch() takes the entry's lock.
    if (cache.read_only or missing_modules("export")) and cache.problem(key) is not None:
        if cache.read_only:
            raise EntryMissing(action)
        require_extra("export", f"{action} (no intact one in the cache {cache.root} yet)")
    return cache.fetch(key, make)
