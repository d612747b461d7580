"""Making an OpenVINO entry from a float32 export: compiled graphs with float32 islands, then their validation.

OpenVINO's ONNX frontend has no conversion for ``rvrt::GuidedDeformAttention`` and does not fall back to the
node's function body, so a step holding it is cut around it (:func:`.onnxruntime_gda_split.split_at_gda`, as
ONNX Runtime's split does) and the fused CPU kernel runs between the two parts. Each graph or part goes through
OpenVINO IR, since OpenVINO's Python API has no call that keeps a node out of bfloat16, while its IR reader takes
the ``DisablePrecisionConversion`` attribute (value ``dynamic:f16``) that the CPU plugin honours for bfloat16 as
well as float16 (checked: marked convolutions and eltwise subgraphs then report runtime precision f32). The IR
is compiled once, and the entry keeps the compiled graph as OpenVINO exports it, with its names, instead of the
IR: a run imports it (:func:`.openvino.import_compiled`) where it read and compiled the IR through OpenVINO's
compiled-model cache, whose lookup reads the IR and hashes it (full-size SR in float32, 15 graphs: 1.6 s against
1.9 s), and the files that every run checks against the entry's seal are 124 MB instead of 221 MB (0.13 s of
hashing against 0.25 s).

What stays float32 is :class:`rvrt_engines.precision.PrecisionPolicy`'s: the flow stage whole, and in the
steps everything computed from the flow inputs (flow composition, sampling grids, deformable offsets), and
LayerNormalization (OpenVINO's MVN).

Validation holds each stage, and the whole network on a short clip, against ONNX Runtime float32 running the
same export: that run was itself validated against eager PyTorch float32 when the export was made (1e-3), and
it needs no PyTorch, so that a serving-only install validates OpenVINO on first use, on the CPU that will run
it (bfloat16 is checked by running it, not by emulation).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from ..manifest import FORMAT_VERSION, MANIFEST, config_from_manifest, read_manifest, sha256_of, tile_of, write_manifest
from ..precision import PrecisionPolicy, tolerance_for

log = logging.getLogger(__name__)

KEEP_FLOAT32 = ("DisablePrecisionConversion", "0", "dynamic:f16")
"""The IR rt_info attribute (name, version, value) that keeps a node in float32."""
OPENVINO_OPS = {"LayerNormalization": ("MVN",)}
"""What the ONNX frontend turns an op type of :attr:`PrecisionPolicy.fp32_ops` into."""

# The float16 gate, which bfloat16 is held to: 1 % of a stage's peak magnitude (rvrt_engines.precision), and
# 40 dB per frame end to end.
MIN_PSNR_DB = 40.0
CLIP_FRAMES = 2
"""Clips of the end-to-end check: every stage runs, the steps with GDA among them."""


def float32_ops(model, stage: str, policy: PrecisionPolicy) -> set[str]:
    """Friendly names of the ops of an OpenVINO model that ``policy`` keeps float32 (all, for its stages)."""
    ops = model.get_ordered_ops()
    if stage in policy.fp32_stages:
        return {op.get_friendly_name() for op in ops}
    kept_types = {name for op_type in policy.fp32_ops for name in OPENVINO_OPS.get(op_type, (op_type,))}
    names = {op.get_friendly_name() for op in ops if op.get_type_name() in kept_types}
    if not policy.flow_path:
        return names
    # The policy's walk (PrecisionPolicy.fp32_nodes) on OpenVINO's ops: from the flow inputs on, where a feature
    # map sampled at flow positions is a feature again.
    from_flow: set[int] = set()
    for op in ops:
        kind = op.get_type_name()
        if kind == "Parameter":
            if op.get_friendly_name().startswith("flow"):
                from_flow.add(id(op))
            continue
        sources = [id(value.get_source_output().get_node()) in from_flow for value in op.inputs()]
        if kind == "Result" or not any(sources):
            continue
        names.add(op.get_friendly_name())
        if kind == "GridSample" and not sources[0]:
            continue
        from_flow.add(id(op))
    return names


def save_ir(model, path: Path, keep_float32: set[str]) -> None:
    """Write ``model`` as IR at ``path`` (.xml, weights beside it in .bin), the ops of ``keep_float32`` marked."""
    import openvino as ov

    ov.save_model(model, str(path), compress_to_fp16=False)
    tree = ElementTree.parse(path)
    name, version, value = KEEP_FLOAT32
    for layer in tree.getroot().iter("layer"):
        if layer.get("name") in keep_float32:
            info = layer.find("rt_info")
            if info is None:
                info = ElementTree.SubElement(layer, "rt_info")
            ElementTree.SubElement(info, "attribute", name=name, version=version, value=value)
    tree.write(path)


def compile_graph(onnx_model, stage: str, name: str, out: Path, ir: Path, policy: PrecisionPolicy, *,
                  precision: str, threads: int | None) -> dict:
    """Compile one ONNX graph of ``stage`` through IR in ``ir`` and export it to ``out`` as ``name``.blob; returns
    its record for the entry's manifest."""
    from .openvino import core, cpu_config, stage_precision

    converted = core().read_model(onnx_model.SerializeToString())
    keep = float32_ops(converted, stage, policy)
    save_ir(converted, ir / f"{name}.xml", keep)
    config = cpu_config(precision=stage_precision(stage, precision, policy.fp32_stages), threads=threads)
    compiled = core().compile_model(core().read_model(str(ir / f"{name}.xml")), "CPU", config)
    blob = out / f"{name}.blob"
    blob.write_bytes(compiled.export_model().getvalue())
    return {"file": blob.name, "inputs": [value.get_any_name() for value in converted.inputs],
            "outputs": [value.get_any_name() for value in converted.outputs], "float32_ops": len(keep),
            "ops": len(converted.get_ordered_ops())}


def convert_stage(export_dir: Path, name: str, stage: dict, out: Path, ir: Path, policy: PrecisionPolicy, *,
                  precision: str, threads: int | None) -> dict:
    """The compiled graph of one stage in ``out``: its graph, or its two parts around GDA with what the kernel
    reads and writes; returns the stage's record for the entry's manifest."""
    import onnx

    from .onnxruntime_gda_split import split_at_gda

    options = dict(precision=precision, threads=threads)
    model = onnx.load(os.fspath(export_dir / stage["file"]))
    split = split_at_gda(model)
    record = {"inputs": stage["inputs"], "outputs": stage["outputs"]}
    if split is None:
        record["graph"] = compile_graph(model, name, name, out, ir, policy, **options)
        return record
    del model
    for part in ("before", "after"):
        record[part] = compile_graph(getattr(split, part), name, f"{name}.{part}", out, ir, policy, **options)
    record["gda"] = {"inputs": list(split.gda_inputs), "output": split.gda_output, "attributes": split.attributes,
                     "channels_last": split.channels_last, "graph_inputs": split.inputs,
                     "graph_outputs": split.outputs}
    return record


def stage_inputs(stage: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs of a stage in the ranges the exporter validates with (StageSpec.example_inputs): images
    in [0, 1], flows of a few pixels, features ~ N(0, 1)."""
    feed = {}
    for spec in stage["inputs"]:
        name, shape = spec["name"], tuple(spec["shape"])
        if name in ("lq", "pair"):
            feed[name] = rng.random(shape, dtype=np.float32)
        elif name.startswith("flow"):
            feed[name] = 2.0 * rng.standard_normal(shape, dtype=np.float32)
        else:
            feed[name] = rng.standard_normal(shape, dtype=np.float32)
    return feed


def compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], precision: str) -> dict:
    errors = [np.abs(got[name].astype(np.float32) - value) for name, value in reference.items()]
    peak = float(max(np.abs(value).max() for value in reference.values()))
    max_abs = float(max(error.max() for error in errors))
    limit = tolerance_for(precision, peak)
    return {"max_abs": max_abs, "mean_abs": float(np.mean([error.mean() for error in errors])),
            "reference_peak": peak, "tolerance": limit, "passed": bool(max_abs <= limit)}


def validation_clip(manifest: dict, rng: np.random.Generator) -> np.ndarray:
    """(batch, frames, cin, H, W) in [0, 1]: smooth random images moving by sub-pixel steps, so that flows,
    alignment and GDA see motion (denoise: its sigma plane, 20/255, as the fourth channel)."""
    height, width = tile_of(manifest)
    channels = config_from_manifest(manifest).in_channels
    frames = CLIP_FRAMES * manifest["clip_size"]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    clip = np.empty((manifest["batch"], frames, channels, height, width), np.float32)
    for n in range(manifest["batch"]):
        waves = rng.uniform(0.02, 0.25, (3, 4, 2)), rng.uniform(0, 2 * math.pi, (3, 4))
        for t in range(frames):
            for c in range(3):
                phase = waves[0][c, :, 0, None, None] * (x + 0.7 * t) + waves[0][c, :, 1, None, None] * (y + 0.4 * t)
                clip[n, t, c] = 0.5 + 0.12 * np.sin(phase + waves[1][c, :, None, None]).sum(0)
    if channels == 4:
        clip[:, :, 3] = 20.0 / 255.0
    return np.clip(clip, 0.0, 1.0)


def psnr(reference: np.ndarray, got: np.ndarray) -> float:
    """dB against the larger of 1 (images) and the reference's peak (random weights restore nothing)."""
    peak = max(1.0, float(np.abs(reference).max()))
    mse = float(np.mean((got.astype(np.float64) - reference) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def build_entry(export_dir: Path, out: Path, *, precision: str, threads: int | None, describe: dict,
                policy: PrecisionPolicy = PrecisionPolicy()) -> dict:
    """Fill ``out`` (an empty folder) with the compiled graphs of every stage of ``export_dir`` and
    ``manifest.json``, whose validation record says whether each stage and the clip came within tolerance;
    returns the manifest."""
    from .onnxruntime import onnxruntime_stages
    from .openvino import ENTRY_LAYOUT, openvino_stages
    from .runner_stages import run_on_numpy

    source = read_manifest(export_dir)
    stages = {}
    # The IR is a step on the way to the compiled graphs, gone before the entry is sealed (a killed build's goes
    # with the rest of its folder).
    with tempfile.TemporaryDirectory(prefix="ir-", dir=out) as ir:
        for index, (name, stage) in enumerate(source["stages"].items(), 1):
            log.info("stage %s (%d/%d): compiling with OpenVINO", name, index, len(source["stages"]))
            stages[name] = convert_stage(export_dir, name, stage, out, Path(ir), policy, precision=precision,
                                         threads=threads)
    manifest = {key: source[key] for key in ("format_version", "task", "task_short", "config", "scale", "tile",
                                             "clip_size", "batch", "opset", "checkpoint")}
    manifest.update(format_version=FORMAT_VERSION, dtype="float32", stages=stages,
                    openvino={**describe, "layout": ENTRY_LAYOUT, "precision": precision, "precision_policy": {
                        "fp32_ops": list(policy.fp32_ops), "fp32_stages": list(policy.fp32_stages),
                        "flow_path": policy.flow_path}},
                    source={"dir": str(export_dir.resolve()), "manifest_sha256": sha256_of(export_dir / MANIFEST),
                            "validation": (source.get("validation") or {}).get("passed")})

    # Both runtimes open once for the stages and the clip; OpenVINO's graphs are imported as a run imports them.
    rng = np.random.default_rng(1)
    records = {}
    with onnxruntime_stages(export_dir, threads=threads, allow_unvalidated=True) as expected_stages, \
            openvino_stages(out, manifest, precision=precision, threads=threads) as candidate:
        for name, stage in source["stages"].items():
            feed = stage_inputs(stage, rng)
            records[name] = compare(expected_stages.runners[name].infer(feed), candidate.runners[name].infer(feed),
                                    precision)
            log.info("stage %s: OpenVINO %s differs from ONNX Runtime float32 by %.2e (tolerance %.2e)", name,
                     precision, records[name]["max_abs"], records[name]["tolerance"])
        clip = validation_clip(manifest, rng)
        log.info("end to end: %d frames through ONNX Runtime float32 and OpenVINO %s", clip.shape[1], precision)
        expected = run_on_numpy(expected_stages, clip)
        restored = run_on_numpy(candidate, clip)
    frames = [psnr(expected[:, t], restored[:, t]) for t in range(clip.shape[1])]
    end_to_end = {"frames": clip.shape[1], "min_psnr_db": round(min(frames), 2), "min_db": MIN_PSNR_DB,
                  "max_abs": float(np.abs(restored - expected).max()), "passed": min(frames) >= MIN_PSNR_DB}
    manifest["validation"] = {
        "backend": f"openvino-cpu {precision}",
        "reference": "ONNX Runtime float32 on the same export (itself validated against eager PyTorch float32)",
        "passed": all(r["passed"] for r in records.values()) and end_to_end["passed"],
        "stages": records, "end_to_end": end_to_end}
    write_manifest(out, manifest)
    return manifest
