"""OpenVINO: the exported stage graphs compiled by OpenVINO's CPU plugin, bfloat16 where the CPU has it.

On the CPU the float32 path runs at the machine's float32 matrix-product rate; OpenVINO runs bfloat16 products
(AVX512_BF16, AMX) at twice that or more, which ONNX Runtime's CPU provider cannot on x86 (no bfloat16 kernels).
It serves the same ``rvrt-export onnx`` directories as ONNX Runtime, without PyTorch: on first use an export is
made into an OpenVINO entry of the artefact cache (:mod:`.openvino_build`: graphs with float32 islands, cut
around GDA, compiled once and validated against ONNX Runtime float32). The entry keeps each graph compiled (as
OpenVINO exports a compiled model) with its input and output names, and a run imports those: it reads no graph
and compiles nothing. The entry's key holds the OpenVINO version and the CPU's instruction-set flags, since both
decide the kernels and so the validated result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import ClassVar, NamedTuple

from ..cache import ArtefactCache, CacheKey, check_tile_and_batch
from ..manifest import (MANIFEST, ArtifactError, config_from_manifest, holds, read_manifest, require_validated,
                        sha256_of, tile_of)
from ..memory_budget import MemoryModel, network_kind
from .base import Runtime, RuntimeUnavailable, cpu_flags, cpu_identity

log = logging.getLogger(__name__)

NO_BF16_ENV = "RVRT_OPENVINO_NO_BF16"
"""Set to 1 to have this process take the CPU for one without bfloat16 (tests of the fallback)."""
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
ISA_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
                       "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"})
"""The flags by which oneDNN and OpenVINO's CPU plugin choose kernels."""
ENTRY_LAYOUT = 2
"""What an entry holds, in its key and manifest: 2, compiled graphs and their names (1: IR and OpenVINO's
compiled-model cache, which every run read, hashed and looked up)."""
HINTS = {"bfloat16": "bf16", "float32": "f32"}


def bf16_capable() -> bool:
    """Whether this CPU runs bfloat16 products (AVX512_BF16 or AMX), unless :data:`NO_BF16_ENV` says no."""
    if os.environ.get(NO_BF16_ENV, "") not in ("", "0"):
        return False
    return bool(cpu_flags() & BF16_FLAGS)


@functools.cache
def _say_no_bf16() -> None:
    log.warning("this CPU has neither AVX512_BF16 nor AMX: OpenVINO runs float32 instead of bfloat16")


def openvino_version() -> str:
    """The installed OpenVINO's version, read without importing it (a second of start-up)."""
    return metadata.version("openvino")


@functools.cache
def core():
    import openvino as ov

    return ov.Core()


class Arg(NamedTuple):
    name: str


class StagePhases:
    """Keeps only the running stage's models compiled: a stage's models are imported when the driver starts it and
    freed when it starts another.

    OpenVINO's CPU plugin gives every compiled model its own buffers for the tensors inside its graph, allocated
    when it is compiled and never shared with another model (``release_memory()`` gave back a third of them),
    where ONNX Runtime allocates as it runs. The 15 models of full-size SR at tile 64 held 0.87 GB compiled and
    1.94 GB once each had run, against 0.96 GB for all of ONNX Runtime. The recurrent driver runs each stage in
    one phase (every flow, every extraction, each branch over all its clips, every reconstruction), so a stage's
    models are idle until the next window or tile: importing them again then costs about 0.1 s a model and window,
    and freeing them 0.03 s (full-size SR, float32, 2 cores)."""

    def __init__(self):
        self.sessions: dict[str, list[OpenVinoSession]] = {}
        self.current: str | None = None

    def add(self, session: OpenVinoSession) -> None:
        self.sessions.setdefault(session.stage, []).append(session)

    def enter(self, stage: str) -> None:
        if stage != self.current:
            for session in self.sessions.get(self.current, ()):
                session.free()
            self.current = stage


class OpenVinoSession:
    """One compiled graph of an entry behind the interface of an ``onnxruntime.InferenceSession`` (``get_inputs``,
    ``get_outputs``, ``run``), so that the runner and the GDA split's glue
    (:class:`.onnxruntime_gda_split.SplitGdaSession`) serve it unchanged; imported when its stage starts
    (``phases``). record: the graph's record in the entry's manifest (its file and names). Inputs are read in
    place; outputs are copies, since the driver keeps a step's outputs while the same stage runs again."""

    def __init__(self, entry: Path, record: dict, stage: str, phases: StagePhases, **options):
        self.path = entry / record["file"]
        self._inputs = [Arg(name) for name in record["inputs"]]
        self._outputs = [Arg(name) for name in record["outputs"]]
        self.stage, self.phases, self.options = stage, phases, options
        self.compiled = self.request = self._blob = None
        phases.add(self)

    def compiled_model(self):
        """The compiled model, imported now unless its stage is running."""
        if self.compiled is None:
            self._blob, self.compiled = import_compiled(self.path, **self.options)
            self.request = self.compiled.create_infer_request()
            self._index = {name: index for index, value in enumerate(self.compiled.outputs)
                           for name in value.get_names()}
        return self.compiled

    def free(self) -> None:
        self.compiled = self.request = self._blob = None

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, output_names, feed: dict, run_options=None):
        self.phases.enter(self.stage)
        self.compiled_model()
        results = self.request.infer({arg.name: feed[arg.name] for arg in self._inputs}, share_inputs=True)
        return [results[self._index[name]] for name in (output_names or [arg.name for arg in self._outputs])]


def cpu_config(*, precision: str, threads: int | None) -> dict:
    """OpenVINO CPU plugin properties of a graph, the same when it is compiled and when it is imported (the plugin
    applies them to the imported graph: its precision, its threads).

    Threads are not pinned to cores: every process pins from the same first cores, so two on one machine (Ray
    workers, a batch) shared one core and took twice as long (25 s against 14 s, 2 processes of 1 thread on 2
    cores, tiny SR; one process alone: 11-12 s pinned, 12-13 s not)."""
    config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
              "ENABLE_CPU_PINNING": False}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def import_compiled(path: Path, *, precision: str, threads: int | None):
    """(mapping, compiled model): the compiled graph exported at ``path``, imported from its file mapped in memory.

    Mapped rather than read: the 15 graphs of full-size SR (float32, 124 MB, 2 cores) took 1.8 s imported from
    bytes, as long as reading and compiling them through OpenVINO's compiled-model cache, and 1.6 s mapped. The
    plugin keeps pointing into the mapping without holding it (a process crashed once it was unmapped), so the
    caller keeps the mapping as long as the compiled model."""
    import numpy as np
    import openvino as ov

    # Copy on write: the plugin asks for a writable array, and writes nothing, so the pages stay the file's.
    blob = np.memmap(path, dtype=np.uint8, mode="c")
    return blob, core().import_model(ov.Tensor(blob, shared_memory=True), "CPU",
                                     cpu_config(precision=precision, threads=threads))


def stage_session(entry: Path, name: str, stage: dict, phases: StagePhases, *, precision: str, threads: int | None,
                  fp32_stages=("flow",)):
    """A session of one stage of an entry: its compiled graph, or its two parts with the fused GDA kernel
    between them. Stages that the precision policy keeps float32 were compiled, and are imported, as float32."""
    from .onnxruntime_gda_split import GdaKernelUnavailable, GdaSplit, SplitGdaSession, load_gda_kernel

    options = dict(precision=stage_precision(name, precision, fp32_stages), threads=threads)
    if "graph" in stage:
        return OpenVinoSession(entry, stage["graph"], name, phases, **options)
    gda = stage["gda"]
    try:
        kernel = load_gda_kernel(threads)
    except GdaKernelUnavailable as error:
        raise RuntimeUnavailable(f"--runtime openvino runs GDA in the fused CPU kernel, which is unavailable "
                                 f"({error}); OpenVINO has no other way to run it: use --runtime onnxruntime") from None
    # The parts were cut when the entry was made: the split's record is all the glue needs.
    split = GdaSplit(before=None, after=None, gda_inputs=tuple(gda["inputs"]), gda_output=gda["output"],
                     attributes=gda["attributes"], inputs=gda["graph_inputs"], outputs=gda["graph_outputs"],
                     channels_last=gda["channels_last"])
    return SplitGdaSession(split, OpenVinoSession(entry, stage["before"], name, phases, **options),
                           OpenVinoSession(entry, stage["after"], name, phases, **options), kernel)


def stage_precision(name: str, precision: str, fp32_stages) -> str:
    """The precision a stage's graphs run in: float32 for the stages the precision policy keeps float32."""
    return "float32" if name in fp32_stages else precision


def openvino_stages(entry: Path, manifest: dict, *, precision: str, threads: int | None):
    """The driver's stages on an entry (a context manager: each graph is imported when its stage runs)."""
    from .runner_stages import RunnerStages, SessionRunner, stage_io

    fp32_stages = tuple(manifest["openvino"]["precision_policy"]["fp32_stages"])
    phases = StagePhases()
    runners = {name: SessionRunner(functools.partial(stage_session, entry, name, stage, phases, precision=precision,
                                                     threads=threads, fp32_stages=fp32_stages), name=name)
               for name, stage in manifest["stages"].items()}
    return RunnerStages(runners, stage_io(manifest), manifest["clip_size"])


@dataclass(frozen=True)
class EntryKey(CacheKey):
    """An entry's key: the export's fields, the sha256 of the export's manifest (its graphs' digests), and what
    the entry holds (:data:`ENTRY_LAYOUT`: an entry of another layout is made anew, not misread)."""

    graphs: str = ""
    layout: int = ENTRY_LAYOUT


def refuse_unvalidated(manifest: dict, entry: Path, allow_unvalidated: bool) -> None:
    """Refuse an entry whose validation failed, naming the stages over tolerance, unless allowed."""
    validation = manifest.get("validation") or {}
    if validation.get("passed") is True or allow_unvalidated:
        return
    failed = [f"stage {name!r} (max error {record['max_abs']:.3g}, tolerance {record['tolerance']:.3g})"
              for name, record in (validation.get("stages") or {}).items() if not record["passed"]]
    clip = validation.get("end_to_end") or {}
    if clip and not clip.get("passed"):
        failed.append(f"the validation clip ({clip['min_psnr_db']:.1f} dB, under {clip['min_db']:.0f} dB)")
    precision = manifest["openvino"]["precision"]
    raise ArtifactError(f"refusing OpenVINO {precision} on this CPU ({entry}): "
                        f"{', '.join(failed) or 'no validation record'} against ONNX Runtime float32; run "
                        f"--precision f32 or --runtime onnxruntime, or pass --allow-unvalidated to run it anyway")


@dataclass(frozen=True, kw_only=True)
class OpenVino(Runtime):
    """OpenVINO's CPU plugin on ``rvrt-export onnx`` float32 directories. precision: bfloat16 or float32 [None:
    bfloat16 where the CPU has AVX512_BF16 or AMX, float32 elsewhere; bfloat16 asked for on a CPU without it
    runs float32, saying so once]. threads: threads of OpenVINO and the GDA kernel [all cores]."""

    name: ClassVar[str] = "openvino"
    label: ClassVar[str] = "OpenVINO"
    precisions: ClassVar[tuple[str, ...]] = ("bfloat16", "float32")

    threads: int | None = None

    def resolved(self) -> OpenVino:
        capable = bf16_capable()
        if self.precision == "bfloat16" and not capable:
            _say_no_bf16()
        precision = "bfloat16" if capable and self.precision in (None, "bfloat16") else "float32"
        return dataclasses.replace(self, precision=precision)

    def directory_precision(self, manifest: dict) -> str:
        """An entry's own precision; for a float32 export, this machine's default (bfloat16 where the CPU has it):
        its float32 graphs are what OpenVINO converts from, not what it must run."""
        if "openvino" in manifest:
            return manifest["openvino"]["precision"]
        return self.resolved().precision

    def unavailable(self) -> str | None:
        if find_spec("openvino") is None:
            from ..extras import install_command

            return f"--runtime openvino needs OpenVINO, which is not installed: {install_command('openvino')}"
        return None

    def key_fields(self) -> tuple[str, str]:
        flags = " ".join(sorted(cpu_flags() & ISA_FLAGS)) or "no vector extensions"
        return openvino_version(), f"{cpu_identity()} [{flags}]"

    def serves(self, manifest: dict) -> bool:
        return "engine" not in manifest and manifest.get("dtype") == "float32"

    def artefacts(self, source, *, tile, batch: int, cache: ArtefactCache) -> Path:
        from .onnxruntime import exported_graphs

        self.require()
        check_tile_and_batch(source, tile, batch)
        return self.entry(exported_graphs(source, tile=tile, batch=batch, cache=cache), cache)

    def entry_key(self, export_dir: Path, manifest: dict) -> EntryKey:
        record = self.resolved()
        config = json.dumps(dataclasses.asdict(config_from_manifest(manifest)), sort_keys=True)
        checkpoint = manifest["checkpoint"]
        weights = (f"sha256:{checkpoint['sha256']}" if "sha256" in checkpoint
                   else f"random-seed-{checkpoint.get('seed')}")
        height, width = tile_of(manifest)
        version, device = record.key_fields()
        return EntryKey(manifest["task"], manifest["task_short"], hashlib.sha256(config.encode()).hexdigest(),
                        weights, height if height == width else (height, width), manifest["batch"],
                        record.precision, record.name, version, device, graphs=sha256_of(export_dir / MANIFEST))

    def entry(self, export_dir, cache: ArtefactCache | None = None, allow_unvalidated: bool = False) -> Path:
        """The validated OpenVINO entry of a float32 export directory, from ``cache`` [the user's] or made now
        (IR conversion and validation: seconds to a few minutes, once per export, precision, OpenVINO version
        and CPU). Needs no PyTorch: validation runs against ONNX Runtime float32."""
        export_dir = Path(export_dir)
        manifest = read_manifest(export_dir)
        if not self.serves(manifest):
            raise ArtifactError(f"{export_dir} holds {holds(manifest)}: --runtime openvino serves float32 exports ('rvrt-export "
                                f"onnx')")
        require_validated(manifest, export_dir, allow_unvalidated)
        record = self.resolved()
        key = record.entry_key(export_dir, manifest)
        describe = {"version": key.runtime_version, "cpu": key.device, "threads": record.threads}

        def build(out: Path) -> None:
            # Only a build needs it: it imports onnx, whose ml_dtypes alone took 0.85 s of a cached run's start-up.
            from .openvino_build import build_entry

            build_entry(export_dir, out, precision=record.precision, threads=record.threads, describe=describe)

        return (cache or ArtefactCache()).fetch(key, build)

    def memory_model(self, config) -> MemoryModel:
        from .onnxruntime import MEMORY_MODELS as ONNXRUNTIME

        model = MEMORY_MODELS.get(network_kind(config))
        if model is None:
            return dataclasses.replace(ONNXRUNTIME[network_kind(config)], calibrated=False)
        return model

    @contextlib.contextmanager
    def stages(self, target, *, task, config, allow_unvalidated: bool = False) -> Iterator:
        """Stages of an OpenVINO entry, or of a float32 export (its entry found in, or made into, the user's
        cache)."""
        self.require()
        record = self.resolved()
        target = Path(target)
        manifest = read_manifest(target)
        if "openvino" not in manifest:
            target = record.entry(target, allow_unvalidated=allow_unvalidated)
            manifest = read_manifest(target)
        if manifest["openvino"].get("layout") != ENTRY_LAYOUT:
            raise ArtifactError(f"{target} is an OpenVINO entry of an earlier rvrt-deploy, which this one cannot "
                                f"read: serve the export it was made from ({manifest['source']['dir']}), which makes "
                                f"a new entry")
        built = manifest["openvino"]["precision"]
        if built != record.precision:
            raise ArtifactError(f"{target} holds OpenVINO {built} graphs, not {record.precision}: pass --precision "
                                f"{HINTS[built]}, or serve the export they were made from")
        refuse_unvalidated(manifest, target, allow_unvalidated)
        with openvino_stages(target, manifest, precision=record.precision, threads=record.threads) as stages:
            yield stages

    def run(self, stages, lq):
        from .runner_stages import run_on_numpy

        return run_on_numpy(stages, lq)


MEMORY_MODELS: dict[str, MemoryModel] = {}
"""Measured per kind (benchmarks/memory_model.py); a kind not measured yet borrows ONNX Runtime's, marked so."""
