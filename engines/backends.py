"""What a frontend serves, from what the user passes (an export or engine directory, a checkpoint or a task):
a :class:`Description` (runtime record, task, tile...: no live state), opened into a live :class:`Backend`
where the work runs (this process, a Ray worker, a VapourSynth filter)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rvrt import CheckpointError, RVRTConfig, Task, get_task
from rvrt.arrays import array_namespace, host_float32
from rvrt.config import TASKS

from .cache import ArtefactCache, ModelSource
from .manifest import ArtifactError, config_from_manifest, holds, read_manifest, require_validated, tile_of
from .runtimes import RUNTIMES, PyTorch, Runtime, default_runtime, runtime_named, runtime_record, serving_runtime
from .runtimes.pytorch import RANDOM_SEED
from .weights import OFFICIAL, official_checkpoint


@dataclass(frozen=True)
class Description:
    """What a frontend serves, apart from anything live: the model, its runtime record and what the runner must
    respect. Cheap to pickle (Ray workers, the VapourSynth filter receive it) and opened where it runs.

    runtime: the resolved runtime record. source: the network for eager PyTorch, or where a cached directory
    was made from (None for a directory the user gave). directory: the export or engine directory served
    (None for eager PyTorch). tile/batch: the fixed tile, (height, width) in input px, and tiles per call of
    exported graphs; None for eager PyTorch, which takes any size. random_weights: the network has random
    weights, not an official checkpoint's (its output is no restoration). cache_root: the artefact cache a
    worker that lacks ``directory`` (another node's disk) makes it again in.
    """

    task: Task
    config: RVRTConfig
    runtime: Runtime
    source: ModelSource | None = None
    directory: Path | None = None
    tile: tuple[int, int] | None = None
    batch: int | None = None
    random_weights: bool = False
    allow_unvalidated: bool = False
    cache_root: Path | None = None

    @property
    def name(self) -> str:
        return self.runtime.name

    @property
    def needs_gpu(self) -> bool:
        return self.runtime.needs_gpu

    @property
    def precision(self) -> str:
        return self.runtime.resolved().precision

    def provenance(self) -> dict:
        """What made an output, as it records it: the task, the weights (their sha256, or "random weights"),
        the runtime and its precision."""
        if self.random_weights:
            weights = "random weights"
        elif self.directory is not None and self.source is None:
            weights = f"sha256:{read_manifest(self.directory)['checkpoint'].get('sha256', 'unknown')}"
        elif self.source is not None and self.source.checkpoint is not None:
            weights = self.source.weights
        else:
            weights = "a network built in this process"
        return {"task": self.task.id, "weights": weights, "runtime": self.runtime.name, "precision": self.precision}

    def with_threads(self, threads: int | None) -> Description:
        """This description for a worker of ``threads`` threads (runtimes without a thread option ignore it)."""
        if threads is None or "threads" not in self.runtime.__dataclass_fields__:
            return self
        return dataclasses.replace(self, runtime=dataclasses.replace(self.runtime, threads=threads))

    @contextlib.contextmanager
    def open(self) -> Iterator[Backend]:
        """The live :class:`Backend`: the runtime's stages opened once (sessions, engines, the network), closed
        when the block ends, also on errors."""
        target = self.directory if self.runtime.exported else self.source
        if self.directory is not None and self.source is not None and not self.directory.is_dir():
            target = self.runtime.artefacts(self.source, tile=self.tile, batch=self.batch or 1,
                                            cache=ArtefactCache(self.cache_root))
        with self.runtime.stages(target, task=self.task, config=self.config,
                                 allow_unvalidated=self.allow_unvalidated) as stages:
            yield Backend(self, stages)


@dataclass
class Backend:
    """A :class:`Description` opened: its live stages, and how the recurrent driver runs on them."""

    description: Description
    stages: object

    def __getattr__(self, name):
        # task, config, tile, batch, name, random_weights...: the description's.
        if name == "description":
            raise AttributeError(name)
        return getattr(self.description, name)

    def restore(self, lq):
        """(n, t, cin, H, W) -> (n, t, 3, H*s, W*s) float32 on the host, of lq's array kind (numpy
        or torch) whatever the stages compute with; pads n up to a fixed batch and drops the padding."""
        count = lq.shape[0]
        padded = lq
        batch = self.description.batch
        if batch and count < batch:
            xp = array_namespace(lq)
            padded = xp.concat([lq, xp.broadcast_to(lq[-1:], (batch - count, *lq.shape[1:]))])
        return host_float32(self.description.runtime.run(self.stages, padded)[:count], like=lq)


def load_backend(model: str | os.PathLike, *, task: str | None = None, checkpoint: str | os.PathLike | None = None,
                 random_weights: bool = False, device: str = "cpu", threads: int | None = None,
                 allow_unvalidated: bool = False, runtime: str | Runtime | None = None, fp16: bool = False,
                 precision: str | None = None, tile: int | Sequence[int] | None = None, batch: int | None = None,
                 cache: ArtefactCache | None = None) -> Description:
    """The :class:`Description` of MODEL: an ``rvrt-export onnx`` or ``rvrt-export trt`` directory (served by
    the first runtime of the registry that serves it and runs here, or by ``runtime``), an official ``.pth``
    checkpoint, or a task name (with ``checkpoint`` or ``random_weights``).

    runtime: a record, or a name of :data:`~rvrt_engines.runtimes.RUNTIMES` with ``device``, ``threads`` and
    ``precision`` (fp16: float16). None serves a directory on its own runtime and a checkpoint or task on
    eager PyTorch. An exported runtime with a checkpoint or task serves the validated directory from the cache
    (:mod:`.cache`), made there on first use for ``tile`` ((height, width) in input px, or one int for a
    square) [the task's official tile] and ``batch`` [1]. Nothing is opened: :meth:`Description.open` does.
    """
    if fp16:
        if precision not in (None, "float16"):
            raise ValueError("give either --fp16 or --precision, not both")
        precision = "float16"
    path = Path(model)
    record = runtime if isinstance(runtime, Runtime) else None
    if path.is_dir():
        return directory_description(path, task=task, runtime=runtime, precision=precision, device=device,
                                     threads=threads, allow_unvalidated=allow_unvalidated)
    if path.suffix in (".plan", ".engine", ".onnx"):
        state = "is a file" if path.exists() else "does not exist"
        raise ArtifactError(f"{path} {state}: pass the engine directory made by 'rvrt-export trt' (or the "
                            f"export directory of 'rvrt-export onnx'), whose manifest says which task, tile and "
                            f"precision its engines or graphs are for")
    spec, checkpoint = weights_of(model, path, task=task, checkpoint=checkpoint, random_weights=random_weights)
    record = record or (runtime_record(runtime, precision=precision, device=device, threads=threads) if runtime
                        else default_runtime(precision=precision, device=device, threads=threads))
    record = record.resolved()
    source = ModelSource(spec, checkpoint=checkpoint, seed=None if checkpoint else RANDOM_SEED)
    if not record.exported:
        record.require()
        return Description(spec, spec.config, record, source, random_weights=checkpoint is None)
    cache = cache or ArtefactCache()
    directory = record.artefacts(source, tile=tile or spec.tile[1], batch=batch or 1, cache=cache)
    manifest = read_manifest(directory)
    return Description(spec, config_from_manifest(manifest), record, source, directory, tile_of(manifest),
                       manifest["batch"], random_weights=checkpoint is None, allow_unvalidated=allow_unvalidated,
                       cache_root=cache.root)


def eager_description(task: Task, model, *, random_weights: bool = True, runtime: Runtime | None = None
                      ) -> Description:
    """Eager PyTorch (``runtime``: a :class:`~rvrt_engines.runtimes.PyTorch` record [on the CPU, float32]) on a
    network already built in this process (the demo's, rvrt-validate's, tests' tiny models)."""
    source = ModelSource(task, config=model.config, build=lambda: model)
    return Description(task, model.config, (runtime or PyTorch()).resolved(), source, random_weights=random_weights)


def known_task(model: str, task: str | None):
    """The task, when it can be told without loading anything (None otherwise)."""
    path = Path(model)
    try:
        if path.is_dir():
            return get_task(read_manifest(path)["task"])
        if task:
            return get_task(task)
        stem = path.name.removesuffix(".pth")
        return get_task(stem if stem in TASKS else model)
    except (ArtifactError, ValueError, KeyError, OSError):
        return None


def weights_of(model: str | os.PathLike, path: Path, *, task: str | None, checkpoint: str | os.PathLike | None,
               random_weights: bool) -> tuple[Task, Path | None]:
    """The task and checkpoint (None: random weights) that MODEL and the options ask for, or why not."""
    if path.suffix == ".pth" or path.is_file():
        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} does not exist (expected an official RVRT .pth file)")
        if checkpoint is not None:
            raise ValueError(f"MODEL {str(path)!r} is a checkpoint already: drop --checkpoint")
        checkpoint = path
        stem = path.name.removesuffix(".pth")
        task = task or (stem if stem in TASKS else None)
        if task is None:
            raise ValueError(f"cannot tell the task of checkpoint {str(path)!r} from its name: pass --task")
        spec = get_task(task)
    else:
        try:
            spec = get_task(str(model))
        except ValueError:
            raise ValueError(f"MODEL {str(model)!r} does not exist: expected an export or engine directory, an "
                             f"official .pth checkpoint, or a task: {', '.join(t.short for t in TASKS.values())}"
                             ) from None
        if task and get_task(task).id != spec.id:
            raise ValueError(f"MODEL {str(model)!r} and --task {task!r} name different tasks: give one")
    if checkpoint is not None and random_weights:
        raise ValueError("give either --checkpoint or --random-weights, not both")
    if str(checkpoint) == OFFICIAL:
        checkpoint = official_checkpoint(spec)
    if checkpoint is None and not random_weights:
        raise ValueError(f"no checkpoint given for task {spec.short!r}: pass --checkpoint official (fetched once with "
                         f"'rvrt-fetch {spec.short}') or the path of {spec.id}.pth, or --random-weights for tests and "
                         f"demos")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} does not exist (expected the official {spec.id}.pth)")
    return spec, Path(checkpoint) if checkpoint is not None else None


def directory_description(path: Path, *, task: str | None, runtime: str | Runtime | None, precision: str | None,
                          device: str, threads: int | None, allow_unvalidated: bool) -> Description:
    """The graphs or engines of an export or engine directory, on ``runtime`` or the registry's choice."""
    manifest = read_manifest(path)
    spec = get_task(manifest["task"])
    if task and get_task(task).id != spec.id:
        raise ArtifactError(f"{path} was exported for task {spec.short!r} ({spec.id}), not {task!r}")
    if isinstance(runtime, Runtime):
        record = runtime
    else:
        kind = runtime_named(runtime) if runtime is not None else serving_runtime(manifest, path)
        record = runtime_record(kind.name, precision=precision, device=device, threads=threads)
    if record.exported and not record.serves(manifest) and type(record)().serves(manifest):
        raise ArtifactError(f"{path} holds {holds(manifest)}, not {record.precision}: drop --fp16 or --precision, or "
                            f"{record.making_hint(path)}")
    if not record.exported or not record.serves(manifest):
        others = [name for name, kind in RUNTIMES.items() if kind.exported and kind().serves(manifest)]
        raise ArtifactError(f"{path} holds {holds(manifest)}: they run with --runtime {' or '.join(others)}; for "
                            f"--runtime {record.name}, {record.making_hint(path)}")
    if record.precision is None:
        record = dataclasses.replace(record, precision=record.directory_precision(manifest))
    # What the directory holds is checked when it is opened; its validation record already now, before any work.
    require_validated(manifest, path, allow_unvalidated)
    return Description(spec, config_from_manifest(manifest), record, None, path, tile_of(manifest), manifest["batch"],
                       random_weights=bool(manifest["checkpoint"].get("random_weights")),
                       allow_unvalidated=allow_unvalidated)
