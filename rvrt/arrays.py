"""Two array kinds, one code path: numpy arrays (the video layer, ONNX Runtime on the CPU) and
torch tensors (eager PyTorch, CUDA, TensorRT device buffers).

The recurrent driver and the tiling compute through the array API namespace of what they are
given (``array_api_compat.array_namespace``), so neither imports torch. These helpers cover
what the standard leaves to each library: moving an array to the host, to the other kind, and
making it contiguous for a runtime's buffers. Like Polygraphy's ``util/array``, they tell the
kinds apart by type; array-api-compat does so without importing torch (it looks in
``sys.modules`` first), so a numpy-only process never loads it.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, is_torch_array

__all__ = ["array_namespace", "contiguous", "host_float32", "to_numpy"]


def to_numpy(x) -> np.ndarray:
    """A numpy array of ``x`` (a torch tensor is detached and copied to the host; numpy passes as is)."""
    if is_torch_array(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def host_float32(x, like):
    """``x`` as float32 on the host, of the same kind as ``like``: a runtime's output handed back
    to the tiling, whatever kind and device the runtime computes with."""
    if is_torch_array(like):
        import torch

        tensor = x.detach() if is_torch_array(x) else torch.from_numpy(np.asarray(x))
        return tensor.to("cpu", torch.float32)
    return to_numpy(x).astype(np.float32, copy=False)


def contiguous(x):
    """``x`` in one C-ordered block, as runtimes bind their buffers (a view where it already is)."""
    if is_torch_array(x):
        return x.contiguous()
    return np.ascontiguousarray(x)
