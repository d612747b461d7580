"""Choosing a backend from what the user passes: an export or engine directory, a checkpoint or a task
(eager PyTorch, or exports and engines made and cached on first use)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rvrt import CheckpointError, RVRTConfig, Task, get_task
from rvrt.arrays import array_namespace, host_float32
from rvrt.config import TASKS
from rvrt_engines.manifest import ArtifactError, config_from_manifest, read_manifest, tile_of

from .cache import ArtefactCache, ModelSource, cached_artefacts
from .runtimes.pytorch import RANDOM_SEED, eager_stages, run_on_torch


@dataclass
class Backend:
    """Stages of one model on one runtime, with what the runner must respect.

    tile/batch: the fixed tile, (height, width) in input px, and tiles per call of exported
    graphs; None for eager PyTorch, which takes any size. random_weights: the network has random weights, not
    an official checkpoint's (its output is no restoration). directory: the export or engine
    directory served, None for eager PyTorch. run: how the recurrent driver runs on ``stages``,
    ``run(stages, lq, device)``, taking host windows to the stages' array kind (numpy for ONNX
    Runtime, torch tensors on ``device`` otherwise).
    """

    name: str
    task: Task
    config: RVRTConfig
    stages: object
    tile: tuple[int, int] | None = None
    batch: int | None = None
    device: str = "cpu"
    random_weights: bool = False
    directory: Path | None = None
    run: Callable = run_on_torch

    def __enter__(self):
        enter = getattr(self.stages, "__enter__", None)
        if enter:
            enter()
        return self

    def __exit__(self, *exc):
        leave = getattr(self.stages, "__exit__", None)
        if leave:
            leave(*exc)

    def restore(self, lq):
        """(n, t, cin, H, W) -> (n, t, 3, H*s, W*s) float32 on the host, of lq's array kind (numpy
        or torch) whatever the stages compute with; pads n up to a fixed batch and drops the padding."""
        count = lq.shape[0]
        padded = lq
        if self.batch and count < self.batch:
            xp = array_namespace(lq)
            padded = xp.concat([lq, xp.broadcast_to(lq[-1:], (self.batch - count, *lq.shape[1:]))])
        return host_float32(self.run(self.stages, padded, self.device)[:count], like=lq)


RUNTIMES = ("onnxruntime", "tensorrt", "pytorch")


def load_backend(model: str | os.PathLike, *, task: str | None = None, checkpoint: str | os.PathLike | None = None,
                 random_weights: bool = False, device: str = "cpu", threads: int | None = None,
                 allow_unvalidated: bool = False, runtime: str | None = None, fp16: bool = False,
                 tile: int | Sequence[int] | None = None, batch: int | None = None,
                 cache: ArtefactCache | None = None) -> Backend:
    """The backend for MODEL: an ``rvrt-export onnx`` directory (ONNX Runtime), an ``rvrt-export
    trt`` directory (TensorRT; fails with the reason where TensorRT or a GPU is missing), an
    official ``.pth`` checkpoint, or a task name (with ``checkpoint`` or ``random_weights``).

    runtime: None serves a directory on its own runtime and a checkpoint or task on eager
    PyTorch. "onnxruntime" or "tensorrt" with a checkpoint or task serves the validated export
    or engines from the cache (:mod:`.cache`), made there on first use for ``tile`` ((height,
    width) in input px, or one int for a square) [the task's official tile] and ``batch`` [1].
    fp16: float16 graphs, engines or eager network.
    """
    if runtime not in (None, *RUNTIMES):
        raise ValueError(f"unknown runtime {runtime!r}: expected --runtime {', '.join(RUNTIMES)}")
    path = Path(model)
    if path.is_dir():
        return directory_backend(path, task=task, runtime=runtime, fp16=fp16, device=device, threads=threads,
                                 allow_unvalidated=allow_unvalidated)
    if path.suffix in (".plan", ".engine", ".onnx"):
        state = "is a file" if path.exists() else "does not exist"
        raise ArtifactError(f"{path} {state}: pass the engine directory made by 'rvrt-export trt' (or the "
                            f"export directory of 'rvrt-export onnx'), whose manifest says which task, tile and "
                            f"precision its engines or graphs are for")
    spec, checkpoint = weights_of(model, path, task=task, checkpoint=checkpoint, random_weights=random_weights)
    if runtime in (None, "pytorch"):
        return eager_backend(spec, checkpoint, device=device, fp16=fp16)
    source = ModelSource(spec, checkpoint=checkpoint, seed=None if checkpoint else RANDOM_SEED)
    directory = cached_artefacts(source, runtime, tile=tile or spec.tile[1], batch=batch or 1,
                                 precision="float16" if fp16 else "float32", cache=cache)
    return directory_backend(directory, task=None, runtime=runtime, fp16=fp16, device=device, threads=threads,
                             allow_unvalidated=allow_unvalidated)


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
            raise ValueError(f"MODEL {str(model)!r} is neither an export or engine directory, a checkpoint file, "
                             f"nor a task; expected one of: {', '.join(t.short for t in TASKS.values())}") from None
        if task and get_task(task).id != spec.id:
            raise ValueError(f"MODEL {str(model)!r} and --task {task!r} name different tasks: give one")
    if checkpoint is not None and random_weights:
        raise ValueError("give either --checkpoint or --random-weights, not both")
    if checkpoint is None and not random_weights:
        raise ValueError(f"no checkpoint given for task {spec.short!r}: pass --checkpoint {spec.id}.pth (the official "
                         f"file, see README), or --random-weights for tests and demos")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} does not exist (expected the official {spec.id}.pth)")
    return spec, Path(checkpoint) if checkpoint is not None else None


def eager_backend(spec: Task, checkpoint: Path | None, *, device: str, fp16: bool) -> Backend:
    """Eager PyTorch (:func:`.runtimes.pytorch.eager_stages`)."""
    stages, config = eager_stages(spec, checkpoint, device=device, fp16=fp16)
    return Backend("pytorch", spec, config, stages, device=device, random_weights=checkpoint is None)


def directory_backend(path: Path, *, task: str | None, runtime: str | None, fp16: bool, device: str,
                      threads: int | None, allow_unvalidated: bool) -> Backend:
    """The graphs (ONNX Runtime) or engines (TensorRT) of an export or engine directory."""
    manifest = read_manifest(path)
    spec = get_task(manifest["task"])
    if task and get_task(task).id != spec.id:
        raise ArtifactError(f"{path} was exported for task {spec.short!r} ({spec.id}), not {task!r}")
    served, holds = ("tensorrt", "TensorRT engines") if "engine" in manifest else ("onnxruntime", "ONNX graphs")
    if runtime not in (None, served):
        raise ArtifactError(f"{path} holds {holds}: they run with --runtime {served}, not {runtime}; for "
                            f"--runtime {runtime}, pass a task or checkpoint as MODEL")
    if fp16 and manifest["dtype"] != "float16":
        raise ArtifactError(f"{path} holds {manifest['dtype']} {holds}, not float16: drop --fp16, or make float16 "
                            f"ones ('rvrt-export fp16 {path}', or 'rvrt-export trt {path} --fp16')")
    random_weights = bool(manifest["checkpoint"].get("random_weights"))
    config = config_from_manifest(manifest)
    if served == "tensorrt":
        from .runtimes.tensorrt import tensorrt_stages
        stages = tensorrt_stages(path, allow_unvalidated=allow_unvalidated)
        return Backend("tensorrt", spec, config, stages, tile_of(manifest), manifest["batch"], device="cuda",
                       random_weights=random_weights, directory=path)
    from .runtimes.onnxruntime import onnxruntime_stages, run_on_numpy
    stages = onnxruntime_stages(path, device=device, threads=threads, allow_unvalidated=allow_unvalidated)
    # On a CUDA provider ONNX Runtime still takes and returns host numpy arrays.
    return Backend("onnxruntime", spec, config, stages, tile_of(manifest), manifest["batch"],
                   random_weights=random_weights, directory=path, run=run_on_numpy)
