"""Eager PyTorch: the network itself, on the CPU or (with :mod:`.pytorch_cuda`) a CUDA GPU.

The reference every other runtime is checked against. Its stages take torch tensors on the
backend's device; :func:`run_on_torch` converts the host windows at this edge only, so the
driver and tiling above it are the same code as for numpy runtimes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from rvrt import EagerStages, run_recurrent

from ..extras import MissingExtra, require_extra
from ..memory_budget import GIB, MemoryModel, network_kind
from .base import Runtime

RANDOM_SEED = 0
"""Random weights everywhere in rvrt-run: one seed, so eager and cached exports compute alike."""


def run_on_torch(stages, lq, device: str = "cpu"):
    """The recurrent driver on torch stages: lq (numpy array or tensor, on the host) -> restored
    tensor on ``device``, computed without autograd."""
    import torch

    with torch.no_grad():
        return run_recurrent(stages, torch.as_tensor(lq).to(device))


# Fitted by benchmarks/memory_model.py on 2026-12-01 (see rvrt_engines.memory_budget). Measured (tile, frames: GiB):
#   SR       64x64 2: 0.58, 64x64 8: 0.84, 128x128 4: 1.62, 144x176 2: 1.54, 144x176 8: 2.73
#   denoise  136x136 2: 0.44, 256x256 2: 0.74, 256x256 6: 0.93, 272x480 4: 1.18
MEMORY_MODELS = {
    "sr": MemoryModel(0.635 * GIB, 7649.0, 31417.0, "eager SR, 5 points, 2026-12-01"),
    "quarter": MemoryModel(0.426 * GIB, 754.0, 3454.0, "eager denoise, 4 points, 2026-12-01"),
}


@dataclass(frozen=True, kw_only=True)
class PyTorch(Runtime):
    """The eager network (the reference), on the CPU or a CUDA GPU (:mod:`.pytorch_cuda`: float32, or float16
    with the float16 export's float32 islands). threads: PyTorch's intra-op threads [its default]."""

    name: ClassVar[str] = "pytorch"
    label: ClassVar[str] = "eager PyTorch"
    precisions: ClassVar[tuple[str, ...]] = ("float32", "float16")
    exported: ClassVar[bool] = False

    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.precision == "float16" and not self.needs_gpu:
            raise ValueError("--precision f16 with --runtime pytorch needs --device cuda: float16 eager PyTorch runs "
                             "on CUDA GPUs only (on a CPU, --runtime onnxruntime --precision f16 shows float16 "
                             "accuracy)")

    @property
    def needs_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def unavailable(self) -> str | None:
        try:
            require_extra("export", "--runtime pytorch (eager PyTorch)")
        except MissingExtra as error:
            return str(error)
        if self.needs_gpu:
            from .pytorch_cuda import CudaUnavailableError, require_cuda

            try:
                require_cuda(self.device)
            except CudaUnavailableError as error:
                return str(error)
        return None

    def require(self) -> None:
        require_extra("export", "--runtime pytorch (eager PyTorch)")
        if self.needs_gpu:
            from .pytorch_cuda import require_cuda

            require_cuda(self.device)

    def key_fields(self) -> tuple[str, str]:
        raise ValueError("eager PyTorch makes no artefacts to cache")

    def memory_model(self, config) -> MemoryModel:
        model = MEMORY_MODELS[network_kind(config)]
        # Measured on the CPU: on a GPU these are borrowed figures, and plans say so.
        return dataclasses.replace(model, calibrated=False) if self.needs_gpu else model

    def stages(self, target, *, task, config, allow_unvalidated: bool = False):
        """``target``: the :class:`~rvrt_engines.cache.ModelSource` of the network."""
        self.require()
        # The network holds nothing to release: its stages need no opening.
        return contextlib.nullcontext(eager_stages(target, device=self.device, precision=self.resolved().precision,
                                                   threads=self.threads))

    def run_stage(self, stages, name: str, spec, feed: dict) -> dict:
        import torch

        inputs = [torch.from_numpy(feed[input_name]).to(self.device) for input_name in spec.input_names]
        with torch.no_grad(), float32_convolutions(self.device):
            outputs = spec.module(stages.model)(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {output: value.float().cpu().numpy() for output, value in zip(spec.outputs, outputs)}

    def run(self, stages, lq):
        return run_on_torch(stages, lq, self.device)


def float32_convolutions(device: str):
    """On CUDA, convolutions in IEEE float32 (not TF32) for the block: what a stage is measured with."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    from .pytorch_cuda import ieee_float32_convolutions

    return ieee_float32_convolutions()


def eager_stages(source, *, device: str, precision: str, threads: int | None = None):
    """Stages of the network of ``source`` (a :class:`~rvrt_engines.cache.ModelSource`: an official checkpoint,
    or random weights of seed :data:`RANDOM_SEED`, the seed cached exports of random weights record, so every
    runtime restores alike). On CUDA, :mod:`.pytorch_cuda` in ``precision``."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    net = source.model
    if torch.device(device).type == "cuda":
        # Imported here: it loads torch's CUDA side.
        from .pytorch_cuda import cuda_stages

        return cuda_stages(net, precision, device)
    return EagerStages(net.to(device))
