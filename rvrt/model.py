"""RVRT, written as fixed-shape stages that one recurrent driver calls.

Module and parameter names equal the official network's, so the published checkpoints load
unchanged. The stage methods are the export units: every tensor a stage needs is an argument,
and nothing in a stage depends on data (only on shapes fixed at export time).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .align import GuidedDeformAttnPack
from .config import BRANCHES, RVRTConfig
from .driver import EagerStages, run_recurrent
from .flow import SpyNet, bicubic_quarter, flow_warp
from .swin import FrameConv, RSTBWithInputConv
from .upsample import Upsample


def in_visit_order(x: torch.Tensor, branch: str) -> torch.Tensor:
    """Backward branches see the frames of a clip in reverse; the flip is its own inverse."""
    return x.flip(1) if branch.startswith("backward") else x


class RVRT(nn.Module):
    """Recurrent Video Restoration Transformer.

    ``model(lq)``: lq (n, t, cin, H, W) in [0, 1] -> (n, t, 3, H*s, W*s), s = 4 for SR and 1
    otherwise; cin = 4 for non-blind denoising (RGB + sigma/255). t may be odd (the last
    frames are mirrored to fill the last clip, then dropped).
    """

    def __init__(self, config: RVRTConfig):
        super().__init__()
        if config.clip_size != 2:
            raise ValueError(f"clip_size must be 2 (the official models' value), got {config.clip_size}")
        self.config = config
        cfg = config
        dim = cfg.embed_dims[0]
        self.clip_size = cfg.clip_size
        self.upscale = cfg.upscale

        self.spynet = SpyNet()
        frame_window = (1, cfg.window_size[1], cfg.window_size[2])
        extract_body = RSTBWithInputConv(cfg.in_channels if cfg.upscale == 4 else dim, dim, cfg.inputconv_groups[0],
                                         cfg.num_blocks[0], cfg.depths[0], cfg.num_heads[0], frame_window,
                                         cfg.mlp_ratio)
        if cfg.upscale == 4:
            self.feat_extract = extract_body
        else:
            # Identity where the official network transposes to (n, c, t, h, w) and back:
            # the official parameter indices (1, 3, 6) stay.
            self.feat_extract = nn.Sequential(
                nn.Identity(),
                FrameConv(cfg.in_channels, dim, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
                nn.LeakyReLU(0.1),
                FrameConv(dim, dim, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
                nn.LeakyReLU(0.1),
                nn.Identity(),
                extract_body)

        self.backbone = nn.ModuleDict()
        self.deform_align = nn.ModuleDict()
        for i, branch in enumerate(BRANCHES):
            self.deform_align[branch] = GuidedDeformAttnPack(
                cfg.embed_dims[1], cfg.attention_window, cfg.attention_heads, cfg.deformable_groups,
                cfg.clip_size, cfg.max_residue_magnitude)
            self.backbone[branch] = RSTBWithInputConv(
                (2 + i) * cfg.embed_dims[0], cfg.embed_dims[1], cfg.inputconv_groups[i + 1], cfg.num_blocks[1],
                cfg.depths[1], cfg.num_heads[1], cfg.window_size, cfg.mlp_ratio)

        self.reconstruction = RSTBWithInputConv(
            5 * cfg.embed_dims[0], cfg.embed_dims[2], cfg.inputconv_groups[5], cfg.num_blocks[2], cfg.depths[2],
            cfg.num_heads[2], frame_window, cfg.mlp_ratio)
        self.conv_before_upsampler = nn.Sequential(FrameConv(cfg.embed_dims[-1], 64, kernel_size=1),
                                                   nn.LeakyReLU(0.1))
        self.upsampler = Upsample(64)
        self.conv_last = FrameConv(64, 3, kernel_size=(1, 3, 3), padding=(0, 1, 1))

    # -- stages ------------------------------------------------------------------------------

    def extract(self, lq: torch.Tensor) -> torch.Tensor:
        """Shallow features of one clip: lq (n, clip, cin, H, W) -> (n, clip, C, h, w)."""
        return self.feat_extract(lq)

    def flow(self, pair: torch.Tensor) -> torch.Tensor:
        """Optical flow of two neighbouring frames, both directions.

        pair (n, 2, cin, H, W) -> (n, 2, 2, h, w): [:, 0] is the backward flow (frame 1
        warped onto frame 0), [:, 1] the forward flow (frame 0 onto frame 1), as (dx, dy)
        at feature resolution.
        """
        n, _, _, hgt, wid = pair.shape
        frames = pair[:, :, :3].reshape(n * 2, 3, hgt, wid)
        if self.upscale != 4:
            frames = bicubic_quarter(frames)
        frames = frames.reshape(n, 2, 3, *frames.shape[-2:])
        first, second = frames[:, 0], frames[:, 1]
        flows = self.spynet(torch.cat([first, second]), torch.cat([second, first]))
        return torch.stack([flows[:n], flows[n:]], 1)

    def propagate(self, branch: str, features: list[torch.Tensor], key: torch.Tensor | None = None,
                  prop: torch.Tensor | None = None, flows: tuple[torch.Tensor, ...] = ()) -> tuple[torch.Tensor, ...]:
        """One step of a propagation branch for one clip.

        features: this clip's shallow features and the outputs of the finished branches,
            each (n, clip, C, h, w); the last one is the query.
        key: the previous branch's output at the previously visited clip, prop: this branch's
            output there (both (n, clip, C, h, w)); None at the first clip visited, where
            there is nothing to align.
        flows: for ``*_1`` the raw flows (n, 2, h, w) of the three frame pairs spanning the
            previous and current clip, in visiting order; for ``*_2`` the two updated flows
            (n, clip, 2, h, w) that ``*_1`` returned at the same clip.
        Returns (prop,) or, for ``*_1`` after the first clip, (prop, flow_n1, flow_n2);
        all tensors in natural frame order except the opaque updated flows.
        """
        features = [in_visit_order(f, branch) for f in features]
        if key is None:
            return (in_visit_order(self.backbone[branch](torch.cat([*features, torch.zeros_like(features[0])], 2)),
                                   branch),)
        key, prop = in_visit_order(key, branch), in_visit_order(prop, branch)
        first_iteration = branch.endswith("_1")
        if first_iteration:
            n01, n12, n23 = flows
            n02 = n12 + flow_warp(n01, n12)
            n13 = n23 + flow_warp(n12, n23)
            n03 = n23 + flow_warp(n02, n23)
            flow_n1, flow_n2 = torch.stack([n02, n13], 1), torch.stack([n12, n03], 1)
        else:
            flow_n1, flow_n2 = flows
        warped1 = flow_warp(prop.flatten(0, 1), flow_n1.flatten(0, 1)).view_as(prop)
        warped2 = flow_warp(prop.flip(1).flatten(0, 1), flow_n2.flatten(0, 1)).view_as(prop)
        aligned, updated1, updated2 = self.deform_align[branch](features[-1], key, prop, [warped1, warped2],
                                                                [flow_n1, flow_n2])
        out = in_visit_order(aligned + self.backbone[branch](torch.cat([*features, aligned], 2)), branch)
        return (out, updated1, updated2) if first_iteration else (out,)

    def reconstruct(self, lq: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """Restored frames of one clip: lq (n, clip, cin, H, W) and the five feature sets
        (shallow, backward_1, forward_1, backward_2, forward_2), each (n, clip, C, h, w)
        -> (n, clip, 3, H*s, W*s)."""
        hr = self.reconstruction(torch.cat(features, 2))
        hr = self.conv_last(self.upsampler(self.conv_before_upsampler(hr)))
        rgb = lq[:, :, :3]
        if self.upscale != 1:
            # The official residual is a trilinear resize of (c, h, w) with c unchanged: a
            # per-frame bilinear resize.
            n, t, c, hgt, wid = rgb.shape
            rgb = F.interpolate(rgb.reshape(n * t, c, hgt, wid), scale_factor=self.upscale, mode="bilinear",
                                align_corners=False).reshape(n, t, c, hgt * self.upscale, wid * self.upscale)
        return hr + rgb

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        return run_recurrent(EagerStages(self), lq)
