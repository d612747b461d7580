"""Accuracy parity of every backend and precision against eager PyTorch float32.

For an export or engine directory, :func:`validate` measures each candidate, every runtime of the
registry (:data:`rvrt_engines.runtimes.RUNTIMES`) in every precision it serves (ONNX Runtime float32
and float16, OpenVINO float32 and bfloat16, TensorRT float32/float16), opened through the same
``load_backend`` as every frontend, twice:

- per stage: the candidate's graph or engine against the eager stage on random inputs, the
  same measurement export and engine builds make (:func:`rvrt_export.accuracy.compare_stage`);
- end to end: a generated clip restored through the tiled recurrent runner by the candidate
  and by the eager model, compared frame by frame (max/mean abs error, PSNR, SSIM).

Eager PyTorch on a CUDA GPU (float32 with the fused GDA kernel, and float16 with the float16
export's float32 islands) is measured the same way, as candidates "pytorch-cuda float32/float16".
``rvrt-validate`` itself branches on no runtime: what a record serves, and how its stages are run one
at a time, are the record's own.
A candidate that cannot run here (no TensorRT, no GPU, no engines) is reported as skipped
with the reason; only what ran can pass.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rvrt import Tiling, get_task, restore_tiled
from rvrt.model import RVRT
from rvrt_engines.backends import eager_description, load_backend
from rvrt_engines.manifest import assembled, read_manifest, source_graphs, tile_of
from rvrt_engines.restore import frame_to_array
from rvrt_engines.runtimes import RUNTIMES, Runtime
from rvrt_engines.synthetic import degrade, moving_photo_frames
from rvrt_export.accuracy import FLOAT16_RELATIVE_TOLERANCE, FLOAT32_TOLERANCE, compare_stage
from rvrt_export.fp16 import export_fp16, spec_of

from . import images

# Whole restored frames in [0, 1] against eager float32. float32: the per-stage tolerance
# (frames are a stage's output too). float16: 40 dB is an RMS difference of 1 % of the range
# (2.5 of 255 levels), well below what a viewer notices, while a broken stage falls to 20-30 dB.
END_TO_END_FLOAT32_MAX_ABS = FLOAT32_TOLERANCE
END_TO_END_FLOAT16_MIN_PSNR_DB = 40.0
SIGMA = 20.0
CROP = 128

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One runtime record to hold against eager: ``directory`` holds what it runs (None for eager PyTorch)."""

    runtime: Runtime
    directory: Path | None = None
    skipped: str | None = None
    measured: dict | None = dataclasses.field(default=None, repr=False)
    """Stage records already measured by the same check in this run (the float16 graphs)."""

    @property
    def label(self) -> str:
        return f"{self.runtime.name}{'-cuda' if self.runtime.needs_gpu and not self.runtime.exported else ''} " \
               f"{self.runtime.precision}"

    def record(self) -> dict:
        return {"label": self.label, "runtime": self.runtime.name, "precision": self.runtime.precision,
                "device": self.runtime.device, "directory": str(self.directory or ""), "skipped": self.skipped}


def candidate_records(runtimes: Sequence[str] = (), precisions: Sequence[str] = ()) -> list[Runtime]:
    """Every runtime of the registry in every precision it serves (only those named in ``runtimes`` and
    ``precisions``, where given), eager PyTorch on a CUDA GPU only (on the CPU it is the reference itself)."""
    records = []
    for kind in RUNTIMES.values():
        if runtimes and kind.name not in runtimes:
            continue
        for precision in kind.precisions:
            if precisions and precision not in precisions:
                continue
            if kind.exported:
                records.append(kind(precision=precision))
            else:
                records.append(kind(precision=precision, device="cuda"))
    return records


def ran_instead(record: Runtime) -> str | None:
    """Why ``record`` cannot be measured here when this machine would run it in another precision (OpenVINO's
    bfloat16 on a CPU without it runs float32): measuring that under the precision's name would claim a
    validation that never ran."""
    here = record.resolved().precision
    if here == record.precision:
        return None
    return f"{record.label} {record.precision} does not run on this machine: it runs {here} here instead"


def candidates(model_dir: Path, manifest: dict, scratch: Path, model: RVRT,
               runtimes: Sequence[str] = (), precisions: Sequence[str] = ()) -> list[Candidate]:
    """What can be measured for ``model_dir``, and what cannot (with the reason), of the runtimes and precisions
    named (all when none are). A float32 export's float16 graphs are made in ``scratch`` to be measured too;
    an engine directory's ONNX graphs are measured beside its engines."""
    graphs = source_graphs(manifest, model_dir)
    found = []
    for record in candidate_records(runtimes, precisions):
        if graphs is not None and record.exported and record.precision != manifest["dtype"]:
            # Engines are validated at the precision they were built in; their graphs are measured beside them.
            continue
        reason = record.unavailable() or ran_instead(record)
        if reason:
            found.append(Candidate(record, skipped=reason))
        elif not record.exported:
            found.append(Candidate(record))
        elif record.serves(manifest):
            found.append(Candidate(record, model_dir))
        elif graphs is not None and (graphs / "manifest.json").exists() and record.serves(read_manifest(graphs)):
            found.append(Candidate(record, graphs))
        elif graphs is None and (made := record.derived(model, model_dir, scratch / record.name)):
            found.append(Candidate(record, scratch / record.name, measured=made["validation"]["stages"]))
        else:
            found.append(Candidate(record, skipped=f"{model_dir} holds nothing {record.label} serves in "
                                                   f"{record.precision}: {record.making_hint(model_dir)}"))
    return found


def generated_clip(task_kind: str, frames: int, height: int, width: int, scale: int) -> torch.Tensor:
    """(1, frames, cin, height, width) degraded pan over a bundled photograph, in [0, 1]."""
    clean = moving_photo_frames(frames, height * scale, width * scale)
    degraded = degrade(clean, task_kind, sigma=SIGMA)
    to_array = frame_to_array(SIGMA if task_kind == "denoise" else None)
    return torch.from_numpy(np.stack([to_array(frame) for frame in degraded])[None])


def stage_progress(label: str, manifest: dict):
    """(stage name, stage entry) of ``manifest``, each announced on the log as it is measured:
    "validating onnxruntime float16: stage forward_1 (7/11)"."""
    count = len(manifest["stages"])
    for index, (name, stage) in enumerate(manifest["stages"].items(), 1):
        log.info("validating %s: stage %s (%d/%d)", label, name, index, count)
        yield name, stage


def stage_records(model: RVRT, manifest: dict, backend, label: str) -> dict:
    """Every stage of an opened ``backend`` against its eager float32 stage."""
    runtime = backend.description.runtime
    return {name: compare_stage(model, spec_of(name, stage),
                                lambda feed, name=name: runtime.run_stage(backend.stages, name, spec_of(name, stage),
                                                                          dict(feed)), runtime.precision)
            for name, stage in stage_progress(label, manifest)}


def frame_metrics(reference: np.ndarray, restored: np.ndarray, precision: str) -> dict:
    """(T, 3, H, W) in [0, 1], both clipped as a video writer would."""
    reference, restored = np.clip(reference, 0, 1), np.clip(restored, 0, 1)
    error = np.abs(restored - reference)
    psnr = [peak_signal_noise_ratio(r, o, data_range=1.0) for r, o in zip(reference, restored)]
    ssim = [structural_similarity(r, o, data_range=1.0, channel_axis=0) for r, o in zip(reference, restored)]
    finite = [p for p in psnr if math.isfinite(p)]
    record = {"max_abs": float(error.max()), "mean_abs": float(error.mean()),
              "psnr_db": float(min(finite)) if finite else None, "identical_frames": len(psnr) - len(finite),
              "ssim": float(min(ssim))}
    if precision == "float32":
        record["tolerance"] = f"max_abs <= {END_TO_END_FLOAT32_MAX_ABS:g}"
        record["passed"] = bool(record["max_abs"] <= END_TO_END_FLOAT32_MAX_ABS)
    else:
        record["tolerance"] = f"psnr_db >= {END_TO_END_FLOAT16_MIN_PSNR_DB:g}"
        record["passed"] = bool(record["psnr_db"] is None or record["psnr_db"] >= END_TO_END_FLOAT16_MIN_PSNR_DB)
    return record


def pictures(lq: np.ndarray, reference: np.ndarray, restored: np.ndarray, scale: int, label: str,
             out_dir: Path) -> dict:
    """The frame with the largest error: a crop (input | eager | candidate | error, each panel
    labelled) and its whole-frame heat map of the channel-averaged error, white at its largest
    value. Returns file names and that largest value."""
    stem = label.replace(" ", "-")
    error = np.abs(np.clip(restored, 0, 1) - np.clip(reference, 0, 1)).mean(axis=1)
    frame = int(np.argmax(error.reshape(len(error), -1).max(axis=1)))
    scale_value = float(error[frame].max())
    heat = images.heat_map(error[frame], scale_value)
    top, left, h, w = images.crop_box(error[frame], CROP)
    window = (slice(top, top + h), slice(left, left + w))
    upsampled = np.repeat(np.repeat(lq[frame, :3], scale, axis=1), scale, axis=2)
    panels = [images.to_uint8(image)[window] for image in (upsampled, reference[frame], restored[frame])]
    panels = [images.labelled(panel, name) for panel, name in zip(panels + [heat[window]],
                                                                 ("input", "eager", label, "error"))]
    images.save_png(images.side_by_side(panels), out_dir / f"{stem}-crop.png")
    images.save_png(heat, out_dir / f"{stem}-heatmap.png")
    return {"frame": frame, "crop": f"{stem}-crop.png", "crop_box": [top, left, h, w],
            "heatmap": f"{stem}-heatmap.png", "heatmap_full_scale": scale_value}


def validate(model: RVRT, model_dir: str | Path, out_dir: str | Path, frames: int = 6,
             runtimes: Sequence[str] = (), precisions: Sequence[str] = ()) -> dict:
    """Measure every candidate of ``model_dir`` (of the runtimes and precisions named; all when none are) against
    ``model`` (eager float32); write ``report.json``, ``report.md`` and the PNGs to ``out_dir`` (complete or not
    at all)."""
    from .render import render_markdown, write_json

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    manifest = read_manifest(model_dir)
    if frames < 2:
        raise ValueError(f"--frames must be at least 2 (one clip), got {frames}")
    task = get_task(manifest["task"])
    (tile_h, tile_w), scale = tile_of(manifest), manifest["scale"]
    # 1.5 tiles a side: every candidate restores overlapping tiles along both axes.
    height, width = tile_h + tile_h // 2, tile_w + tile_w // 2
    tiling = Tiling(window=0, tile=(tile_h, tile_w), tile_overlap=min(20, min(tile_h, tile_w) // 4),
                    batch=manifest["batch"])
    with assembled(out_dir) as staging, tempfile.TemporaryDirectory(prefix="rvrt-validate-") as scratch:
        lq = generated_clip(task.kind, frames, height, width, scale)
        log.info("restoring the %d-frame clip of %dx%d with eager PyTorch float32 (the reference)", frames, width,
                 height)
        with torch.no_grad():
            reference = restore_tiled(model, lq, model.config, tiling)[0].numpy()
        results = []
        for candidate in candidates(model_dir, manifest, Path(scratch), model, runtimes, precisions):
            record = candidate.record()
            if candidate.skipped:
                record["status"] = "skipped"
                results.append(record)
                continue
            if candidate.directory is None:
                description = eager_description(task, copy.deepcopy(model), runtime=candidate.runtime)
            else:
                description = load_backend(candidate.directory, runtime=candidate.runtime, allow_unvalidated=True)
            with description.open() as backend:
                if candidate.measured:
                    log.info("validating %s: its stages were measured as its graphs were made", candidate.label)
                record["stages"] = candidate.measured or stage_records(model, manifest, backend, candidate.label)
                log.info("validating %s: restoring the clip", candidate.label)
                with torch.no_grad():
                    restored = restore_tiled(backend.restore, lq, model.config, tiling)[0].numpy()
            precision = candidate.runtime.precision
            record["end_to_end"] = frame_metrics(reference, restored, precision)
            record["images"] = pictures(lq[0].numpy(), reference, restored, scale, candidate.label, staging)
            passed = record["end_to_end"]["passed"] and all(s["passed"] for s in record["stages"].values())
            record["status"] = "pass" if passed else "fail"
            results.append(record)
        ran = [r for r in results if r["status"] != "skipped"]
        report = {
            "model_dir": str(model_dir.resolve()), "task": task.id, "task_short": task.short,
            "tile": manifest["tile"],
            "batch": manifest["batch"],
            "weights": manifest["checkpoint"], "reference": "eager PyTorch float32, same tiling",
            "asked": {"runtimes": list(runtimes), "precisions": list(precisions)},
            "clip": {"frames": frames, "input_size": [width, height], "output_size": [width * scale, height * scale],
                     "content": f"pan over a bundled photograph, degraded for {task.kind}",
                     "tiling": dataclasses.asdict(tiling)},
            "tolerances": {"stage_float32_max_abs": FLOAT32_TOLERANCE,
                           "stage_float16_max_abs_relative_to_peak": FLOAT16_RELATIVE_TOLERANCE,
                           "end_to_end_float32_max_abs": END_TO_END_FLOAT32_MAX_ABS,
                           "end_to_end_float16_min_psnr_db": END_TO_END_FLOAT16_MIN_PSNR_DB},
            "candidates": results,
            "summary": {"passed": sum(r["status"] == "pass" for r in results),
                        "failed": sum(r["status"] == "fail" for r in results),
                        "skipped": sum(r["status"] == "skipped" for r in results)},
            "verdict": ("fail" if any(r["status"] == "fail" for r in ran) else "pass" if ran else "nothing ran"),
        }
        write_json(report, staging / "report.json")
        (staging / "report.md").write_text(render_markdown(report))
    return report
