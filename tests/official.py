"""Import the official RVRT network from a checkout named by $RVRT_OFFICIAL_DIR, for parity tests.

The official guided deformable attention is a CUDA extension compiled at import; here its
loader is replaced by an object whose forward calls this project's PyTorch GDA (itself tested
against a loop transliteration), so the rest of the official network runs unchanged on CPU.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from unittest import mock

import torch

from rvrt.gda import guided_deform_attn_reference

OFFICIAL_DIR = os.environ.get("RVRT_OFFICIAL_DIR", "")


class _ReferenceExtension:
    @staticmethod
    def deform_attn_forward(q, kv, offset, output, _b0, _b1, _b2, kernel_h, kernel_w, _sh, _sw, padding, _pw, _dh,
                            _dw, heads, groups, clip):
        output.copy_(guided_deform_attn_reference(q, kv, offset, kernel_h, kernel_w, padding, heads, groups, clip))


def official_module():
    """The official ``models.network_rvrt`` module."""
    sys.path.insert(0, OFFICIAL_DIR)
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    with mock.patch("torch.utils.cpp_extension.load", return_value=_ReferenceExtension()):
        return importlib.import_module("models.network_rvrt")


def official_network(config):
    """The official RVRT constructed with this project's config values."""
    module = official_module()
    return module.RVRT(
        upscale=config.upscale, clip_size=config.clip_size, img_size=[2, 64, 64], window_size=list(config.window_size),
        num_blocks=list(config.num_blocks), depths=list(config.depths), embed_dims=list(config.embed_dims),
        num_heads=list(config.num_heads), inputconv_groups=list(config.inputconv_groups),
        deformable_groups=config.deformable_groups, attention_heads=config.attention_heads,
        attention_window=list(config.attention_window), nonblind_denoising=config.nonblind_denoising,
        cpu_cache_length=100)


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (also the zero-initialised offset head and position bias),
    scaled so activations and deformable offsets stay in a realistic range."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            scale = 0.5 / fan_in ** 0.5 if p.dim() > 1 else 0.05
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
