"""Mixed-precision stage graphs: float16 tensors with measured float32 islands.

TensorRT 11 builds every network strongly typed: precision comes from the ONNX graph, not
from a builder flag (shared/FACTS.md). ``export_fp16`` turns a validated float32 export into
such graphs with onnxruntime's float16 converter, keeping float32 where measured error says
it is needed (:class:`PrecisionPolicy`), and validates each graph against the eager float32
stage in ONNX Runtime before anything is written under the final name.

What the CPU check measures (:func:`rvrt_engines.runtimes.float16_emulation.float16_emulation`): every float16 tensor and weight
rounded to float16, every op computed in float32. Float16 accumulation inside a kernel
(some of TensorRT's fp16 tactics) is not covered, which is why engines are validated again
after they are built.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir
from onnx import TensorProto
from onnx_ir.passes.common import TopologicalSortPass
from onnxruntime.transformers import float16

from rvrt.model import RVRT

from rvrt_engines.manifest import (ArtifactError, assembled, graph_record, read_manifest, require_validated, sha256_of,
                       write_manifest)
from rvrt_engines.precision import PrecisionPolicy

from .onnx_export import validate_stage
from .stages import StageSpec

log = logging.getLogger(__name__)


def _drop_float16_round_trips(graph: onnx.GraphProto) -> int:
    """Let float32 islands talk to each other in float32.

    The converter casts every float32 node's output to float16 and back to float32 for the
    next float32 node (and every graph input likewise), which rounds the island's values to
    float16 anyway. Feeding each such float32 cast from the round trip's source keeps them
    float32; casts left without consumers are removed. Returns the number of round trips.
    """
    producers = {output: node for node in graph.node for output in node.output}

    def target(node: onnx.NodeProto) -> int:
        return next(attr.i for attr in node.attribute if attr.name == "to")

    dropped = 0
    for node in graph.node:
        if node.op_type != "Cast" or target(node) != TensorProto.FLOAT:
            continue
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "Cast" and target(source) == TensorProto.FLOAT16:
            node.input[0] = source.input[0]
            dropped += 1
    consumed = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    kept = [node for node in graph.node if node.op_type != "Cast" or any(out in consumed for out in node.output)]
    del graph.node[:]
    graph.node.extend(kept)
    return dropped


def to_mixed_precision(model: onnx.ModelProto, stage: str, policy: PrecisionPolicy) -> onnx.ModelProto:
    """The float16 version of one stage graph; inputs and outputs stay float32, so the runner
    feeds every precision alike. ``model`` is converted in place."""
    if stage in policy.fp32_stages:
        return model
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *policy.fp32_ops],
        node_block_list=policy.fp32_nodes(model.graph))
    _drop_float16_round_trips(converted.graph)
    # The converter appends its casts after their consumers; TensorRT's parser and the ONNX
    # checker want nodes in topological order.
    # Its value_info keeps types from before its own renaming; shapes and types re-infer.
    ordered = onnx_ir.from_proto(converted)
    TopologicalSortPass()(ordered)
    proto = onnx_ir.to_proto(ordered)
    del proto.graph.value_info[:]
    return proto


def spec_of(name: str, stage: dict) -> StageSpec:
    return StageSpec(name, tuple((i["name"], tuple(i["shape"])) for i in stage["inputs"]), tuple(stage["outputs"]))


def export_fp16(model: RVRT, source_dir: str | Path, out_dir: str | Path,
                policy: PrecisionPolicy = PrecisionPolicy(), strict: bool = True) -> dict:
    """Convert a validated float32 export to mixed-precision graphs in ``out_dir`` (assembled
    under a temporary name, renamed when complete); returns the manifest.

    model: the eager float32 network the export was made from (the reference).
    strict: a stage over tolerance raises, naming it; with False the directory is written with
    a failing validation record (which the runners refuse), for a report to show.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    source = read_manifest(source_dir)
    require_validated(source, source_dir)
    if source["dtype"] != "float32":
        raise ArtifactError(f"{source_dir} holds {source['dtype']} graphs; convert a float32 export")
    with assembled(out_dir) as staging:
        stages, validation = {}, {}
        for index, (name, stage) in enumerate(source["stages"].items(), 1):
            log.info("stage %s (%d/%d): converting to float16 and validating against eager PyTorch", name, index,
                     len(source["stages"]))
            path = staging / stage["file"]
            graph = onnx.load(str(source_dir / stage["file"]))
            # Saved whole (onnx.load reads external weights into the proto), so the stage entry below is
            # made afresh: it names no data file of the float32 graph.
            onnx.save(to_mixed_precision(graph, name, policy), str(path))
            record = validate_stage(model, spec_of(name, stage), path, precision="float16")
            validation[name] = record
            stages[name] = {"file": stage["file"], "inputs": stage["inputs"], "outputs": stage["outputs"],
                            **graph_record(path)}
            log.info("stage %s: %.1f MB, max abs error %.2e (peak %.2g)", name, path.stat().st_size / 1e6,
                     record["max_abs"], record["reference_peak"])
            if strict and not record["passed"]:
                raise ArtifactError(f"stage {name!r}: the float16 graph differs from eager PyTorch by "
                                    f"{record['max_abs']:.3g} (tolerance {record['tolerance']:.3g}); keep more of "
                                    f"it float32 (PrecisionPolicy)")
        manifest = {**source, "dtype": "float16", "io_dtype": "float32", "stages": stages,
                    "precision_policy": dataclasses.asdict(policy),
                    "source": {"dir": str(source_dir.resolve()),
                               "manifest_sha256": sha256_of(source_dir / "manifest.json")},
                    "validation": {"backend": "onnxruntime-cpu, float16 emulation",
                                   "reference": "eager PyTorch float32", "passed": all(r["passed"] for r in validation.values()),
                                   "stages": validation}}
        write_manifest(staging, manifest)
    return manifest
