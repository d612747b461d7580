"""Video Swin Transformer blocks as RVRT uses them (module and parameter names are the official ones)."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops.layers.torch import Rearrange


class Mlp(nn.Module):
    """Two-layer perceptron with GELU: (..., in) -> (..., out)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FrameConv(nn.Conv3d):
    """A Conv3d whose kernel spans one frame, run on (n, t, c, h, w) as a 2-D convolution of every frame.

    Parameters are those of ``nn.Conv3d`` (weight (out, in / groups, 1, kh, kw)), so the
    checkpoints load unchanged. Frames fold into the batch without a copy and no transpose to
    (n, c, t, h, w) is needed; CPU backends then run their 2-D convolution kernels instead of
    a 3-D one (eager PyTorch's slow_conv3d, ONNX Runtime's 3-D Conv).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups)
        if self.kernel_size[0] != 1 or self.stride[0] != 1 or self.padding[0] != 0:
            raise ValueError(f"FrameConv needs a kernel spanning one frame, got kernel {self.kernel_size}, "
                             f"stride {self.stride}, padding {self.padding}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, t, in_channels, h, w) -> (n, t, out_channels, h', w')."""
        y = F.conv2d(x.flatten(0, 1), self.weight.squeeze(2), self.bias, self.stride[1:], self.padding[1:],
                     self.dilation[1:], self.groups)
        return y.unflatten(0, x.shape[:2])


def effective_window(size: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...]):
    """A window no larger than the input, and no shift along axes the window covers whole."""
    window = tuple(s if s <= w else w for s, w in zip(size, window))
    shift = tuple(0 if s <= w else sh for s, w, sh in zip(size, window, shift))
    return window, shift


def window_partition(x: torch.Tensor, window: tuple[int, int, int]) -> torch.Tensor:
    """(B, D, H, W, C) -> (B*num_windows, Wd*Wh*Ww, C)."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window[0], window[0], h // window[1], window[1], w // window[2], window[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window[0] * window[1] * window[2], c)


def window_reverse(windows: torch.Tensor, window: tuple[int, int, int], b: int, d: int, h: int, w: int):
    """(B*num_windows, Wd, Wh, Ww, C) -> (B, D, H, W, C)."""
    x = windows.view(b, d // window[0], h // window[1], w // window[2], window[0], window[1], window[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


@functools.lru_cache(maxsize=32)
def shifted_window_mask(d: int, h: int, w: int, window: tuple, shift: tuple) -> np.ndarray:
    """Attention mask (num_windows, N, N): -100 between tokens from different regions of the
    cyclically shifted (D, H, W) volume, 0 within a region. Depends on shapes only.

    Cached as numpy, not as a tensor: a tensor made while an exporter traces would be a fake
    tensor, and a cached one would leak into later eager calls."""
    region = np.zeros((1, d, h, w, 1), dtype=np.float32)
    label = 0
    slices = [(slice(-win), slice(-win, -sh), slice(-sh, None)) for win, sh in zip(window, shift)]
    for sd in slices[0]:
        for sh_ in slices[1]:
            for sw in slices[2]:
                region[:, sd, sh_, sw, :] = label
                label += 1
    labels = window_partition(torch.from_numpy(region), window).squeeze(-1).numpy()
    diff = labels[:, None, :] - labels[:, :, None]
    return np.where(diff != 0, np.float32(-100.0), np.float32(0.0))


def relative_position_index(window: tuple[int, int, int]) -> torch.Tensor:
    """(N, N) index into the relative position bias table, N = Wd*Wh*Ww."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(s) for s in window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel = rel + torch.tensor([s - 1 for s in window])
    strides = torch.tensor([(2 * window[1] - 1) * (2 * window[2] - 1), 2 * window[2] - 1, 1])
    return (rel * strides).sum(-1)


class WindowAttention(nn.Module):
    """Multi-head self attention inside a window, with relative position bias."""

    def __init__(self, dim: int, window_size: tuple[int, int, int], num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        table_size = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_size, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv_self = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B*num_windows, N, C); mask: (num_windows, N, N) or None -> (B*num_windows, N, C)."""
        b, n, c = x.shape
        qkv = self.qkv_self(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        # A window shrunk to a small input keeps the first N rows/columns of the full index,
        # as the checkpoints were trained with.
        bias = self.relative_position_bias_table[self.relative_position_index[:n, :n].reshape(-1)]
        attn = attn + bias.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(b // windows, windows, self.num_heads, n, n) + mask[:, :n, :n].unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = F.softmax(attn, -1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class STL(nn.Module):
    """Swin Transformer layer on (B, D, H, W, C): (shifted) window attention + MLP, pre-norm."""

    def __init__(self, dim: int, num_heads: int, window_size: tuple, shift_size: tuple, mlp_ratio: float,
                 qkv_bias: bool = True):
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        window, shift = effective_window((d, h, w), self.window_size, self.shift_size)
        x = self.norm1(x)
        pad = [(win - s % win) % win for s, win in zip((d, h, w), window)]
        x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        _, dp, hp, wp, _ = x.shape
        shifted = any(s > 0 for s in shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        windows = self.attn(window_partition(x, window), mask=mask if shifted else None)
        x = window_reverse(windows.view(-1, *window, c), window, b, dp, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w, :]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(x, mask)
        return x + self.mlp(self.norm2(x))


class STG(nn.Module):
    """A group of Swin layers alternating plain and shifted windows: (B, D, H, W, C) -> same."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: tuple, mlp_ratio: float):
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(s // 2 for s in window_size)
        self.blocks = nn.ModuleList([
            STL(dim, num_heads, self.window_size, (0, 0, 0) if i % 2 == 0 else self.shift_size, mlp_ratio)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, d, h, w, _ = x.shape
        window, shift = effective_window((d, h, w), self.window_size, self.shift_size)
        padded = tuple(-(-s // win) * win for s, win in zip((d, h, w), window))
        mask = torch.as_tensor(shifted_window_mask(*padded, window, shift), device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer block: x + Linear(STG(x)) on channels-last (B, D, H, W, C)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: tuple, mlp_ratio: float):
        super().__init__()
        self.residual_group = STG(dim, depth, num_heads, window_size, mlp_ratio)
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(self.residual_group(x))


class RSTBWithInputConv(nn.Module):
    """Grouped (1,3,3) conv, LayerNorm, RSTBs, LayerNorm: (n, t, in_channels, h, w) -> (n, t, dim, h, w).

    The Sequential's indices are those of the official checkpoints (``main.1``, ``main.3``,
    ``main.5.<block>``, ``main.7``); the layers between them hold no parameters, and the
    Identity ones stand where the official network transposes to (n, c, t, h, w), which the
    per-frame convolution and the channels-last blocks here do not need.
    """

    def __init__(self, in_channels: int, dim: int, groups: int, num_blocks: int, depth: int, num_heads: int,
                 window_size: tuple, mlp_ratio: float):
        super().__init__()
        self.main = nn.Sequential(
            nn.Identity(),
            FrameConv(in_channels, dim, kernel_size=(1, 3, 3), padding=(0, 1, 1), groups=groups),
            Rearrange("n d c h w -> n d h w c"),
            nn.LayerNorm(dim),
            nn.Identity(),
            nn.Sequential(*[RSTB(dim, depth, num_heads, window_size, mlp_ratio) for _ in range(num_blocks)]),
            nn.Identity(),
            nn.LayerNorm(dim),
            Rearrange("n d h w c -> n d c h w"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)
