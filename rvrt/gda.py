"""Guided deformable attention (GDA): the custom op ``torch.ops.rvrt.guided_deform_attn`` and its
plain PyTorch reference.

:func:`guided_deform_attn_reference` computes the function defined in ``shared/GDA.md`` (the
official RVRT CUDA operator) with standard tensor ops, on any device: it is the test oracle.
:func:`guided_deform_attn` is one opaque op for graph exporters, and runs fused native kernels:

- on the CPU, float32: the multi-threaded kernel of ``rvrt_plugins.gda_cpu`` (built with the host
  C++ compiler on first use and cached; ``torch.get_num_threads()`` threads);
- on CUDA, float32 and float16, head dimension <= 64: the CUDA kernel of ``rvrt_plugins.gda_cuda``
  (built with nvcc on first use);
- anything else (other dtypes, devices): the reference.

``RVRT_GDA=reference`` in the environment selects the reference everywhere (``native``, the
default, the kernels above). A kernel that
cannot be built or loaded (no compiler, compile error) warns once, naming why, and the
reference runs instead.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

IMPLEMENTATION_VARIABLE = "RVRT_GDA"
IMPLEMENTATIONS = ("native", "reference")
CUDA_MAX_HEAD_DIM = 64   # the CUDA kernel keeps a head's rows in registers; larger heads use the reference


def sample_bilinear_zeros(frames: torch.Tensor, pos_y: torch.Tensor, pos_x: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling at pixel coordinates; corners outside the image contribute zero.

    frames: (N, C, H, W); pos_y, pos_x: (N, P, Q) pixel coordinates -> (N, C, P, Q).
    Uses ``align_corners=False`` with half-pixel centres so the mapping is exact for any
    size, including H or W equal to 1.
    """
    height, width = frames.shape[-2:]
    grid = torch.stack(((pos_x + 0.5) * (2.0 / width) - 1.0, (pos_y + 0.5) * (2.0 / height) - 1.0), dim=-1)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def guided_deform_attn_reference(q: torch.Tensor, kv: torch.Tensor, offset: torch.Tensor, kernel_h: int,
                                 kernel_w: int, padding: int, heads: int, groups: int, clip: int) -> torch.Tensor:
    """GDA forward.

    q: (B*clip, 1, C, H, W) queries; kv: (B, clip, 2C, H, W) keys then values;
    offset: (B*clip, clip*groups*kernel_h*kernel_w*2, H, W) as (dy, dx) pairs
    -> (B*clip, 1, C, H, W).
    """
    frames, _, channels, height, width = q.shape
    batch = kv.shape[0]
    points = kernel_h * kernel_w
    group_channels = 2 * channels // groups
    head_dim = channels // heads
    if kv.shape != (batch, clip, 2 * channels, height, width) or frames != batch * clip:
        raise ValueError(f"GDA: kv must be (B, clip={clip}, {2 * channels}, {height}, {width}) with "
                         f"B*clip = {frames}, got {tuple(kv.shape)}")
    if offset.shape != (frames, clip * groups * points * 2, height, width):
        raise ValueError(f"GDA: offset must be ({frames}, {clip * groups * points * 2}, {height}, {width}), "
                         f"got {tuple(offset.shape)}")

    # Query frame t of a clip samples kv frames (n + t) % clip for n = 0..clip-1.
    t_index = torch.arange(clip, device=q.device)
    source = (t_index[:, None] + t_index[None, :]) % clip                               # (t, n)
    sampled_frames = kv[:, source]                                                     # (B, t, n, 2C, H, W)
    sampled_frames = sampled_frames.reshape(frames * clip * groups, group_channels, height, width)

    off = offset.reshape(frames, clip, groups, points, 2, height, width)
    ky = torch.arange(kernel_h, device=q.device, dtype=q.dtype).repeat_interleave(kernel_w)
    kx = torch.arange(kernel_w, device=q.device, dtype=q.dtype).repeat(kernel_h)
    base_y = torch.arange(height, device=q.device, dtype=q.dtype)[None, :, None] - padding + ky[:, None, None]
    base_x = torch.arange(width, device=q.device, dtype=q.dtype)[None, None, :] - padding + kx[:, None, None]
    pos_y = (off[:, :, :, :, 0] + base_y).reshape(frames * clip * groups, points * height, width)
    pos_x = (off[:, :, :, :, 1] + base_x).reshape(frames * clip * groups, points * height, width)
    sampled = sample_bilinear_zeros(sampled_frames, pos_y, pos_x)
    sampled = sampled.reshape(frames, clip, 2 * channels, points, height, width)

    keys = sampled[:, :, :channels].reshape(frames, clip, heads, head_dim, points, height, width)
    values = sampled[:, :, channels:].reshape(frames, clip, heads, head_dim, points, height, width)
    query = q.reshape(frames, 1, heads, head_dim, 1, height, width)
    logits = (query * keys).sum(3) * head_dim ** -0.5                                  # (b, n, heads, K, H, W)
    logits = logits.permute(0, 2, 1, 3, 4, 5).reshape(frames, heads, clip * points, height, width)
    weights = torch.softmax(logits, dim=2).reshape(frames, heads, clip, points, height, width)
    out = (weights.permute(0, 2, 1, 3, 4, 5).unsqueeze(3) * values).sum(dim=(1, 4))   # (b, heads, d, H, W)
    return out.reshape(frames, 1, channels, height, width)


@torch.library.custom_op("rvrt::guided_deform_attn", mutates_args=())
def guided_deform_attn(q: torch.Tensor, kv: torch.Tensor, offset: torch.Tensor, kernel_h: int, kernel_w: int,
                       padding: int, heads: int, groups: int, clip: int) -> torch.Tensor:
    """GDA as one opaque op (shapes as in :func:`guided_deform_attn_reference`); the fused kernel
    of the device where there is one (see the module docstring)."""
    return guided_deform_attn_reference(q, kv, offset, kernel_h, kernel_w, padding, heads, groups, clip)


# Device types whose kernel failed to build or load: it is neither retried nor warned about again.
_UNAVAILABLE: set[str] = set()


def use_reference() -> bool:
    """Whether ``RVRT_GDA`` asks for the reference. Raises ValueError for a value it does not know."""
    choice = os.environ.get(IMPLEMENTATION_VARIABLE, "native") or "native"
    if choice not in IMPLEMENTATIONS:
        raise ValueError(f"{IMPLEMENTATION_VARIABLE}={choice!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    return choice == "reference"


def _kernel_unavailable(device_type: str, reason: BaseException) -> None:
    _UNAVAILABLE.add(device_type)
    warnings.warn(f"GDA: the fused {device_type.upper()} kernel is unavailable, using the PyTorch reference "
                  f"(slower, more memory). Reason: {reason}", RuntimeWarning, stacklevel=3)


@guided_deform_attn.register_kernel("cpu")
def _guided_deform_attn_cpu(q, kv, offset, kernel_h, kernel_w, padding, heads, groups, clip):
    if (not use_reference() and "cpu" not in _UNAVAILABLE
            and all(t.dtype == torch.float32 for t in (q, kv, offset))):
        try:
            from rvrt_plugins.build import PluginBuildError
            from rvrt_plugins.gda_cpu import guided_deform_attn_cpu, load_library
        except ImportError as error:
            _kernel_unavailable("cpu", error)
        else:
            try:
                load_library()
            except PluginBuildError as error:
                _kernel_unavailable("cpu", error)
            else:
                return guided_deform_attn_cpu(q, kv, offset, kernel_h, kernel_w, padding, heads, groups, clip)
    return guided_deform_attn_reference(q, kv, offset, kernel_h, kernel_w, padding, heads, groups, clip)


@guided_deform_attn.register_kernel("cuda")
def _guided_deform_attn_cuda(q, kv, offset, kernel_h, kernel_w, padding, heads, groups, clip):
    if (not use_reference() and "cuda" not in _UNAVAILABLE
            and q.dtype in (torch.float32, torch.float16) and kv.dtype == q.dtype and offset.dtype == q.dtype
            and q.shape[2] <= CUDA_MAX_HEAD_DIM * heads):
        try:
            from rvrt_plugins.build import PluginBuildError
            from rvrt_plugins.gda_cuda import guided_deform_attn_cuda
        except ImportError as error:
            _kernel_unavailable("cuda", error)
        else:
            try:
                return guided_deform_attn_cuda(q, kv, offset, kernel_h, kernel_w, padding, heads, groups, clip)
            except PluginBuildError as error:
                _kernel_unavailable("cuda", error)
    return guided_deform_attn_reference(q, kv, offset, kernel_h, kernel_w, padding, heads, groups, clip)


@guided_deform_attn.register_fake
def _guided_deform_attn_fake(q, kv, offset, kernel_h, kernel_w, padding, heads, groups, clip):
    return torch.empty_like(q)
