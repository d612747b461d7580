"""The official RVRT network from a checkout named by $RVRT_OFFICIAL_DIR, for parity tests
(loader: :mod:`rvrt_validate.official`)."""

from __future__ import annotations

import os

import torch

from rvrt_validate import official

OFFICIAL_DIR = os.environ.get("RVRT_OFFICIAL_DIR", "")


def official_network(config):
    return official.official_network(config, OFFICIAL_DIR)


def official_test_video():
    return official.official_test_video(OFFICIAL_DIR)


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (also the zero-initialised offset head and position bias),
    scaled so activations and deformable offsets stay in a realistic range."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            scale = 0.5 / fan_in ** 0.5 if p.dim() > 1 else 0.05
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
