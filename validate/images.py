"""Pictures for people: side-by-side crops and error heat maps, as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# black -> red -> yellow -> white: darker is closer to the reference.
HEAT_STOPS = np.array([[0, 0, 0], [200, 0, 0], [255, 220, 0], [255, 255, 255]], dtype=np.float32)
GAP = 4
LABEL_HEIGHT = 14
"""Height of the white strip that carries a panel's label (Pillow's default font is 11-12 px tall)."""


def heat_map(error: np.ndarray, scale: float) -> np.ndarray:
    """(H, W) non-negative error -> (H, W, 3) uint8; ``scale`` and above are white."""
    position = np.clip(error / scale if scale > 0 else np.zeros_like(error), 0, 1) * (len(HEAT_STOPS) - 1)
    low = np.minimum(position.astype(int), len(HEAT_STOPS) - 2)
    frac = (position - low)[..., None]
    return ((1 - frac) * HEAT_STOPS[low] + frac * HEAT_STOPS[low + 1]).round().astype(np.uint8)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (np.clip(image, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8)


def crop_box(error: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """A ``size`` square (clipped to the image) centred on the largest error: (top, left, h, w)."""
    height, width = error.shape
    y, x = np.unravel_index(int(np.argmax(error)), error.shape)
    h, w = min(size, height), min(size, width)
    top = int(np.clip(y - h // 2, 0, height - h))
    left = int(np.clip(x - w // 2, 0, width - w))
    return top, left, h, w


def side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    """(H, W, 3) uint8 panels of one height, left to right, separated by white gaps."""
    height = panels[0].shape[0]
    gap = np.full((height, GAP, 3), 255, np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [gap, panel]
    return np.concatenate(row, axis=1)


def labelled(panel: np.ndarray, label: str) -> np.ndarray:
    """(H, W, 3) uint8 ``panel`` under a white strip with ``label`` in black, drawn into the pixels
    (a PNG viewed on its own still says what it shows); the label is clipped to the panel's width."""
    strip = Image.new("RGB", (panel.shape[1], LABEL_HEIGHT), "white")
    ImageDraw.Draw(strip).text((2, 1), label, fill="black", font=ImageFont.load_default())
    return np.concatenate([np.asarray(strip), panel], axis=0)


def save_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path)
