"""TensorRT backend: the engines of an ``rvrt-export trt`` directory as Polygraphy TrtRunners.

Engines and execution contexts are created once, when the stages are entered, and reused
for every tile and window. Tensors stay on the GPU between stages: the runner feeds torch
CUDA tensors and asks for device outputs, so the only host copies are the tiles in and out.
"""

from __future__ import annotations

import os
from pathlib import Path

from rvrt_export.manifest import ArtifactError, read_manifest, require_validated

from .runner_stages import RunnerStages, stage_io

INSTALL_HINT = ("install TensorRT >= 10.7 with its libraries (e.g. 'pip install tensorrt' from NVIDIA's index, "
                "https://pypi.nvidia.com, or the TensorRT tar package) on a machine with an NVIDIA GPU and the "
                "CUDA build of torch")


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a GPU is missing; the message says which and how to get it."""


def tensorrt_unavailable() -> str | None:
    """Why TensorRT engines cannot be built or run in this process; None when they can."""
    try:
        import tensorrt  # noqa: F401
    except Exception as error:  # the bindings raise ImportError or OSError when libnvinfer is missing
        return f"TensorRT Python bindings not importable ({type(error).__name__}: {error}): {INSTALL_HINT}"
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


def tensorrt_stages(engine_dir: str | os.PathLike, allow_unvalidated: bool = False) -> RunnerStages:
    """Stages of an ``rvrt-export trt`` directory on TensorRT (refuses unvalidated engines)."""
    require_tensorrt()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, LoadPlugins, TrtRunner

    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    if "engine" not in manifest:
        raise ArtifactError(f"{engine_dir} holds no TensorRT engines (make them with 'rvrt-export trt')")
    require_validated(manifest, engine_dir, allow_unvalidated)
    check_engines_fit_this_gpu(manifest, engine_dir)
    plugins = [str(engine_dir / manifest["engine"]["plugin"])]
    runners = {name: TrtRunner(LoadPlugins(plugins, EngineFromBytes(BytesFromPath(str(engine_dir / stage["plan"])))),
                               name=name)
               for name, stage in manifest["stages"].items()}
    return RunnerStages(runners, stage_io(manifest), manifest["clip_size"],
                        infer_options={"copy_outputs_to_host": False}, clone_outputs=True)
