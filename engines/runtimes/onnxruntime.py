"""ONNX Runtime: the exported stage graphs as sessions, served on numpy arrays without PyTorch.

Polygraphy's shape, this project's code: :class:`SessionFromPath` is a lazy loader (it builds
a session when called), :class:`OnnxRuntimeRunner` runs one (activate / infer / deactivate),
and :func:`onnxruntime_stages` puts one runner per stage behind the driver's stage interface.
Polygraphy's own ``OnnxrtRunner`` is not used here: it imports torch on every ``infer`` where
torch is installed (``util.array.is_torch``), 1.4 s of start-up for a process that never needs it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidProtobuf

from rvrt import run_recurrent
from rvrt.arrays import to_numpy
from rvrt_engines.manifest import ArtifactError, check_files, read_manifest, require_validated

from .onnxruntime_gda_split import gda_split_session
from .runner_stages import RunnerStages, stage_io

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
        try:
            return self._session()
        except (DecodeError, InvalidProtobuf) as error:
            raise ArtifactError(f"{self.path} is not a readable ONNX graph ({str(error).strip()}): the file is "
                                f"damaged; export it again") from None

    def _session(self):
        options = self.options()
        if self.emulate_float16:
            import onnx

            from rvrt_engines.runtimes.float16_emulation import float16_emulation

            model = float16_emulation(onnx.load(self.path)).SerializeToString()
            return ort.InferenceSession(model, sess_options=options, providers=self.providers)
        if self.fused_gda and self.cpu_only:
            split = gda_split_session(self.path, lambda model: ort.InferenceSession(
                model, sess_options=options, providers=self.providers), self.threads)
            if split is not None:
                return split
        return ort.InferenceSession(self.path, sess_options=options, providers=self.providers)


class OnnxRuntimeRunner:
    """Runs one session: numpy arrays in, numpy arrays out, with Polygraphy's runner life cycle
    (``activate`` / ``infer`` / ``deactivate``, or ``with runner:``).

    session: an ``onnxruntime.InferenceSession`` (or a session-like object such as a
    :class:`~.onnxruntime_gda_split.SplitGdaSession`), or a loader that returns one (such as
    :class:`SessionFromPath`), called on activation: building a runner costs nothing.
    """

    def __init__(self, session, name: str | None = None):
        self._session = session
        self.name = name
        self.session = None
        self.output_names: list[str] = []

    @property
    def is_active(self) -> bool:
        return self.session is not None

    def activate(self) -> None:
        if self.is_active:
            raise RuntimeError(f"runner {self.name} is active already")
        self.session = self._session() if callable(self._session) else self._session
        self.output_names = [output.name for output in self.session.get_outputs()]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Input name -> array (float32, C-contiguous) to output name -> array, in graph order."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} is not active: use it inside 'with runner:'")
        return dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))

    def deactivate(self) -> None:
        self.session = None

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()


def run_on_numpy(stages: RunnerStages, lq, device: str = "cpu"):
    """The recurrent driver on ONNX Runtime stages: lq (any array kind) -> restored numpy array."""
    return run_recurrent(stages, to_numpy(lq))


def default_providers(device: str = "cpu") -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(f"device {device!r} asked for, but this onnxruntime has no CUDA execution provider "
                           f"(install onnxruntime-gpu)")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


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
    runners = {name: OnnxRuntimeRunner(SessionFromPath(export_dir / stage["file"], providers, threads, emulate,
                                                       fused_gda), name=name)
               for name, stage in manifest["stages"].items()}
    return RunnerStages(runners, stage_io(manifest), manifest["clip_size"])
