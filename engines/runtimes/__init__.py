"""The runtimes behind the recurrent driver, one module and one record each, and the one table of them.

- :mod:`.onnxruntime`: exported graphs in ONNX Runtime sessions, numpy arrays, no PyTorch
  (:mod:`.onnxruntime_gda_split` runs the steps with GDA around the fused CPU kernel);
- :mod:`.openvino`: the same exported graphs compiled by OpenVINO, bfloat16 on CPUs that have it;
- :mod:`.tensorrt`: engines through Polygraphy's ``TrtRunner``, torch CUDA tensors;
- :mod:`.pytorch`: the eager network (the reference); :mod:`.pytorch_cuda`: on a CUDA GPU, float32 or float16;
- :mod:`.base`: what a runtime record is; :mod:`.runner_stages`: the driver's stage interface over one runner
  per stage graph.

:data:`RUNTIMES` is the registry: the commands' ``--runtime`` choices, the cache's keys, the memory budget, the
Ray workers, ``rvrt-validate``'s candidates and the README's runtime table all read it, and nothing outside this
package asks for a runtime by its name. Its order is the order of preference for a directory given without
``--runtime``: the first runtime that serves it and runs here (ONNX Runtime for ONNX graphs, which the export
validated; TensorRT for engines).
"""

from __future__ import annotations

from .base import PRECISION_NAMES, Runtime, RuntimeUnavailable
from .onnxruntime import OnnxRuntime
from .openvino import OpenVino
from .pytorch import PyTorch
from .tensorrt import TensorRT

RUNTIMES: dict[str, type[Runtime]] = {record.name: record for record in (OnnxRuntime, OpenVino, TensorRT, PyTorch)}
"""name -> record class."""


def runtime_named(name: str) -> type[Runtime]:
    """The record class of ``--runtime NAME``; ValueError listing the choices otherwise."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}: expected --runtime {', '.join(RUNTIMES)}") from None


def runtime_record(name: str, *, precision: str | None = None, device: str = "cpu",
                   threads: int | None = None) -> Runtime:
    """The record of ``name`` with the options a command line gives; options a runtime has no field for are
    refused where they ask for something it cannot do (a GPU of a CPU runtime) and dropped otherwise."""
    record = runtime_named(name)
    fields = record.__dataclass_fields__
    options = {"precision": precision}
    if "device" in fields:
        options["device"] = device
    elif device not in ("cpu", record().device):
        raise ValueError(f"--runtime {name} runs on {record().device}, not --device {device}")
    if "threads" in fields:
        options["threads"] = threads
    return record(**options)


def default_runtime(*, precision: str | None = None, device: str = "cpu", threads: int | None = None) -> Runtime:
    """The record that serves a task or checkpoint given without --runtime: eager PyTorch, which needs no export
    (an exported runtime's first use at a new tile exports for minutes)."""
    return runtime_record(PyTorch.name, precision=precision, device=device, threads=threads)


def serving_runtime(manifest: dict, directory) -> type[Runtime]:
    """The record class that serves a directory by default: the first in :data:`RUNTIMES` that serves it and
    runs here (ONNX Runtime for ONNX graphs; TensorRT for engines)."""
    serving = [record for record in RUNTIMES.values() if record.exported and record().serves(manifest)]
    if not serving:
        raise ValueError(f"{directory}: no runtime serves what its manifest describes")
    return next((record for record in serving if record().unavailable() is None), serving[0])


__all__ = ["PRECISION_NAMES", "RUNTIMES", "Runtime", "RuntimeUnavailable", "default_runtime", "runtime_named", "runtime_record",
           "serving_runtime", "OnnxRuntime", "OpenVino", "PyTorch", "TensorRT"]
