"""Pixel-shuffle upsampler of the reconstruction head (official parameter indices 0, 5, 10)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .swin import FrameConv


class FramewisePixelShuffle(nn.Module):
    """Pixel shuffle of every frame: (n, t, c*r*r, h, w) -> (n, t, c, h*r, w*r).

    Equal to ``nn.PixelShuffle`` on a 5-D input, written on 4-D tensors so that it exports
    as one DepthToSpace."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = x.shape
        x = F.pixel_shuffle(x.reshape(n * t, c, h, w), self.factor)
        return x.reshape(n, t, c // self.factor ** 2, h * self.factor, w * self.factor)


class Upsample(nn.Sequential):
    """x4 upsampling of (n, t, C, h, w) features: two (conv, pixel shuffle x2, LeakyReLU) + conv.

    The Identity layers stand where the official network transposes between (n, c, t, h, w)
    and (n, t, c, h, w), keeping the official parameter indices."""

    def __init__(self, num_feat: int = 64):
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [FrameConv(num_feat, 4 * num_feat, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
                       nn.Identity(),
                       FramewisePixelShuffle(2),
                       nn.Identity(),
                       nn.LeakyReLU(0.1)]
        layers.append(FrameConv(num_feat, num_feat, kernel_size=(1, 3, 3), padding=(0, 1, 1)))
        super().__init__(*layers)
