"""A direct loop transliteration of shared/GDA.md: slow, float64, the test oracle."""

import math

import numpy as np


def bilinear_zero_corners(frame, y, x):
    """frame: (C, H, W) numpy; (y, x) pixel position -> (C,) with out-of-image corners as zero."""
    channels, height, width = frame.shape
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return np.zeros(channels)
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    out = np.zeros(channels)
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= yy < height and 0 <= xx < width:
                out += wy * wx * frame[:, yy, xx]
    return out


def gda_loop(q, kv, offset, kernel_h, kernel_w, padding, heads, groups, clip):
    """Shapes as in rvrt.gda.guided_deform_attn_reference; numpy float64 in and out."""
    frames, _, channels, height, width = q.shape
    points = kernel_h * kernel_w
    group_channels = 2 * channels // groups
    head_dim = channels // heads
    off = offset.reshape(frames, clip, groups, points, 2, height, width)
    out = np.zeros_like(q)
    for b in range(frames):
        for y in range(height):
            for x in range(width):
                keys = np.zeros((clip * points, channels))
                values = np.zeros((clip * points, channels))
                for n in range(clip):
                    frame = kv[b // clip, (n + b) % clip]
                    for k in range(points):
                        i, j = divmod(k, kernel_w)
                        sample = np.zeros(2 * channels)
                        for g in range(groups):
                            dy, dx = off[b, n, g, k, :, y, x]
                            sl = slice(g * group_channels, (g + 1) * group_channels)
                            sample[sl] = bilinear_zero_corners(frame[sl], y - padding + i + dy, x - padding + j + dx)
                        keys[n * points + k] = sample[:channels]
                        values[n * points + k] = sample[channels:]
                for h in range(heads):
                    sl = slice(h * head_dim, (h + 1) * head_dim)
                    logits = keys[:, sl] @ q[b, 0, sl, y, x] * head_dim ** -0.5
                    weights = np.exp(logits - logits.max())
                    weights /= weights.sum()
                    out[b, 0, sl, y, x] = weights @ values[:, sl]
    return out
