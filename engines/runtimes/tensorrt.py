"""TensorRT backend: the engines of an ``rvrt-export trt`` directory as Polygraphy TrtRunners.

Engines and execution contexts are created once, when the stages are entered, and reused
for every tile and window. Tensors stay on the GPU between stages: the runner feeds torch
CUDA tensors and asks for device outputs, so the only host copies are the tiles in and out.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rvrt.tiling import tile_name

from ..cache import cached, check_tile_and_batch
from ..manifest import ArtifactError, check_files, read_manifest, remedy, require_validated, sha256_of
from ..memory_budget import network_kind
from .base import Runtime, entered
from .runner_stages import RunnerStages, stage_io

log = logging.getLogger(__name__)

MINIMUM_VERSION = (10, 10)
"""The oldest TensorRT that builds these graphs: its ONNX parser takes the GDA plugin's namespace
from the node's domain (``rvrt``) since 10.10 (shared/FACTS.md)."""
MINIMUM = ".".join(map(str, MINIMUM_VERSION))
INSTALL_HINT = (f"install TensorRT >= {MINIMUM} with its libraries (e.g. 'pip install tensorrt' from NVIDIA's index, "
                "https://pypi.nvidia.com, or the TensorRT tar package) on a machine with an NVIDIA GPU and the "
                "CUDA build of torch")


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a GPU is missing (the machine lacks it: exit status 1); the message says which
    and how to get it."""


def tensorrt_unavailable() -> str | None:
    """Why TensorRT engines cannot be built or run in this process; None when they can."""
    try:
        import tensorrt
    except Exception as error:  # the bindings raise ImportError or OSError when libnvinfer is missing
        return f"TensorRT Python bindings not importable ({type(error).__name__}: {error}): {INSTALL_HINT}"
    found = tuple(int(part) for part in tensorrt.__version__.split(".")[:2])
    if found < MINIMUM_VERSION:
        return f"TensorRT {tensorrt.__version__} is too old: {INSTALL_HINT}"
    import torch

    if not torch.cuda.is_available():
        return (f"no CUDA GPU visible to torch {torch.__version__} (a CPU build, or no driver/device): "
                f"TensorRT engines need an NVIDIA GPU; {INSTALL_HINT}")
    return None


def require_tensorrt() -> None:
    reason = tensorrt_unavailable()
    if reason:
        raise TensorRTUnavailable(reason)


def gpu_description() -> dict:
    """TensorRT version, GPU name and compute capability, as recorded next to engines."""
    import tensorrt
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"tensorrt": tensorrt.__version__, "gpu": torch.cuda.get_device_name(),
            "compute_capability": f"{major}.{minor}"}


def check_engines_fit_this_gpu(manifest: dict, engine_dir: Path) -> None:
    """Engines are specific to a TensorRT version and GPU architecture: refuse others by name."""
    built, here = manifest["engine"], gpu_description()
    for key in ("tensorrt", "compute_capability"):
        if built[key] != here[key]:
            raise ArtifactError(f"{engine_dir} was built with {key} {built[key]} ({built['gpu']}), this machine has "
                                f"{here[key]} ({here['gpu']}): build the engines again here with 'rvrt-export trt'")


def checked_plugin(manifest: dict, engine_dir: Path) -> Path:
    """The plugin library of an engine directory, once it is the very file the engines were built
    with (its sha256, recorded at build time): it is loaded into this process as it is, so a
    swapped or damaged library is refused here, before TensorRT is even imported. Its path stays
    inside the directory (``read_manifest``)."""
    name = manifest["engine"].get("plugin")
    recorded = manifest["engine"].get("plugin_sha256")
    path = engine_dir / name if isinstance(name, str) else None
    if path is None or not path.is_file():
        raise ArtifactError(f"{engine_dir}: the TensorRT plugin library {name!r} named by its manifest is missing; "
                            f"{remedy(manifest)}")
    if recorded is None:
        raise ArtifactError(f"{engine_dir}: its manifest records no sha256 of the plugin library {name}, so the "
                            f"library cannot be checked before it is loaded; {remedy(manifest)}")
    if sha256_of(path) != recorded:
        raise ArtifactError(f"{path} is not the plugin library these engines were built with (sha256 differs from "
                            f"the recorded {recorded[:12]}...): refusing to load it; {remedy(manifest)}")
    return path


def tensorrt_stages(engine_dir: str | os.PathLike, allow_unvalidated: bool = False) -> RunnerStages:
    """Stages of an ``rvrt-export trt`` directory on TensorRT. The directory is checked first
    (validation record, engine sizes, the plugin's sha256), then TensorRT is loaded."""
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    if "engine" not in manifest:
        raise ArtifactError(f"{engine_dir} holds no TensorRT engines (make them with 'rvrt-export trt')")
    require_validated(manifest, engine_dir, allow_unvalidated)
    check_files(manifest, engine_dir)
    plugin = checked_plugin(manifest, engine_dir)
    require_tensorrt()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, LoadPlugins, TrtRunner

    check_engines_fit_this_gpu(manifest, engine_dir)
    plugins = [str(plugin)]
    runners = {name: TrtRunner(LoadPlugins(plugins, EngineFromBytes(BytesFromPath(str(engine_dir / stage["plan"])))),
                               name=name)
               for name, stage in manifest["stages"].items()}
    return RunnerStages(runners, stage_io(manifest), manifest["clip_size"],
                        infer_options={"copy_outputs_to_host": False}, clone_outputs=True)


@dataclass(frozen=True, kw_only=True)
class TensorRT(Runtime):
    """TensorRT engines (``rvrt-export trt``) on a CUDA GPU, float32 or float16 (strongly typed from the graphs)."""

    name: ClassVar[str] = "tensorrt"
    label: ClassVar[str] = "TensorRT"
    precisions: ClassVar[tuple[str, ...]] = ("float32", "float16")

    @property
    def device(self) -> str:
        return "cuda"

    @property
    def needs_gpu(self) -> bool:
        return True

    def unavailable(self) -> str | None:
        return tensorrt_unavailable()

    def require(self) -> None:
        require_tensorrt()

    def key_fields(self) -> tuple[str, str]:
        gpu = gpu_description()
        return gpu["tensorrt"], f"{gpu['gpu']} (compute capability {gpu['compute_capability']})"

    def serves(self, manifest: dict) -> bool:
        return "engine" in manifest and self.precision in (None, manifest["dtype"])

    def making_hint(self, directory) -> str:
        flag = " --fp16" if self.precision == "float16" else ""
        return f"build engines with 'rvrt-export trt {directory}{flag}' and validate that directory"

    def artefacts(self, source, *, tile, batch: int, cache) -> Path:
        from .onnxruntime import exported_graphs

        self.require()
        check_tile_and_batch(source, tile, batch)
        precision = self.resolved().precision
        key = source.key(self, tile=tile, batch=batch, precision=precision)

        def build(out: Path) -> None:
            from rvrt_export.trt_build import build_engines

            log.info("building %s TensorRT engines of %s (tile %s): this takes minutes, once", precision,
                     source.task.short, tile_name(tile))
            build_engines(source.model, exported_graphs(source, tile=tile, batch=batch, cache=cache), out,
                          fp16=precision == "float16")

        return cached(cache, key, build, f"building TensorRT engines of {source.task.short}")

    def memory_model(self, config):
        import dataclasses

        from .pytorch import MEMORY_MODELS

        # Nothing measured with TensorRT (no TensorRT anywhere here): eager PyTorch's figures, said to be borrowed.
        return dataclasses.replace(MEMORY_MODELS[network_kind(config)], calibrated=False)

    def stages(self, target, *, task, config, allow_unvalidated: bool = False):
        manifest = read_manifest(target)
        if self.precision is not None and manifest["dtype"] != self.precision:
            raise ArtifactError(f"{target} holds {manifest['dtype']} TensorRT engines, not {self.precision}: build "
                                f"{self.precision} ones with 'rvrt-export trt'")
        return entered(tensorrt_stages(target, allow_unvalidated=allow_unvalidated))

    def run(self, stages, lq):
        from .pytorch import run_on_torch

        return run_on_torch(stages, lq, "cuda")
