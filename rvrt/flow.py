"""Optical flow: SpyNet and flow warping, as RVRT uses them (official parameter names)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def flow_warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Warp x by flow: x (n, c, h, w), flow (n, 2, h, w) as (dx, dy) in pixels -> (n, c, h, w).

    Bilinear, sampling pixel (x + dx, y + dy) with pixel centres at integer positions. The
    official code normalises for ``align_corners=True``; the same positions normalised for
    ``align_corners=False`` (half-pixel) sample the same points (to float rounding), and ONNX
    Runtime's CPU GridSample is about 8x faster with them (zeros padding, 144 channels).
    """
    _, _, h, w = x.shape
    grid_y, grid_x = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device),
                                    torch.arange(w, dtype=x.dtype, device=x.device), indexing="ij")
    pos_x = grid_x + flow[:, 0]
    pos_y = grid_y + flow[:, 1]
    grid = torch.stack(((2.0 * pos_x + 1.0) / w - 1.0, (2.0 * pos_y + 1.0) / h - 1.0), dim=3)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


class BasicModule(nn.Module):
    """One SpyNet pyramid level: (n, 8, h, w) [ref, warped supp, flow] -> flow residual (n, 2, h, w)."""

    def __init__(self):
        super().__init__()
        widths = (8, 32, 64, 32, 16, 2)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(cin, cout, kernel_size=7, padding=3))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.basic_module = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basic_module(x)


class SpyNet(nn.Module):
    """SpyNet: ref, supp (n, 3, h, w) in [0, 1] -> flow (n, 2, h, w) that warps supp onto ref.

    The input is resized (bilinear) to multiples of 32 and the flow rescaled back, so any
    size >= 33 px works."""

    levels = 6

    def __init__(self):
        super().__init__()
        self.basic_module = nn.ModuleList([BasicModule() for _ in range(self.levels)])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        h, w = ref.shape[-2:]
        h32, w32 = -(-h // 32) * 32, -(-w // 32) * 32
        ref = F.interpolate(ref, size=(h32, w32), mode="bilinear", align_corners=False)
        supp = F.interpolate(supp, size=(h32, w32), mode="bilinear", align_corners=False)
        refs = [(ref - self.mean) / self.std]
        supps = [(supp - self.mean) / self.std]
        for _ in range(self.levels - 1):
            refs.insert(0, F.avg_pool2d(refs[0], kernel_size=2, stride=2, count_include_pad=False))
            supps.insert(0, F.avg_pool2d(supps[0], kernel_size=2, stride=2, count_include_pad=False))

        flow = refs[0].new_zeros(refs[0].shape[0], 2, refs[0].shape[2] // 2, refs[0].shape[3] // 2)
        for level, (ref_l, supp_l) in enumerate(zip(refs, supps)):
            up = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            # A level of odd size (e.g. 5 rows at 160 px) is one more than twice the one below: the official
            # SpyNet extends the upsampled flow by its last row or column (replicate).
            if up.shape[2:] != ref_l.shape[2:]:
                up = F.pad(up, (0, ref_l.shape[3] - up.shape[3], 0, ref_l.shape[2] - up.shape[2]), mode="replicate")
            warped = flow_warp(supp_l, up, padding_mode="border")
            flow = self.basic_module[level](torch.cat([ref_l, warped, up], 1)) + up

        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
        return flow * flow.new_tensor([w / w32, h / h32]).view(1, 2, 1, 1)


def bicubic_quarter(x: torch.Tensor) -> torch.Tensor:
    """Bicubic downsampling by 4, equal to ``F.interpolate(x, scale_factor=0.25, mode='bicubic')``.

    x: (n, c, h, w), h and w multiples of 4 -> (n, c, h/4, w/4). Output pixel i samples source
    position 4i + 1.5, so its four taps 4i..4i+3 never leave the image and the resize is a
    separable stride-4 convolution with the cubic (a = -0.75) weights at distance 1.5 and 0.5:
    a form every exporter and runtime handles.
    """
    n, c, h, w = x.shape
    a = -0.75
    far = a * 1.5 ** 3 - 5 * a * 1.5 ** 2 + 8 * a * 1.5 - 4 * a
    near = (a + 2) * 0.5 ** 3 - (a + 3) * 0.5 ** 2 + 1
    taps = x.new_tensor([far, near, near, far])
    x = x.reshape(n * c, 1, h, w)
    x = F.conv2d(x, taps.view(1, 1, 4, 1), stride=(4, 1))
    x = F.conv2d(x, taps.view(1, 1, 1, 4), stride=(1, 4))
    return x.reshape(n, c, h // 4, w // 4)
