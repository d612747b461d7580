"""ONNX Runtime backend: the exported stage graphs, as Polygraphy ONNX Runtime runners."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnxruntime as ort
from polygraphy.backend.onnxrt import OnnxrtRunner

from rvrt_export.manifest import read_manifest, require_validated

from .runner_stages import RunnerStages, stage_io


class SessionFromPath:
    """Lazy loader of an ONNX Runtime session with the options this project runs with:
    full graph optimisation, ``threads`` intra-op threads (None: ORT's default, all cores),
    sequential execution (the graphs are chains; parallel execution only adds overhead).

    emulate_float16: run a mixed-precision graph as :func:`rvrt_export.fp16.float16_emulation`
    (float16 storage, float32 arithmetic), which is what a CPU can tell of float16 accuracy.
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None,
                 emulate_float16: bool = False):
        self.path = str(path)
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self.emulate_float16 = emulate_float16

    def __call__(self) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Warnings only: float16 graphs make the CPU provider report every node it cannot
        # constant-fold in float16, dozens of lines that say nothing about the result.
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        model = self.path
        if self.emulate_float16:
            from rvrt_export.fp16 import float16_emulation

            model = float16_emulation(onnx.load(self.path)).SerializeToString()
        return ort.InferenceSession(model, sess_options=options, providers=self.providers)


def default_providers(device: str = "cpu") -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(f"device {device!r} asked for, but this onnxruntime has no CUDA execution provider "
                           f"(install onnxruntime-gpu)")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def onnxruntime_stages(export_dir: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                       allow_unvalidated: bool = False) -> RunnerStages:
    """Stages of an ``rvrt-export onnx`` directory on ONNX Runtime (refuses unvalidated exports)."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    require_validated(manifest, export_dir, allow_unvalidated)
    providers = default_providers(device)
    emulate = manifest["dtype"] == "float16" and device == "cpu"
    runners = {name: OnnxrtRunner(SessionFromPath(export_dir / stage["file"], providers, threads, emulate), name=name)
               for name, stage in manifest["stages"].items()}
    return RunnerStages(runners, stage_io(manifest), manifest["clip_size"])
