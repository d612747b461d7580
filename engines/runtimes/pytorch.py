"""Eager PyTorch: the network itself, on the CPU or (with :mod:`.pytorch_cuda`) a CUDA GPU.

The reference every other runtime is checked against. Its stages take torch tensors on the
backend's device; :func:`run_on_torch` converts the host windows at this edge only, so the
driver and tiling above it are the same code as for numpy runtimes.
"""

from __future__ import annotations

from pathlib import Path

from rvrt import EagerStages, Task, run_recurrent
from ..extras import require_extra

RANDOM_SEED = 0
"""Random weights everywhere in rvrt-run: one seed, so eager and cached exports compute alike."""


def run_on_torch(stages, lq, device: str = "cpu"):
    """The recurrent driver on torch stages: lq (numpy array or tensor, on the host) -> restored
    tensor on ``device``, computed without autograd."""
    import torch

    with torch.no_grad():
        return run_recurrent(stages, torch.as_tensor(lq).to(device))


def eager_stages(spec: Task, checkpoint: Path | None, *, device: str, fp16: bool):
    """(stages, config) of the official network from ``checkpoint``, or of random weights (seed
    :data:`RANDOM_SEED`, the seed cached exports of random weights record, so every runtime
    restores alike). fp16: the CUDA float16 runtime (:mod:`.pytorch_cuda`), float32 islands as in
    the float16 graphs."""
    require_extra("export", "--runtime pytorch (eager PyTorch; the default for a task or checkpoint as MODEL)")
    import torch

    from rvrt import build_model

    on_cuda = torch.device(device).type == "cuda"
    if fp16 and not on_cuda:
        raise ValueError("--fp16 with --runtime pytorch needs --device cuda: float16 eager PyTorch runs on CUDA "
                         "GPUs only (on a CPU, --runtime onnxruntime --fp16 shows float16 accuracy)")
    if on_cuda:
        # Imported here: the float16 policy brings the exporter's libraries, a second of start-up on a CPU.
        from .pytorch_cuda import cuda_stages, require_cuda
        require_cuda(device)
    net = build_model(spec.id, checkpoint, random_weights=checkpoint is None,
                      seed=RANDOM_SEED if checkpoint is None else None)
    stages = cuda_stages(net, "float16" if fp16 else "float32", device) if on_cuda else EagerStages(net.to(device))
    return stages, net.config
