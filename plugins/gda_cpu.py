"""The GDA CPU twin through ctypes: the TensorRT plugin's arithmetic, run on the CPU.

Same signature and shapes as :func:`rvrt.gda.guided_deform_attn_reference`; computes in float32
(inputs of other dtypes are converted, the output is float32).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from rvrt_plugins.build import cpu_twin_library

_ERROR_BUFFER_SIZE = 256


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    library = ctypes.CDLL(str(cpu_twin_library()))
    forward = library.rvrt_gda_cpu_forward_f32
    forward.restype = ctypes.c_int32
    forward.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int32] * 10 + [ctypes.c_char_p, ctypes.c_int32]
    return library


def guided_deform_attn_cpu(q: torch.Tensor, kv: torch.Tensor, offset: torch.Tensor, kernel_h: int, kernel_w: int,
                           padding: int, heads: int, groups: int, clip: int) -> torch.Tensor:
    """GDA forward on the CPU twin. q: (B*clip, 1, C, H, W); kv: (B, clip, 2C, H, W);
    offset: (B*clip, clip*groups*kernel_h*kernel_w*2, H, W) -> float32 (B*clip, 1, C, H, W)."""
    frames, _, channels, height, width = q.shape
    expected = {
        "kv": (frames // clip if clip > 0 else 0, clip, 2 * channels, height, width),
        "offset": (frames, clip * groups * kernel_h * kernel_w * 2, height, width),
    }
    for name, tensor in (("kv", kv), ("offset", offset)):
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(f"GDA CPU twin: {name} must be {expected[name]}, got {tuple(tensor.shape)}")
    q, kv, offset = (t.detach().to(device="cpu", dtype=torch.float32).contiguous() for t in (q, kv, offset))
    out = torch.empty_like(q)
    error = ctypes.create_string_buffer(_ERROR_BUFFER_SIZE)
    status = _library().rvrt_gda_cpu_forward_f32(
        q.data_ptr(), kv.data_ptr(), offset.data_ptr(), out.data_ptr(), frames, clip, channels, height, width,
        kernel_h, kernel_w, padding, heads, groups, error, _ERROR_BUFFER_SIZE)
    if status != 0:
        raise ValueError(f"GDA CPU twin: {error.value.decode()}")
    return out
