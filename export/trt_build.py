"""``rvrt-export trt``: one TensorRT engine per stage graph, built with Polygraphy's loaders.

No engine is written under its final name before it has been run on random inputs against
its eager stage (the verdict) and against ONNX Runtime on the same graph (recorded): TensorRT
has miscompiled GridSample-based deformable attention before, silently (shared/FACTS.md).

Precision comes from the graphs: TensorRT 11 networks are always strongly typed, so
``fp16=True`` first converts the float32 graphs to mixed precision (:mod:`.fp16`, validated
on ONNX Runtime) and builds those, strongly typed (TensorRT 10.x asked to be).
"""

from __future__ import annotations

import logging
import shutil
from importlib import metadata
from pathlib import Path

from rvrt.model import RVRT

from .accuracy import compare_stage
from .fp16 import PrecisionPolicy, export_fp16, spec_of
from rvrt_engines.manifest import ArtifactError, assembled, read_manifest, require_validated, sha256_of, write_manifest

log = logging.getLogger(__name__)

FP16_GRAPHS_DIR = "onnx-fp16"


def build_config(timing_cache: Path | None, workspace_gb: float | None):
    """Polygraphy builder-config loader: timing cache reused and updated, optional workspace cap."""
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig

    limits = {trt.MemoryPoolType.WORKSPACE: int(workspace_gb * (1 << 30))} if workspace_gb else None
    return CreateConfig(load_timing_cache=str(timing_cache) if timing_cache else None, memory_pool_limits=limits)


def engine_loader(onnx_path: Path, plugin: Path, config, timing_cache: Path | None):
    """Network from ONNX (plugin loaded first, so the parser takes the plugin for the GDA node
    instead of its function body), built into an engine."""
    import tensorrt as trt
    from polygraphy.backend.trt import EngineFromNetwork, LoadPlugins, NetworkFromOnnxPath

    # TensorRT 11 dropped the flag's effect (always strongly typed); 10.x needs it asked for.
    strongly_typed = int(trt.__version__.split(".")[0]) < 11
    network = LoadPlugins([str(plugin)], NetworkFromOnnxPath(str(onnx_path), strongly_typed=strongly_typed))
    return EngineFromNetwork(network, config, save_timing_cache=str(timing_cache) if timing_cache else None)


def validate_engine(model: RVRT, name: str, stage: dict, engine, onnx_path: Path, precision: str) -> dict:
    """The engine against eager (verdict) and against ONNX Runtime on the same graph (recorded)."""
    import numpy as np
    from polygraphy.backend.trt import TrtRunner
    from rvrt_engines.runtimes.onnxruntime import SessionFromPath

    spec = spec_of(name, stage)
    session = SessionFromPath(onnx_path, emulate_float16=precision == "float16")()
    outputs = list(spec.outputs)
    with TrtRunner(engine) as runner:
        seen = {}

        def run(feed):
            seen["engine"] = runner.infer(dict(feed))
            seen["onnxruntime"] = dict(zip(outputs, session.run(outputs, dict(feed))))
            return seen["engine"]

        record = compare_stage(model, spec, run, precision)
    record["vs_onnxruntime_max_abs"] = float(max(np.abs(np.asarray(seen["engine"][o], np.float32) -
                                                        seen["onnxruntime"][o]).max() for o in outputs))
    return record


def build_engines(model: RVRT, onnx_dir: str | Path, out_dir: str | Path, *, fp16: bool = False,
                  plugin: str | Path | None = None, timing_cache: str | Path | None = None,
                  workspace_gb: float | None = None, policy: PrecisionPolicy = PrecisionPolicy()) -> dict:
    """Build, validate and save one engine per stage of a validated ONNX export; returns the
    manifest. model: the eager float32 network the export was made from (the reference).

    Raises TensorRTUnavailable (with what to install) where TensorRT or a GPU is missing, and
    ArtifactError naming the stage whose engine is over tolerance.
    """
    from rvrt_engines.runtimes.tensorrt import gpu_description, require_tensorrt

    require_tensorrt()
    import tensorrt as trt
    from polygraphy.backend.trt import SaveEngine
    from rvrt_plugins.build import plugin_library

    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    source = read_manifest(onnx_dir)
    require_validated(source, onnx_dir)
    if "engine" in source:
        raise ArtifactError(f"{onnx_dir} already holds engines; pass the ONNX export they were built from")
    plugin = Path(plugin) if plugin else plugin_library(autoregister=True)
    timing_cache = Path(timing_cache) if timing_cache else None
    with assembled(out_dir) as staging:
        graphs_dir, graphs = onnx_dir, source
        if fp16 and source["dtype"] == "float32":
            graphs_dir = staging / FP16_GRAPHS_DIR
            graphs = export_fp16(model, onnx_dir, graphs_dir, policy)
        precision = graphs["dtype"]
        shutil.copy2(plugin, staging / plugin.name)
        config = build_config(timing_cache, workspace_gb)
        stages, validation = {}, {}
        for index, (name, stage) in enumerate(graphs["stages"].items(), 1):
            log.info("stage %s (%d/%d): building the TensorRT engine and validating it", name, index,
                     len(graphs["stages"]))
            onnx_path = graphs_dir / stage["file"]
            plan = staging / f"{name}.plan"
            engine = SaveEngine(engine_loader(onnx_path, plugin, config, timing_cache), str(plan))()
            record = validate_engine(model, name, stage, engine, onnx_path, precision)
            validation[name] = record
            stages[name] = {**stage, "plan": plan.name, "plan_bytes": plan.stat().st_size,
                            "plan_sha256": sha256_of(plan)}
            log.info("stage %s: engine %.1f MB, max abs error %.2e vs eager, %.2e vs ONNX Runtime", name,
                     plan.stat().st_size / 1e6, record["max_abs"], record["vs_onnxruntime_max_abs"])
            if not record["passed"]:
                raise ArtifactError(f"stage {name!r}: the TensorRT engine differs from eager PyTorch by "
                                    f"{record['max_abs']:.3g} (tolerance {record['tolerance']:.3g}; ONNX Runtime on "
                                    f"the same graph: {record['vs_onnxruntime_max_abs']:.3g} from the engine); "
                                    f"this engine computes something else and is not saved")
        manifest = {**graphs, "stages": stages,
                    "onnx_dir": FP16_GRAPHS_DIR if graphs_dir != onnx_dir else str(onnx_dir.resolve()),
                    # rvrt-run loads the plugin into its process: it checks this sha256 first.
                    "engine": {**gpu_description(), "precision": precision, "plugin": plugin.name,
                               "plugin_sha256": sha256_of(staging / plugin.name),
                               "builder": f"polygraphy {metadata.version('polygraphy')}, tensorrt {trt.__version__}",
                               "strongly_typed": True},
                    "validation": {"backend": "tensorrt", "reference": "eager PyTorch float32", "passed": True,
                                   "stages": validation}}
        write_manifest(staging, manifest)
    return manifest
