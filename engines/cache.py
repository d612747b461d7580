"""Exports and engines made on first use and kept in the user's cache directory.

``rvrt-run sr video.mp4 --runtime onnxruntime`` needs the validated stage graphs of the SR
network; the first run makes them (``rvrt-export onnx``, and ``rvrt-export trt`` for TensorRT)
and later runs find them again. Three small objects:

- :class:`CacheKey`: everything the artefacts depend on (weights, task, architecture, tile,
  batch, precision, runtime and its version, the CPU or GPU they were validated on, the
  exporter's library versions). Equal keys share an entry; any difference makes another.
- :class:`ArtefactCache`: entries under one root; ``fetch(key, make)`` returns a verified entry
  or builds it. An entry is assembled under a temporary name and renamed when complete, and
  sealed with ``cache.json`` (its key and every file's size and sha256), which every reuse
  checks: a half-written, truncated or edited entry is rebuilt, never served.
- :class:`ModelSource` and :func:`cached_artefacts`: what to build an entry from, and the
  builds themselves (the same ``export_onnx``, ``export_fp16`` and ``build_engines`` the
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
import platform
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rvrt import RVRTConfig, Task
from rvrt.tiling import tile_name, tile_shape_of
from rvrt_engines.manifest import MANIFEST, ArtifactError, assembled, sha256_of, versions

from .extras import missing_modules, require_extra

if TYPE_CHECKING:
    from rvrt.model import RVRT

log = logging.getLogger(__name__)

CACHE_ENV = "RVRT_CACHE"
SEAL = "cache.json"
PRECISIONS = {"float32": "fp32", "float16": "fp16"}


def default_root() -> Path:
    """``$RVRT_CACHE``, else ``$XDG_CACHE_HOME/rvrt-deploy``, else ``~/.cache/rvrt-deploy``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rvrt-deploy"


def cpu_identity() -> str:
    """CPU model and architecture: ONNX Runtime picks kernels (AVX2, AVX-512...) by CPU, so a
    validation record holds for the CPU it was measured on."""
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model or 'unknown CPU'} ({platform.machine()})"


@dataclass(frozen=True)
class CacheKey:
    """What an entry's artefacts depend on.

    weights: ``sha256:<checkpoint sha256>`` or ``random-seed-N``. architecture: sha256 of the
    network's hyper-parameters (a test's tiny model differs from the official one). device:
    the CPU (ONNX Runtime; validation runs there) or GPU (TensorRT) the artefacts were
    validated on. software: versions of the exporter's libraries, whose output they are. tile:
    one int for a square, as keys always held it (so a square tile's entries keep their names
    and digests), else (height, width).
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
    software: str

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


class ArtefactCache:
    """Entries (export or engine directories) under ``root``, one per :class:`CacheKey`."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()

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
        for name, record in files.items():
            path = entry / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != record["bytes"] or sha256_of(path) != record["sha256"]:
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
                seal = {"key": key.record, "files": file_records(staging)}
                (staging / SEAL).write_text(json.dumps(seal, indent=2) + "\n")
        log.info("cached %s", self.entry(key))
        return self.entry(key)


class ModelSource:
    """The eager network artefacts are made from: its identity for a key, and how to build it.

    The network is built only when an entry has to be made (a cache hit only hashes the
    checkpoint). checkpoint: an official ``.pth``; else ``seed`` (random weights, recorded).
    build: how to make the network, for tests' tiny models [rvrt.build_model of the task's
    official architecture].
    """

    def __init__(self, task: Task, *, checkpoint: str | os.PathLike | None = None, seed: int | None = None,
                 config: RVRTConfig | None = None, build: Callable[[], RVRT] | None = None):
        if (checkpoint is None) == (seed is None):
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
        return f"sha256:{sha256_of(self.checkpoint)}" if self.checkpoint else f"random-seed-{self.seed}"

    @functools.cached_property
    def model(self) -> RVRT:
        return self.build()

    def key(self, *, tile: int | Sequence[int], batch: int, precision: str, runtime: str) -> CacheKey:
        """``tile``: (height, width) in input px, or one int for a square."""
        software = versions()
        if runtime == "tensorrt":
            from .runtimes.tensorrt import gpu_description

            gpu = gpu_description()
            runtime_version, device = gpu["tensorrt"], f"{gpu['gpu']} (compute capability {gpu['compute_capability']})"
        else:
            runtime_version, device = software.pop("onnxruntime"), cpu_identity()
        architecture = hashlib.sha256(json.dumps(dataclasses.asdict(self.config), sort_keys=True).encode())
        height, width = tile_shape_of(tile)
        return CacheKey(self.task.id, self.task.short, architecture.hexdigest(), self.weights,
                        height if height == width else (height, width), batch, precision, runtime, runtime_version,
                        device, json.dumps(software, sort_keys=True))


def cached_artefacts(source: ModelSource, runtime: str, *, tile: int | Sequence[int], batch: int = 1,
                     precision: str = "float32", cache: ArtefactCache | None = None) -> Path:
    """The validated export (``runtime`` "onnxruntime") or engine directory (``"tensorrt"``) of
    ``source`` for ``tile`` ((height, width) in input px, or one int for a square), ``batch`` and
    ``precision``, from the cache or made now and cached.

    Engines and float16 graphs are made from the float32 export, itself an entry (reused).
    Raises TensorRTUnavailable before any work where TensorRT or a GPU is missing, and
    MissingExtra where an entry must be made and the exporter (PyTorch) is not installed.
    """
    if runtime not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"no cached artefacts for runtime {runtime!r}: expected onnxruntime or tensorrt")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if runtime == "tensorrt":
        from .runtimes.tensorrt import require_tensorrt

        require_tensorrt()
    min_tile = source.config.min_tile
    if any(side % 8 or side < min_tile for side in tile_shape_of(tile)):
        raise ValueError(f"--tile {tile_name(tile)} is impossible for task {source.task.short!r}: tile sides are "
                         f"multiples of 8 and at least {min_tile} input px (the official tile is "
                         f"{source.task.tile[1]})")
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    cache = cache or ArtefactCache()

    def made(key: CacheKey, make: Callable[[Path], object]) -> Path:
        # problem() reads every byte of an entry, and fetch() does again: only where the exporter is
        # missing is it worth asking first, to refuse before fetch() takes the entry's lock.
        if missing_modules("export") and cache.problem(key) is not None:
            require_extra("export", f"exporting {source.task.short} for --runtime {runtime} (no intact export of "
                                    f"it in the cache {cache.root} yet)")
        return cache.fetch(key, make)

    def graphs() -> Path:
        key = source.key(tile=tile, batch=batch, precision="float32", runtime="onnxruntime")

        def export(out: Path) -> None:
            from rvrt_export.onnx_export import export_onnx

            log.info("exporting %s (tile %s, batch %d) to ONNX and validating every stage: this takes minutes, "
                     "once", source.task.short, tile_name(tile), batch)
            export_onnx(source.model, source.task, tile, out, batch=batch, checkpoint=source.checkpoint,
                        random_seed=source.seed)

        return made(key, export)

    if runtime == "onnxruntime" and precision == "float32":
        return graphs()
    key = source.key(tile=tile, batch=batch, precision=precision, runtime=runtime)
    if runtime == "onnxruntime":
        def convert(out: Path) -> None:
            from rvrt_export.fp16 import export_fp16

            export_fp16(source.model, graphs(), out)

        return made(key, convert)

    def build(out: Path) -> None:
        from rvrt_export.trt_build import build_engines

        log.info("building %s TensorRT engines of %s (tile %s): this takes minutes, once", precision,
                 source.task.short, tile_name(tile))
        build_engines(source.model, graphs(), out, fp16=precision == "float16")

    return made(key, build)
