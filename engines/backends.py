"""Choosing a backend from what the user passes: an export directory, an engine, or a task."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rvrt import EagerStages, RVRTConfig, Task, build_model, get_task, run_recurrent
from rvrt.config import TASKS
from rvrt_export.manifest import ArtifactError, read_manifest
from rvrt_export.reference import config_from_manifest


@dataclass
class Backend:
    """Stages of one model on one runtime, with what the runner must respect.

    tile/batch: the fixed tile (input px) and tiles per call of exported graphs; None for
    eager PyTorch, which takes any size.
    """

    name: str
    task: Task
    config: RVRTConfig
    stages: object
    tile: int | None = None
    batch: int | None = None
    device: str = "cpu"

    def __enter__(self):
        enter = getattr(self.stages, "__enter__", None)
        if enter:
            enter()
        return self

    def __exit__(self, *exc):
        leave = getattr(self.stages, "__exit__", None)
        if leave:
            leave(*exc)

    def restore(self, lq: torch.Tensor) -> torch.Tensor:
        """(n, t, cin, H, W) -> (n, t, 3, H*s, W*s); pads n up to a fixed batch and drops the padding."""
        count = lq.shape[0]
        if self.batch and count < self.batch:
            lq = torch.cat([lq, lq[-1:].expand(self.batch - count, *lq.shape[1:])])
        with torch.no_grad():
            return run_recurrent(self.stages, lq.to(self.device))[:count].cpu()


def load_backend(model: str | os.PathLike, *, task: str | None = None, checkpoint: str | os.PathLike | None = None,
                 random_weights: bool = False, device: str = "cpu", threads: int | None = None,
                 allow_unvalidated: bool = False) -> Backend:
    """MODEL may be an ``rvrt-export onnx`` directory (ONNX Runtime), an ``rvrt-export trt``
    directory (TensorRT; fails with the reason where TensorRT or a GPU is missing), an official
    ``.pth`` checkpoint, or a task name (eager PyTorch, with ``checkpoint`` or ``random_weights``)."""
    path = Path(model)
    if path.is_dir():
        manifest = read_manifest(path)
        spec = get_task(manifest["task"])
        if task and get_task(task).id != spec.id:
            raise ArtifactError(f"{path} was exported for task {spec.short!r} ({spec.id}), not {task!r}")
        if "engine" in manifest:
            from .tensorrt import tensorrt_stages
            stages = tensorrt_stages(path, allow_unvalidated=allow_unvalidated)
            return Backend("tensorrt", spec, config_from_manifest(manifest), stages, manifest["tile"],
                           manifest["batch"], device="cuda")
        from .onnxrt import onnxruntime_stages
        stages = onnxruntime_stages(path, device=device, threads=threads, allow_unvalidated=allow_unvalidated)
        return Backend("onnxruntime", spec, config_from_manifest(manifest), stages, manifest["tile"],
                       manifest["batch"])
    if path.suffix in (".plan", ".engine"):
        raise ArtifactError(f"{path}: pass the engine directory made by 'rvrt-export trt' (it holds the manifest "
                            f"that says which task, tile and precision the engines were built for)")
    if path.suffix == ".pth" or (path.exists() and not path.is_dir()):
        checkpoint = path
        stem = path.name.removesuffix(".pth")
        task = task or (stem if stem in TASKS else None)
        if task is None:
            raise ValueError(f"cannot tell the task of checkpoint {str(path)!r} from its name: pass --task")
    elif task is None:
        task = str(model)
    spec = get_task(task)
    net = build_model(spec.id, checkpoint, random_weights=random_weights).to(device)
    return Backend("pytorch", spec, net.config, EagerStages(net), device=device)



