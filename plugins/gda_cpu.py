"""Guided deformable attention (shared/GDA.md) on the CPU through ctypes.

Four entry points over the library built from ``plugins/gda/gda_cpu.cpp``
(:func:`rvrt_plugins.build.cpu_library`, compiled on first use and cached):

- :func:`gda_cpu_numpy`: the fast multi-threaded kernel on numpy arrays, for ONNX Runtime
  pipelines that run GDA between two graph pieces. float32 C-contiguous arrays pass without a
  copy; the GIL is released while the kernel runs.
- :func:`gda_cpu_numpy_channels_last`: the same kernel on channels-last numpy arrays (q, keys,
  values and the output (B*clip, H, W, C)), for graph pieces whose tensors are channels-last:
  no transposes to and from NCHW around the call. Its result is :func:`gda_cpu_numpy`'s,
  transposed, bit for bit.
- :func:`guided_deform_attn_cpu`: the same kernel on torch tensors (what ``torch.ops.rvrt.guided_deform_attn``
  runs on the CPU).
- :func:`guided_deform_attn_twin`: the CPU twin, the CUDA kernel's per-pixel routine run by
  plain loops (single-threaded, slow): it tests the GPU arithmetic on machines without a GPU.

Shapes, as in :func:`rvrt.gda.guided_deform_attn_reference`: q (B*clip, 1, C, H, W),
kv (B, clip, 2C, H, W), offset (B*clip, clip*groups*kernel_h*kernel_w*2, H, W) -> like q.
Channels-last: q, k and v (B*clip, H, W, C), k and v being kv's key and value halves
(kv.reshape(B*clip, 2C, H, W)[:, :C] and [:, C:], channels last), offset as above -> like q.
All compute in float32. Bad shapes raise ValueError; a library that cannot be built or loaded
raises :class:`rvrt_plugins.build.PluginBuildError`.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import TYPE_CHECKING

import numpy as np

from rvrt_plugins.build import PluginBuildError, cpu_library

if TYPE_CHECKING:
    import torch

_ERROR_BUFFER_SIZE = 256
_SHAPE_ARGUMENTS = [ctypes.c_int32] * 10   # frames, clip, C, H, W, kernel_h, kernel_w, padding, heads, groups


@functools.lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL:
    """The CPU library, built first if needed. Raises PluginBuildError if it cannot be built or loaded."""
    path = cpu_library()
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:
        raise PluginBuildError(f"Loading the GDA CPU library {path} failed: {error}") from error
    pointers = [ctypes.c_void_p] * 4
    error_buffer = [ctypes.c_char_p, ctypes.c_int32]
    library.rvrt_gda_cpu_forward_f32.restype = ctypes.c_int32
    library.rvrt_gda_cpu_forward_f32.argtypes = pointers + _SHAPE_ARGUMENTS + [ctypes.c_int32] + error_buffer
    library.rvrt_gda_cpu_forward_channels_last_f32.restype = ctypes.c_int32
    library.rvrt_gda_cpu_forward_channels_last_f32.argtypes = (
        [ctypes.c_void_p] * 5 + _SHAPE_ARGUMENTS + [ctypes.c_int32] + error_buffer)
    library.rvrt_gda_cpu_twin_f32.restype = ctypes.c_int32
    library.rvrt_gda_cpu_twin_f32.argtypes = pointers + _SHAPE_ARGUMENTS + error_buffer
    return library


def available_cpus() -> int:
    """CPUs this process may run on (the default thread count of :func:`gda_cpu_numpy`)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_shapes(q_shape, kv_shape, offset_shape, kernel_h: int, kernel_w: int, heads: int, groups: int,
                 clip: int) -> None:
    """Raise ValueError naming the first input whose shape does not fit q's and the attributes."""
    q_shape = tuple(q_shape)
    if len(q_shape) != 5 or q_shape[1] != 1:
        raise ValueError(f"GDA: q must be (B*clip, 1, C, H, W), got {q_shape}")
    _check_clip(q_shape, clip)
    frames, _, channels, height, width = q_shape
    _check_inputs(q_shape, {
        "kv": (kv_shape, (frames // clip, clip, 2 * channels, height, width)),
        "offset": (offset_shape, (frames, clip * groups * kernel_h * kernel_w * 2, height, width)),
    })


def check_shapes_channels_last(q_shape, k_shape, v_shape, offset_shape, kernel_h: int, kernel_w: int,
                               groups: int, clip: int) -> None:
    """Raise ValueError naming the first channels-last input whose shape does not fit q's and the attributes."""
    q_shape = tuple(q_shape)
    if len(q_shape) != 4:
        raise ValueError(f"GDA: q must be (B*clip, H, W, C), got {q_shape}")
    _check_clip(q_shape, clip)
    frames, height, width, _ = q_shape
    _check_inputs(q_shape, {
        "k": (k_shape, q_shape),
        "v": (v_shape, q_shape),
        "offset": (offset_shape, (frames, clip * groups * kernel_h * kernel_w * 2, height, width)),
    })


def _check_clip(q_shape: tuple, clip: int) -> None:
    if clip <= 0 or q_shape[0] % clip != 0:
        raise ValueError(f"GDA: q's first dimension {q_shape[0]} must be a multiple of clip={clip}")


def _check_inputs(q_shape: tuple, inputs: dict[str, tuple]) -> None:
    """inputs: name -> (its shape, the shape q and the attributes ask for)."""
    for name, (shape, expected) in inputs.items():
        if tuple(shape) != expected:
            raise ValueError(f"GDA: {name} must be {expected} for q {q_shape}, got {tuple(shape)}")


def _output(out: np.ndarray | None, shape, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """``out`` checked (writeable float32 C-contiguous, of ``shape``, not overlapping the inputs), or a new array."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.dtype != np.float32 or not out.flags.c_contiguous or out.shape != shape or not out.flags.writeable:
        raise ValueError(f"GDA: out must be a writeable float32 C-contiguous array of shape {shape}, got "
                         f"{out.dtype} {out.shape}")
    if any(np.may_share_memory(out, array) for array in inputs.values()):
        raise ValueError(f"GDA: out must not overlap {', '.join(list(inputs)[:-1])} or {list(inputs)[-1]}")
    return out


def _call(function, pointers, shape_arguments, *extra) -> None:
    error = ctypes.create_string_buffer(_ERROR_BUFFER_SIZE)
    status = function(*pointers, *shape_arguments, *extra, error, _ERROR_BUFFER_SIZE)
    if status != 0:
        raise ValueError(f"GDA CPU kernel: {error.value.decode()}")


def _shape_arguments(q_shape, kernel_h, kernel_w, padding, heads, groups, clip) -> tuple[int, ...]:
    frames, _, channels, height, width = q_shape
    return frames, clip, channels, height, width, kernel_h, kernel_w, padding, heads, groups


def gda_cpu_numpy(q: np.ndarray, kv: np.ndarray, offset: np.ndarray, *, kernel_h: int, kernel_w: int, padding: int,
                  heads: int, groups: int, clip: int, threads: int | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
    """GDA with the fast CPU kernel on numpy arrays -> float32 array shaped like q.

    Inputs that are not float32 C-contiguous are converted (a copy); others are read in place.
    ``out``, if given, must be a float32 C-contiguous array of q's shape not overlapping the
    inputs; it is filled and returned. ``threads`` defaults to :func:`available_cpus`.
    """
    check_shapes(q.shape, kv.shape, offset.shape, kernel_h, kernel_w, heads, groups, clip)
    q, kv, offset = (np.ascontiguousarray(array, dtype=np.float32) for array in (q, kv, offset))
    out = _output(out, q.shape, {"q": q, "kv": kv, "offset": offset})
    _call(load_library().rvrt_gda_cpu_forward_f32, [a.ctypes.data for a in (q, kv, offset, out)],
          _shape_arguments(q.shape, kernel_h, kernel_w, padding, heads, groups, clip),
          available_cpus() if threads is None else threads)
    return out


def gda_cpu_numpy_channels_last(q: np.ndarray, k: np.ndarray, v: np.ndarray, offset: np.ndarray, *, kernel_h: int,
                                kernel_w: int, padding: int, heads: int, groups: int, clip: int,
                                threads: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """GDA with the fast CPU kernel on channels-last numpy arrays -> float32 array shaped like q.

    q, k, v: (B*clip, H, W, C), k and v the key and value halves of kv; offset (B*clip,
    clip*groups*kernel_h*kernel_w*2, H, W) as for :func:`gda_cpu_numpy`. Conversions, ``out``
    and ``threads`` as there.
    """
    check_shapes_channels_last(q.shape, k.shape, v.shape, offset.shape, kernel_h, kernel_w, groups, clip)
    q, k, v, offset = (np.ascontiguousarray(array, dtype=np.float32) for array in (q, k, v, offset))
    out = _output(out, q.shape, {"q": q, "k": k, "v": v, "offset": offset})
    frames, height, width, channels = q.shape
    _call(load_library().rvrt_gda_cpu_forward_channels_last_f32, [a.ctypes.data for a in (q, k, v, offset, out)],
          (frames, clip, channels, height, width, kernel_h, kernel_w, padding, heads, groups),
          available_cpus() if threads is None else threads)
    return out


def guided_deform_attn_cpu(q: torch.Tensor, kv: torch.Tensor, offset: torch.Tensor, kernel_h: int, kernel_w: int,
                           padding: int, heads: int, groups: int, clip: int,
                           threads: int | None = None) -> torch.Tensor:
    """GDA with the fast CPU kernel on torch tensors -> float32 CPU tensor shaped like q.

    ``threads`` defaults to ``torch.get_num_threads()``.
    """
    import torch

    check_shapes(q.shape, kv.shape, offset.shape, kernel_h, kernel_w, heads, groups, clip)
    q, kv, offset = (t.detach().to(device="cpu", dtype=torch.float32).contiguous() for t in (q, kv, offset))
    out = torch.empty(q.shape, dtype=torch.float32)
    _call(load_library().rvrt_gda_cpu_forward_f32, [t.data_ptr() for t in (q, kv, offset, out)],
          _shape_arguments(q.shape, kernel_h, kernel_w, padding, heads, groups, clip),
          torch.get_num_threads() if threads is None else threads)
    return out


def guided_deform_attn_twin(q: torch.Tensor, kv: torch.Tensor, offset: torch.Tensor, kernel_h: int, kernel_w: int,
                            padding: int, heads: int, groups: int, clip: int) -> torch.Tensor:
    """GDA with the CPU twin of the CUDA kernel (single-threaded) -> float32 CPU tensor shaped like q."""
    import torch

    check_shapes(q.shape, kv.shape, offset.shape, kernel_h, kernel_w, heads, groups, clip)
    q, kv, offset = (t.detach().to(device="cpu", dtype=torch.float32).contiguous() for t in (q, kv, offset))
    out = torch.empty(q.shape, dtype=torch.float32)
    _call(load_library().rvrt_gda_cpu_twin_f32, [t.data_ptr() for t in (q, kv, offset, out)],
          _shape_arguments(q.shape, kernel_h, kernel_w, padding, heads, groups, clip))
    return out
