"""ONNX Runtime: the exported stage graphs as sessions, served on numpy arrays without PyTorch.

Polygraphy's shape, this project's code: :class:`SessionFromPath` is a lazy loader (it builds
a session when called), :class:`SessionRunner` runs one (activate / infer / deactivate),
and :func:`onnxruntime_stages` puts one runner per stage behind the driver's stage interface;
:class:`OnnxRuntime` is the runtime's record in the registry (:mod:`rvrt_engines.runtimes`).
Polygraphy's own ``OnnxrtRunner`` is not used here: it imports torch on every ``infer`` where
torch is installed (``util.array.is_torch``), 1.4 s of start-up for a process that never needs it.
onnxruntime itself is imported where a session is made or the library is asked about, not with this module:
the registry imports this module in every process, OpenVINO's among them, which never runs a session.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rvrt.tiling import tile_name

from ..cache import cached, check_tile_and_batch
from ..manifest import ArtifactError, check_files, read_manifest, require_validated
from ..memory_budget import GIB, MemoryModel, network_kind
from .base import Runtime, cpu_identity, entered
from .runner_stages import RunnerStages, SessionRunner, run_on_numpy, stage_io

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

# Session config entries (onnxruntime_session_options_config_keys.h).
USE_ENV_ALLOCATORS = "session.use_env_allocators"
ALLOW_INTRA_OP_SPINNING = "session.intra_op.allow_spinning"


@functools.cache
def register_shared_cpu_allocator() -> None:
    """Register one CPU arena allocator with ONNX Runtime's environment, once per process.

    Sessions created with ``session.use_env_allocators`` = 1 all allocate from it: the stage
    sessions run one after another, so the memory one releases serves the next, and peak
    memory is that of the largest stage instead of the sum of all (8.9 -> 1.8 GB measured,
    full-size SR, tile 64). Arena chunks grow by what is asked for, not by powers of two.
    """
    import onnxruntime as ort

    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg({"arena_extend_strategy": 1}))


class SessionFromPath:
    """Lazy loader of an ONNX Runtime session with the options this project runs with:
    full graph optimisation, ``threads`` intra-op threads (None: ORT's default, all cores),
    sequential execution (the graphs are chains; parallel execution only adds overhead).

    On the CPU every session allocates from one shared arena
    (:func:`register_shared_cpu_allocator`), without per-session memory patterns (a pattern
    reserves a session's whole plan for it alone).

    emulate_float16: run a mixed-precision graph as :func:`rvrt_engines.runtimes.float16_emulation.float16_emulation`
    (float16 storage, float32 arithmetic), which is what a CPU can tell of float16 accuracy.
    fused_gda: on the CPU, run a graph holding a GDA node as ONNX Runtime / fused GDA kernel /
    ONNX Runtime (:mod:`.onnxruntime_gda_split`); where the kernel cannot be built, warn
    and run the whole graph.
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None,
                 emulate_float16: bool = False, fused_gda: bool = True):
        self.path = str(path)
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self.emulate_float16 = emulate_float16
        self.fused_gda = fused_gda

    @property
    def cpu_only(self) -> bool:
        return self.providers == ["CPUExecutionProvider"]

    def options(self) -> ort.SessionOptions:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Warnings only: float16 graphs make the CPU provider report every node it cannot
        # constant-fold in float16, dozens of lines that say nothing about the result.
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        # Idle pool threads that spin wait for work take a core from the session, or the GDA
        # kernel, running next: 8 frames of full-size SR took 23 s with spinning, 7 s without
        # (2 cores shared with other jobs, one run each).
        options.add_session_config_entry(ALLOW_INTRA_OP_SPINNING, "0")
        if self.cpu_only:
            register_shared_cpu_allocator()
            options.add_session_config_entry(USE_ENV_ALLOCATORS, "1")
            options.enable_mem_pattern = False
        return options

    def __call__(self):
        """An ``onnxruntime.InferenceSession``, or a :class:`~.onnxruntime_gda_split.SplitGdaSession`
        that behaves as one. A file that is no ONNX graph (damaged, of the size its manifest
        records) raises ArtifactError naming it, not a parser's traceback."""
        from google.protobuf.message import DecodeError
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidProtobuf

        try:
            return self._session()
        except (DecodeError, InvalidProtobuf) as error:
            raise ArtifactError(f"{self.path} is not a readable ONNX graph ({str(error).strip()}): the file is "
                                f"damaged; export it again") from None

    def _session(self):
        import onnxruntime as ort

        options = self.options()
        if self.emulate_float16:
            import onnx

            from .float16_emulation import float16_emulation

            model = float16_emulation(onnx.load(self.path)).SerializeToString()
            return ort.InferenceSession(model, sess_options=options, providers=self.providers)
        if self.fused_gda and self.cpu_only:
            # Imported here: onnx, which the cut needs, is a second of start-up.
            from .onnxruntime_gda_split import gda_split_session

            split = gda_split_session(self.path, lambda model: ort.InferenceSession(
                model, sess_options=options, providers=self.providers), self.threads)
            if split is not None:
                return split
        return ort.InferenceSession(self.path, sess_options=options, providers=self.providers)


def default_providers(device: str = "cpu") -> list[str]:
    """The execution providers of ``device`` (whether this onnxruntime has them: :meth:`OnnxRuntime.unavailable`)."""
    return ["CPUExecutionProvider"] if device == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]


def onnxruntime_stages(export_dir: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                       allow_unvalidated: bool = False, fused_gda: bool = True) -> RunnerStages:
    """Stages of an ``rvrt-export onnx`` directory on ONNX Runtime (refuses unvalidated exports,
    and graphs whose size differs from the manifest's record, before any session is made).

    fused_gda: see :class:`SessionFromPath`; False runs GDA through the graphs' function body."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    require_validated(manifest, export_dir, allow_unvalidated)
    check_files(manifest, export_dir)
    providers = default_providers(device)
    emulate = manifest["dtype"] == "float16" and device == "cpu"
    runners = {name: SessionRunner(SessionFromPath(export_dir / stage["file"], providers, threads, emulate,
                                                   fused_gda), name=name)
               for name, stage in manifest["stages"].items()}
    return RunnerStages(runners, stage_io(manifest), manifest["clip_size"])


# Fitted by benchmarks/memory_model.py on 2026-12-01 (see rvrt_engines.memory_budget): peak RSS of rvrt-run,
# full-size networks with random weights, 2 threads, one window of one tile per point. Measured (tile, frames: GiB):
#   SR       64x64 2: 0.70, 64x64 8: 0.92, 128x128 2: 2.04, 128x128 8: 2.62, 144x176 2: 2.93, 144x176 8: 3.97,
#            184x320 4: 7.67
#   denoise  136x136 2: 0.46, 256x256 2: 0.84, 256x256 6: 1.05, 272x480 4: 1.73
# Its SR peak per tile pixel is about three times eager PyTorch's (measured; the cause not yet profiled).
MEMORY_MODELS = {
    "sr": MemoryModel(0.299 * GIB, 6228.0, 107445.0, "ONNX Runtime SR, 7 points, 2026-12-01"),
    "quarter": MemoryModel(0.278 * GIB, 716.0, 8917.0, "ONNX Runtime denoise, 4 points, 2026-12-01"),
}


@dataclass(frozen=True, kw_only=True)
class OnnxRuntime(Runtime):
    """ONNX Runtime on ``rvrt-export onnx`` directories. threads: intra-op threads [all cores]. device: "cpu",
    or "cuda" with onnxruntime-gpu. precision: float32, or float16 graphs (on a CPU, their float16 rounding
    emulated in float32: what a CPU can tell of float16 accuracy)."""

    name: ClassVar[str] = "onnxruntime"
    label: ClassVar[str] = "ONNX Runtime"
    precisions: ClassVar[tuple[str, ...]] = ("float32", "float16")

    threads: int | None = None
    device: str = "cpu"

    @property
    def needs_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def unavailable(self) -> str | None:
        if not self.needs_gpu:
            return None
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return (f"--device {self.device} asked for, but this onnxruntime has no CUDA execution provider "
                    f"(install onnxruntime-gpu)")
        return None

    def key_fields(self) -> tuple[str, str]:
        import onnxruntime as ort

        return ort.__version__, cpu_identity()

    def serves(self, manifest: dict) -> bool:
        # An OpenVINO entry holds IR made from ONNX graphs, not the graphs: not ONNX Runtime's.
        return "engine" not in manifest and "openvino" not in manifest and self.precision in (None, manifest["dtype"])

    def making_hint(self, directory) -> str:
        if self.precision == "float16":
            return f"make float16 graphs with 'rvrt-export fp16 {directory}'"
        return "export float32 graphs with 'rvrt-export onnx'"

    def derived(self, model, export_dir: Path, out: Path) -> dict | None:
        if self.precision != "float16" or read_manifest(export_dir)["dtype"] != "float32":
            return None
        from rvrt_export.fp16 import export_fp16

        return export_fp16(model, export_dir, out, strict=False)

    def artefacts(self, source, *, tile, batch: int, cache) -> Path:
        check_tile_and_batch(source, tile, batch)
        graphs = exported_graphs(source, tile=tile, batch=batch, cache=cache)
        if self.resolved().precision == "float32":
            return graphs
        key = source.key(self, tile=tile, batch=batch, precision="float16")

        def convert(out: Path) -> None:
            from rvrt_export.fp16 import export_fp16

            export_fp16(source.model, graphs, out)

        return cached(cache, key, convert, f"float16 graphs of {source.task.short} for --runtime {self.name}")

    def memory_model(self, config) -> MemoryModel:
        return MEMORY_MODELS[network_kind(config)]

    def stages(self, target, *, task, config, allow_unvalidated: bool = False):
        self.require()
        manifest = read_manifest(target)
        if self.precision is not None and manifest["dtype"] != self.precision:
            raise ArtifactError(f"{target} holds {manifest['dtype']} ONNX graphs, not {self.precision}: pass "
                                f"--precision {'f16' if manifest['dtype'] == 'float16' else 'f32'}, or make "
                                f"float16 ones ('rvrt-export fp16 {target}')")
        return entered(onnxruntime_stages(target, device=self.device, threads=self.threads,
                                          allow_unvalidated=allow_unvalidated))

    def run(self, stages, lq):
        return run_on_numpy(stages, lq)


def exported_graphs(source, *, tile, batch: int, cache) -> Path:
    """The validated float32 export of ``source`` (``rvrt-export onnx``), from the cache or made now: what
    every runtime that serves ONNX graphs, or builds from them, starts from."""
    key = source.key(OnnxRuntime(), tile=tile, batch=batch, precision="float32")

    def export(out: Path) -> None:
        from rvrt_export.onnx_export import export_onnx

        log.info("exporting %s (tile %s, batch %d) to ONNX and validating every stage: this takes minutes, once",
                 source.task.short, tile_name(tile), batch)
        export_onnx(source.model, source.task, tile, out, batch=batch, checkpoint=source.checkpoint,
                    random_seed=source.seed)

    return cached(cache, key, export, f"exporting {source.task.short} for ONNX graphs")
