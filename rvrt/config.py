"""Task presets: the six official RVRT checkpoints and their architectures, in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not belong to the requested task (defined
    here, with the tasks, so that what reports it needs no PyTorch)."""


BRANCHES = ("backward_1", "forward_1", "backward_2", "forward_2")
"""The four propagation branches, in the order the recurrence runs them."""


@dataclass(frozen=True)
class RVRTConfig:
    """Architecture hyper-parameters (names follow the official constructor)."""

    upscale: int = 4
    clip_size: int = 2
    window_size: tuple[int, int, int] = (2, 8, 8)
    num_blocks: tuple[int, int, int] = (1, 2, 1)
    depths: tuple[int, int, int] = (2, 2, 2)
    embed_dims: tuple[int, int, int] = (144, 144, 144)
    num_heads: tuple[int, int, int] = (6, 6, 6)
    mlp_ratio: float = 2.0
    inputconv_groups: tuple[int, ...] = (1, 1, 1, 1, 1, 1)
    deformable_groups: int = 12
    attention_heads: int = 12
    attention_window: tuple[int, int] = (3, 3)
    max_residue_magnitude: float = 10.0
    nonblind_denoising: bool = False

    @property
    def in_channels(self) -> int:
        """Input channels: RGB, plus the noise level map for non-blind denoising."""
        return 4 if self.nonblind_denoising else 3

    @property
    def feature_stride(self) -> int:
        """Input pixels per feature pixel: 1 for SR, 4 for deblurring/denoising."""
        return 1 if self.upscale == 4 else 4

    @property
    def min_tile(self) -> int:
        """Smallest spatial tile (input pixels): SpyNet pools five times and needs >= 33 px
        at flow resolution; tiles are multiples of 8."""
        return 40 if self.feature_stride == 1 else 136

    def tiny(self) -> "RVRTConfig":
        """Same structure at a fraction of the width and depth: for fast tests."""
        return dataclasses.replace(self, embed_dims=(24, 24, 24), num_blocks=(1, 1, 1))


SR = RVRTConfig()
DEBLUR = RVRTConfig(upscale=1, embed_dims=(192, 192, 192), inputconv_groups=(1, 3, 3, 3, 3, 3))
DENOISE = dataclasses.replace(DEBLUR, inputconv_groups=(1, 3, 4, 6, 8, 4), nonblind_denoising=True)


@dataclass(frozen=True)
class Task:
    """An official checkpoint: its id, short name, architecture and official tiling defaults."""

    id: str
    short: str
    config: RVRTConfig
    description: str
    tile: tuple[int, int, int]          # (frames, height, width); 0 frames = whole video
    tile_overlap: tuple[int, int, int] = (2, 20, 20)

    @property
    def kind(self) -> str:
        return "sr" if self.config.upscale == 4 else ("denoise" if self.config.nonblind_denoising else "deblur")


TASKS: dict[str, Task] = {t.id: t for t in (
    Task("001_RVRT_videosr_bi_REDS_30frames", "sr", SR, "video SR x4, bicubic degradation, REDS", (100, 128, 128)),
    Task("002_RVRT_videosr_bi_Vimeo_14frames", "sr-vimeo", SR, "video SR x4, bicubic degradation, Vimeo-90K",
         (0, 128, 128)),
    Task("003_RVRT_videosr_bd_Vimeo_14frames", "sr-bd", SR, "video SR x4, blur-downsampling degradation, Vimeo-90K",
         (0, 128, 128)),
    Task("004_RVRT_videodeblurring_DVD_16frames", "deblur-dvd", DEBLUR, "video deblurring, DVD", (0, 256, 256)),
    Task("005_RVRT_videodeblurring_GoPro_16frames", "deblur-gopro", DEBLUR, "video deblurring, GoPro",
         (0, 256, 256)),
    Task("006_RVRT_videodenoising_DAVIS_16frames", "denoise", DENOISE, "non-blind video denoising, DAVIS",
         (0, 256, 256)),
)}


def get_task(name: str) -> Task:
    """Look a task up by official id, short name, or checkpoint file name (``<id>.pth``)."""
    key = name.removesuffix(".pth")
    for task in TASKS.values():
        if key in (task.id, task.short):
            return task
    known = ", ".join(f"{t.short} ({t.id})" for t in TASKS.values())
    raise ValueError(f"unknown task {name!r}; expected one of: {known}")
