"""What every runtime is: a plain options record with one surface (vs-mlrt's ``Backend.ORT_CPU(...)`` shape).

A record is a frozen, keyword-only dataclass holding only options (threads, device, precision): cheap to
pickle to a Ray worker, hashable, and free of live state. What it knows how to do:

- :meth:`Runtime.unavailable`: None where it can run here, else the one-line reason why not;
- :attr:`Runtime.precisions` and :attr:`Runtime.needs_gpu`;
- :meth:`Runtime.key_fields`: its part of an artefact cache key (its version, the CPU or GPU it validates on);
- :meth:`Runtime.artefacts`: the directory it serves for a task or checkpoint, made from an export and cached on
  first use (none for eager PyTorch);
- :meth:`Runtime.memory_model`: its entry of the memory model (:mod:`rvrt_engines.memory_budget`);
- :meth:`Runtime.stages`: a context manager opening its stages on a directory (or on the network itself, for
  eager PyTorch), closed on exit;
- :meth:`Runtime.run`: the recurrent driver on those stages, on the array kind they compute with.

Heavy libraries (onnxruntime, openvino, torch, tensorrt) are imported inside the methods that need them: reading
the table (:mod:`rvrt_engines.runtimes`) for a command's choices costs nothing.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from rvrt import RVRTConfig, Task

    from ..cache import ArtefactCache, ModelSource
    from ..memory_budget import MemoryModel

PRECISION_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
"""--precision spellings and the precisions they name."""


class RuntimeUnavailable(RuntimeError):
    """The machine lacks what a runtime needs (a GPU, TensorRT, a library): exit status 1, one line."""


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """One runtime's options. Subclasses set the class attributes and override the methods that differ.

    precision: one of :attr:`precisions`, or None for the runtime's default (:meth:`resolved`).
    """

    name: ClassVar[str]
    label: ClassVar[str]
    """How people call it: "ONNX Runtime"."""
    precisions: ClassVar[tuple[str, ...]] = ("float32",)
    exported: ClassVar[bool] = True
    """Serves export or engine directories (False: eager PyTorch, which runs the network itself)."""

    precision: str | None = None

    def __post_init__(self):
        # --precision's spellings name the same precisions from Python (load_backend, the VapourSynth filter).
        object.__setattr__(self, "precision", PRECISION_NAMES.get(self.precision, self.precision))
        if self.precision is not None and self.precision not in self.precisions:
            spelled = {name: short for short, name in PRECISION_NAMES.items()}
            raise ValueError(f"--runtime {self.name} --precision {spelled.get(self.precision, self.precision)}: "
                             f"{self.label} serves "
                             f"{', '.join(spelled.get(p, p) for p in self.precisions)}")

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def needs_gpu(self) -> bool:
        return False

    def resolved(self) -> Runtime:
        """This record with its defaults filled in for this machine (precision None -> the default here)."""
        if self.precision is None:
            import dataclasses

            return dataclasses.replace(self, precision=self.precisions[0])
        return self

    def directory_precision(self, manifest: dict) -> str:
        """The precision a directory is served in when none was asked for: what its graphs hold, where this
        runtime runs that, else this machine's default."""
        return manifest["dtype"] if manifest["dtype"] in self.precisions else self.resolved().precision

    def unavailable(self) -> str | None:
        """Why this runtime cannot run in this process; None when it can."""
        return None

    def require(self) -> None:
        reason = self.unavailable()
        if reason:
            raise RuntimeUnavailable(reason)

    def key_fields(self) -> tuple[str, str]:
        """(runtime version, the CPU or GPU that validation holds for): the runtime's fields of a cache key."""
        raise NotImplementedError

    def serves(self, manifest: dict) -> bool:
        """Whether this runtime, in this record's precision (any, where None), runs the directory that
        ``manifest`` describes."""
        return False

    def making_hint(self, directory) -> str:
        """How to make from ``directory`` what this record serves (a command), for messages."""
        return f"pass a task or checkpoint as MODEL with --runtime {self.name}"

    def derived(self, model, export_dir: Path, out: Path) -> dict | None:
        """Make in ``out`` what this record serves from the float32 export ``export_dir`` of the eager ``model``,
        where that takes seconds (rvrt-validate measures it); returns its manifest, or None where nothing is
        made that way."""
        return None

    def artefacts(self, source: ModelSource, *, tile, batch: int, cache: ArtefactCache) -> Path | None:
        """The validated directory this runtime serves for ``source`` at ``tile`` and ``batch``, from the cache
        or made now (minutes, once); None where the runtime needs none (eager PyTorch)."""
        return None

    def memory_model(self, config: RVRTConfig) -> MemoryModel:
        """Peak memory of a process restoring with this runtime and ``config``'s kind of network."""
        raise NotImplementedError

    def stages(self, target, *, task: Task, config: RVRTConfig, allow_unvalidated: bool = False
               ) -> contextlib.AbstractContextManager:
        """A context manager yielding live stages (:class:`rvrt.driver.Stages`) of ``target``: a directory this
        runtime serves, or (eager PyTorch) the :class:`~rvrt_engines.cache.ModelSource` of the network."""
        raise NotImplementedError

    def run_stage(self, stages, name: str, spec, feed: dict) -> dict:
        """One stage graph of opened ``stages`` on ``feed`` (input name -> numpy array): output name -> array
        on the host. What rvrt-validate measures stage by stage."""
        return stages.runners[name].infer(feed)

    def run(self, stages, lq):
        """The recurrent driver (:func:`rvrt.run_recurrent`) on ``stages``: lq, a host array (numpy or torch)
        (n, t, cin, H, W) -> restored (n, t, 3, H*s, W*s), of the kind the stages compute with."""
        raise NotImplementedError


@contextlib.contextmanager
def entered(stages) -> Iterator:
    """``stages`` entered for the block (runners activated once) and left after it, also on errors."""
    with stages:
        yield stages


def cpu_identity() -> str:
    """CPU model and architecture: CPU runtimes pick kernels (AVX2, AVX-512...) by CPU, so a validation record
    holds for the CPU it was measured on."""
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model or 'unknown CPU'} ({platform.machine()})"


def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags as /proc/cpuinfo lists them (empty where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()
