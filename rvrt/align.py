"""Guided deformable alignment: offsets from flows and features, then GDA (official parameter names)."""

from __future__ import annotations

import torch
import torch.nn as nn
from einops.layers.torch import Rearrange

from .gda import guided_deform_attn
from .swin import FrameConv, Mlp


def channels_last_linear(layer: nn.Module) -> nn.Sequential:
    """Apply a per-pixel layer to (n, t, c, h, w); index 1 holds it, as in the checkpoints."""
    return nn.Sequential(Rearrange("n d c h w -> n d h w c"), layer, Rearrange("n d h w c -> n d c h w"))


class GuidedDeformAttnPack(nn.Module):
    """Aligns the propagated features of the previous clip to the current clip.

    Args mirror the official module: ``in_channels`` C, attention window (kh, kw),
    ``attention_heads``, ``deformable_groups`` G, ``clip_size``, ``max_residue_magnitude``.
    """

    def __init__(self, in_channels: int, attention_window=(3, 3), attention_heads: int = 12,
                 deformable_groups: int = 12, clip_size: int = 2, max_residue_magnitude: float = 10.0):
        super().__init__()
        self.in_channels = in_channels
        self.kernel_h, self.kernel_w = attention_window
        self.attn_size = self.kernel_h * self.kernel_w
        self.attention_heads = attention_heads
        self.deformable_groups = deformable_groups
        self.clip_size = clip_size
        self.max_residue_magnitude = max_residue_magnitude
        self.proj_channels = 2 * in_channels

        offset_channels = clip_size * deformable_groups * self.attn_size * 2
        layers: list[nn.Module] = [FrameConv(in_channels * (1 + clip_size) + clip_size * 2, 64, kernel_size=1)]
        for _ in range(4):
            layers += [nn.LeakyReLU(0.1), FrameConv(64, 64, kernel_size=(1, 3, 3), padding=(0, 1, 1))]
        layers += [nn.LeakyReLU(0.1), FrameConv(64, offset_channels, kernel_size=1)]
        self.conv_offset = nn.Sequential(*layers)
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)

        self.proj_q = channels_last_linear(nn.Linear(in_channels, self.proj_channels))
        self.proj_k = channels_last_linear(nn.Linear(in_channels, self.proj_channels))
        self.proj_v = channels_last_linear(nn.Linear(in_channels, self.proj_channels))
        self.proj = channels_last_linear(nn.Linear(self.proj_channels, in_channels))
        self.mlp = channels_last_linear(Mlp(in_channels, in_channels * 2, in_channels))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, v_warped: list[torch.Tensor],
                flows: list[torch.Tensor]):
        """q, k, v: (n, clip, C, h, w) current-clip queries, previous-clip keys and the previous
        clip's propagated features; v_warped: v warped by each of the two flows;
        flows: flow_n1, flow_n2 (n, clip, 2, h, w) as (dx, dy).

        Returns the aligned features (n, clip, C, h, w) and the two updated flows
        (n, clip, 2, h, w): the mean offset of each half, as (dx, dy).
        """
        n, t, _, h, w = q.shape
        residue = self.max_residue_magnitude * torch.tanh(self.conv_offset(torch.cat([q, *v_warped, *flows], 2)))
        half = residue.shape[2] // 2
        points = half // 2
        # Offsets are (dy, dx) pairs while flows are (dx, dy): flip, then repeat per group and point.
        offset1 = residue[:, :, :half] + flows[0].flip(2).repeat(1, 1, points, 1, 1)
        offset2 = residue[:, :, half:] + flows[1].flip(2).repeat(1, 1, points, 1, 1)
        offset = torch.cat([offset1, offset2], dim=2).flatten(0, 1)

        query = self.proj_q(q).reshape(n * t, 1, self.proj_channels, h, w)
        kv = torch.cat([self.proj_k(k), self.proj_v(v)], 2)
        aligned = guided_deform_attn(query, kv, offset, self.kernel_h, self.kernel_w, self.kernel_h // 2,
                                     self.attention_heads, self.deformable_groups, self.clip_size)
        aligned = self.proj(aligned.reshape(n, t, self.proj_channels, h, w))
        aligned = aligned + self.mlp(aligned)

        flow1 = offset1.reshape(n, t, points, 2, h, w).mean(2).flip(2)
        flow2 = offset2.reshape(n, t, points, 2, h, w).mean(2).flip(2)
        return aligned, flow1, flow2
