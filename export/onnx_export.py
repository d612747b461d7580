"""Export RVRT to ONNX, one graph per stage, validated against eager PyTorch before it is served."""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from rvrt.config import Task
from rvrt.model import RVRT
from rvrt.tiling import tile_name, tile_shape_of

from . import gda_onnx
from .accuracy import FLOAT32_TOLERANCE, compare_stage
from rvrt_engines.manifest import (FORMAT_VERSION, ArtifactError, assembled, graph_record, sha256_of, tile_record, versions,
                       write_manifest)
from .stages import StageSpec, stage_specs

log = logging.getLogger(__name__)
# The exporter warns on every export that torchvision's ops are not registered: we use none.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def export_stage(model: RVRT, spec: StageSpec, path: Path, opset: int) -> None:
    """Trace one stage with torch.onnx (dynamo) to ``path``; GDA becomes one custom node."""
    module = spec.module(model).eval()
    args = spec.example_inputs(torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        # Dynamo notes that it traces through the shape-only window-mask cache: intended.
        warnings.filterwarnings("ignore", message=".*lru_cache.*")
        # torch's own pytree code warns about its own deprecated LeafSpec check on every export.
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
        gda_onnx.export_with_gda(module, args, path, opset=opset, input_names=spec.input_names,
                                 output_names=list(spec.outputs))


def validate_stage(model: RVRT, spec: StageSpec, path: Path, precision: str = "float32") -> dict:
    """Run the graph in ONNX Runtime on fresh random inputs against the eager stage (float16
    graphs as float16 storage with float32 arithmetic, see ``SessionFromPath``)."""
    from rvrt_engines.runtimes.onnxruntime import SessionFromPath

    session = SessionFromPath(path, emulate_float16=precision == "float16")()
    outputs = list(spec.outputs)
    return compare_stage(model, spec, lambda feed: dict(zip(outputs, session.run(outputs, dict(feed)))), precision)


def export_onnx(model: RVRT, task: Task, tile: int | Sequence[int], out_dir: str | Path, *, batch: int = 1,
                opset: int = 20, checkpoint: str | Path | None = None, random_seed: int | None = None) -> dict:
    """Write every stage graph and ``manifest.json`` to ``out_dir``; returns the manifest.

    ``tile``: (height, width) in input px, or one int for a square. The directory is assembled
    under a temporary name and renamed when complete. Every graph is validated in ONNX Runtime
    against its eager stage; a stage over the float32 tolerance fails the export, naming the stage.
    """
    cfg = model.config
    if any(side % 8 or side < cfg.min_tile for side in tile_shape_of(tile)):
        raise ValueError(f"tile {tile_name(tile)} impossible for task {task.short!r}: each side must be a multiple "
                         f"of 8 and at least {cfg.min_tile} input px (SpyNet's smallest input)")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    out_dir = Path(out_dir)
    with assembled(out_dir) as staging:
        model = model.eval()
        stages, validation = {}, {}
        specs = stage_specs(model, tile, batch)
        for index, spec in enumerate(specs, 1):
            start = time.perf_counter()
            path = staging / f"{spec.name}.onnx"
            # A stage of full-size SR takes tens of seconds on a CPU: say what runs before it runs.
            log.info("stage %s (%d/%d): exporting", spec.name, index, len(specs))
            export_stage(model, spec, path, opset)
            log.info("stage %s (%d/%d): validating in ONNX Runtime against eager PyTorch", spec.name, index,
                     len(specs))
            record = validate_stage(model, spec, path)
            record["export_seconds"] = round(time.perf_counter() - start, 2)
            validation[spec.name] = record
            stages[spec.name] = {"file": path.name, "inputs": [{"name": n, "shape": list(shape)} for n, shape in spec.inputs],
                                 "outputs": list(spec.outputs), **graph_record(path)}
            log.info("stage %s: %.1f MB, max abs error %.2e", spec.name, path.stat().st_size / 1e6, record["max_abs"])
            if not record["passed"]:
                raise ArtifactError(f"stage {spec.name!r}: ONNX Runtime differs from eager PyTorch by "
                                    f"{record['max_abs']:.3g} (tolerance {FLOAT32_TOLERANCE:g}); the export is not usable")
        manifest = {
            "format_version": FORMAT_VERSION, "task": task.id, "task_short": task.short,
            "config": dataclasses.asdict(cfg), "scale": cfg.upscale, "tile": tile_record(tile),
            "clip_size": cfg.clip_size, "batch": batch, "opset": opset, "dtype": "float32", "stages": stages,
            "versions": versions(),
            "checkpoint": ({"file": Path(checkpoint).name, "sha256": sha256_of(checkpoint)} if checkpoint
                           else {"random_weights": True, "seed": random_seed}),
            "validation": {"backend": "onnxruntime-cpu", "reference": "eager PyTorch float32", "passed": True,
                           "stages": validation},
        }
        write_manifest(staging, manifest)
    return manifest
