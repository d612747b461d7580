"""The official RVRT code (github.com/JingyunLiang/RVRT), imported from a checkout on this machine.

For parity tests and for the CPU benchmark's baseline; nothing of it is bundled. The official
guided deformable attention is a CUDA extension compiled at import: its loader is replaced by
an object whose forward calls this project's pure-PyTorch GDA (checked against a loop
transliteration of the definition), so the rest of the official network runs unchanged on a CPU.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from unittest import mock

from rvrt.gda import guided_deform_attn_reference


class _ReferenceExtension:
    @staticmethod
    def deform_attn_forward(q, kv, offset, output, _b0, _b1, _b2, kernel_h, kernel_w, _sh, _sw, padding, _pw, _dh,
                            _dw, heads, groups, clip):
        output.copy_(guided_deform_attn_reference(q, kv, offset, kernel_h, kernel_w, padding, heads, groups, clip))


def _on_path(directory: str | os.PathLike) -> None:
    directory = os.fspath(directory)
    if not os.path.isfile(os.path.join(directory, "models", "network_rvrt.py")):
        raise FileNotFoundError(f"{directory} is not a checkout of github.com/JingyunLiang/RVRT "
                                f"(no models/network_rvrt.py)")
    if directory not in sys.path:
        sys.path.insert(0, directory)


def official_module(directory: str | os.PathLike):
    """The official ``models.network_rvrt`` module."""
    _on_path(directory)
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    with mock.patch("torch.utils.cpp_extension.load", return_value=_ReferenceExtension()):
        return importlib.import_module("models.network_rvrt")


def official_network(config, directory: str | os.PathLike):
    """The official ``RVRT`` constructed with the values of an :class:`rvrt.RVRTConfig`."""
    return official_module(directory).RVRT(
        upscale=config.upscale, clip_size=config.clip_size, img_size=[2, 64, 64], window_size=list(config.window_size),
        num_blocks=list(config.num_blocks), depths=list(config.depths), embed_dims=list(config.embed_dims),
        num_heads=list(config.num_heads), inputconv_groups=list(config.inputconv_groups),
        deformable_groups=config.deformable_groups, attention_heads=config.attention_heads,
        attention_window=list(config.attention_window), nonblind_denoising=config.nonblind_denoising,
        cpu_cache_length=100)


def official_test_video(directory: str | os.PathLike):
    """``main_test_rvrt.test_video(lq, model, args)``: the official script's temporal and spatial
    tiling. The script's data, image and download modules are stood in for by empty ones:
    ``test_video`` uses none of them."""
    _on_path(directory)
    for name in ("cv2", "requests", "utils", "utils.utils_image", "data", "data.dataset_video_test"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["data.dataset_video_test"].__dict__.update(
        VideoRecurrentTestDataset=None, VideoTestVimeo90KDataset=None, SingleVideoRecurrentTestDataset=None)
    return importlib.import_module("main_test_rvrt").test_video
