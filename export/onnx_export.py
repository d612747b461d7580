"""Export RVRT to ONNX, one graph per stage, validated against eager PyTorch before it is served."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import selectors
import subprocess
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import closing
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
        # Run eagerly first: the shape-only window masks are then cached, and the trace takes them as constants
        # whichever stages this process ran before (traced cold it records the ops making them, and is slower).
        module(*args)
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


def export_and_validate(model: RVRT, spec: StageSpec, path: Path, opset: int) -> dict:
    start = time.perf_counter()
    export_stage(model, spec, path, opset)
    record = validate_stage(model, spec, path)
    record["export_seconds"] = round(time.perf_counter() - start, 2)
    return record


def default_jobs(stage_count: int) -> int:
    """One process per core, at most ``MAX_DEFAULT_JOBS``, where this interpreter can start copies of itself.

    Tracing a stage is single-threaded Python (torch.export, decompositions, the onnxscript optimizer): one
    process keeps one core busy. Each process holds its own copy of the model and of one stage's trace, hence
    the cap. An embedding host (vspipe) is no Python to start: there the stages are exported in this process.
    """
    if not Path(sys.executable).name.startswith("python"):
        return 1
    return max(1, min(stage_count, len(os.sched_getaffinity(0)), MAX_DEFAULT_JOBS))


MAX_DEFAULT_JOBS = 4


def exported_stages(model: RVRT, specs: list[StageSpec], staging: Path, opset: int, tile: int | Sequence[int],
                    batch: int, jobs: int | None) -> Iterator[tuple[StageSpec, dict]]:
    """Export and validate every stage into ``staging``; yields (spec, validation record) as each completes.

    With more than one job, worker interpreters (``rvrt_export.stage_worker``) load the model once from a
    scratch file and take stages as they free up. Not ``multiprocessing``: its spawned children re-run the
    caller's main script, and one without a ``__main__`` guard then hangs; forked ones would inherit torch's
    OpenMP pool in a state they cannot use. Closing the generator early (a failed stage, an interrupt) kills
    the workers and waits for them, so that none writes into ``staging`` after it is gone.
    """
    jobs = default_jobs(len(specs)) if jobs is None else jobs
    if jobs <= 1:
        for index, spec in enumerate(specs, 1):
            # A stage of full-size SR takes tens of seconds on a CPU: say what runs before it runs.
            log.info("stage %s (%d/%d): exporting and validating in ONNX Runtime against eager PyTorch",
                     spec.name, index, len(specs))
            yield spec, export_and_validate(model, spec, staging / f"{spec.name}.onnx", opset)
        return
    jobs = min(jobs, len(specs))
    log.info("exporting %d stages in %d processes, validating each in ONNX Runtime against eager PyTorch",
             len(specs), jobs)
    # Beside the output, not in /tmp: a full-size model's weights are 46 MB, and the space is where the export goes.
    with tempfile.TemporaryDirectory(prefix=f"{staging.name}-model-", dir=staging.parent) as scratch:
        weights = Path(scratch) / "model.pt"
        torch.save({"config": dataclasses.asdict(model.config), "state": model.state_dict()}, weights)
        height, width = tile_shape_of(tile)
        threads = max(1, len(os.sched_getaffinity(0)) // jobs)
        command = [sys.executable, "-m", "rvrt_export.stage_worker", str(weights), str(staging), str(opset),
                   f"{height}x{width}", str(batch), str(threads)]
        workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                   for _ in range(jobs)]
        completed = False
        try:
            yield from _take_stages(workers, specs)
            completed = True
        finally:
            for worker in workers:
                if not completed:
                    worker.kill()
                with worker:    # closes its pipes and waits for it
                    pass


def _worker_ended(worker: subprocess.Popen, spec: StageSpec) -> ArtifactError:
    return ArtifactError(f"stage {spec.name!r}: its export worker ended with status {worker.wait()} before "
                         f"finishing it (see its messages above)")


def _take_stages(workers: list[subprocess.Popen], specs: list[StageSpec]) -> Iterator[tuple[StageSpec, dict]]:
    waiting = deque(specs)
    working = {}
    ready = selectors.DefaultSelector()

    def hand_out(worker):
        if waiting:
            working[worker] = waiting.popleft()
            try:
                worker.stdin.write(working[worker].name + "\n")
                worker.stdin.flush()
            except BrokenPipeError:
                raise _worker_ended(worker, working[worker]) from None
        else:
            worker.stdin.close()
            ready.unregister(worker.stdout)

    for worker in workers:
        ready.register(worker.stdout, selectors.EVENT_READ, worker)
        hand_out(worker)
    while working:
        for key, _ in ready.select():
            worker = key.data
            spec = working.pop(worker)
            line = worker.stdout.readline()
            if not line:
                raise _worker_ended(worker, spec)
            result = json.loads(line)
            if "error" in result:
                raise ArtifactError(f"stage {spec.name!r}: exporting it failed: {result['error']}")
            hand_out(worker)
            yield spec, result["record"]


def export_onnx(model: RVRT, task: Task, tile: int | Sequence[int], out_dir: str | Path, *, batch: int = 1,
                opset: int = 20, checkpoint: str | Path | None = None, random_seed: int | None = None,
                jobs: int | None = None) -> dict:
    """Write every stage graph and ``manifest.json`` to ``out_dir``; returns the manifest.

    ``tile``: (height, width) in input px, or one int for a square. The directory is assembled
    under a temporary name and renamed when complete. Every graph is validated in ONNX Runtime
    against its eager stage; a stage over the float32 tolerance fails the export, naming the stage.
    ``jobs``: processes that export stages side by side (default :func:`default_jobs`); the graphs are the
    same bytes whatever their number.
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
        specs = stage_specs(model, tile, batch)
        records = {}
        # Closed here, not when the traceback goes: no worker may write into staging once it is removed.
        with closing(exported_stages(model, specs, staging, opset, tile, batch, jobs)) as exported:
            for done, (spec, record) in enumerate(exported, 1):
                path = staging / f"{spec.name}.onnx"
                log.info("stage %s (%d/%d done): %.1f MB, max abs error %.2e, %.0f s", spec.name, done, len(specs),
                         path.stat().st_size / 1e6, record["max_abs"], record["export_seconds"])
                if not record["passed"]:
                    raise ArtifactError(f"stage {spec.name!r}: ONNX Runtime differs from eager PyTorch by "
                                        f"{record['max_abs']:.3g} (tolerance {FLOAT32_TOLERANCE:g}); the export is not usable")
                records[spec.name] = record
        stages = {spec.name: {"file": f"{spec.name}.onnx",
                              "inputs": [{"name": n, "shape": list(shape)} for n, shape in spec.inputs],
                              "outputs": list(spec.outputs), **graph_record(staging / f"{spec.name}.onnx")}
                  for spec in specs}
        validation = {spec.name: records[spec.name] for spec in specs}
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
