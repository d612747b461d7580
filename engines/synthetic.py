"""Realistic synthetic videos for tests, demos and benchmarks: slow pan and zoom over photographs
that ship with scikit-image, degraded the way each task expects."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str) -> torch.Tensor:
    """A bundled RGB photograph as (3, H, W) float in [0, 1]."""
    from skimage import data

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; expected one of {', '.join(PHOTOS)}")
    return torch.from_numpy(getattr(data, name)()[..., :3].copy()).permute(2, 0, 1).float() / 255.0


def moving_photo_frames(num_frames: int, height: int, width: int, image: str = "astronaut",
                        seed: int = 0) -> np.ndarray:
    """(num_frames, height, width, 3) uint8: a camera panning along a smooth random path and
    zooming slowly over ``image``, sub-pixel steps (bilinear resampling), so optical flow is
    non-trivial and varies across the frame."""
    rng = np.random.default_rng(seed)
    source = photo(image)
    _, src_h, src_w = source.shape
    direction = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(0.6, 1.4)                   # source px per frame
    zoom_rate = rng.uniform(-0.004, 0.004)          # relative scale change per frame
    base_scale = 0.8 * min(src_h / height, src_w / width) / (1 + abs(zoom_rate) * num_frames)
    thetas = []
    for t in range(num_frames):
        scale = base_scale * (1 + zoom_rate * t)
        cx = src_w / 2 + speed * t * math.cos(direction) + 2 * math.sin(0.3 * t)
        cy = src_h / 2 + speed * t * math.sin(direction) + 2 * math.cos(0.23 * t)
        # Affine map from output normalised coords to source normalised coords (align_corners=False).
        thetas.append([[scale * width / src_w, 0, 2 * cx / src_w - 1],
                       [0, scale * height / src_h, 2 * cy / src_h - 1]])
    grid = F.affine_grid(torch.tensor(thetas, dtype=torch.float32), (num_frames, 3, height, width),
                         align_corners=False)
    frames = F.grid_sample(source.expand(num_frames, -1, -1, -1), grid, mode="bilinear", padding_mode="reflection",
                           align_corners=False)
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def degrade(frames: np.ndarray, task: str, sigma: float = 20.0, seed: int = 0) -> np.ndarray:
    """Apply a task's degradation to (T, H, W, 3) uint8 frames.

    'sr': bicubic x4 downsampling (H, W multiples of 4); 'deblur': Gaussian blur (std 2 px);
    'denoise': additive Gaussian noise of std ``sigma`` on the 0-255 scale, clipped.
    """
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    if task == "sr":
        x = F.interpolate(x, scale_factor=0.25, mode="bicubic", align_corners=False, antialias=True)
    elif task == "deblur":
        radius = 6
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / 2.0) ** 2)
        taps = (taps / taps.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
        x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
        x = F.conv2d(F.conv2d(x, taps, groups=3), taps.transpose(2, 3), groups=3)
    elif task == "denoise":
        gen = torch.Generator().manual_seed(seed)
        x = x + torch.randn(x.shape, generator=gen) * (sigma / 255.0)
    else:
        raise ValueError(f"unknown degradation {task!r}; expected 'sr', 'deblur' or 'denoise'")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_video(path, frames: np.ndarray, frame_rate: int = 25, lossless: bool = False,
                overwrite: bool = True) -> None:
    """Encode (T, H, W, 3) uint8 frames to a video file (or PNG folder)."""
    from .video import open_writer

    with open_writer(path, frame_rate, frames.shape[2], frames.shape[1], lossless=lossless,
                     overwrite=overwrite) as writer:
        for frame in frames:
            writer.write(frame)
