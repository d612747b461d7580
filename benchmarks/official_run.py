"""Restore a folder of PNG frames with the official RVRT code, as the CPU benchmark's baseline.

    python benchmarks/official_run.py --official-dir RVRT --task sr --checkpoint W.pth --tile 64 FRAMES -o OUT

The official network (``models/network_rvrt.py``) and the official script's tiling
(``main_test_rvrt.test_video``) of a checkout of github.com/JingyunLiang/RVRT, on the CPU, the
official CUDA GDA replaced by this project's pure-PyTorch GDA (:mod:`rvrt_validate.official`).
Temporal windows are the task's official setting; ``--tile`` is the spatial tile. What the
official script adds around it (dataset classes, OpenCV image I/O) is not run: frames are read
and written with Pillow, as ``rvrt-run`` does.
"""

from __future__ import annotations

import argparse
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rvrt import get_task
from rvrt_validate.official import official_network, official_test_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("frames", type=Path, help="folder of PNG frames")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the restored PNG frames")
    parser.add_argument("--official-dir", type=Path, required=True, help="checkout of JingyunLiang/RVRT")
    parser.add_argument("--task", required=True, help="task name, e.g. sr or denoise")
    parser.add_argument("--checkpoint", type=Path, required=True, help="weights ({'params': state dict})")
    parser.add_argument("--tile", type=int, required=True, help="spatial tile in input pixels")
    parser.add_argument("--sigma", type=float, help="noise level (0-255), denoising only")
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    task = get_task(args.task)
    config = task.config
    model = official_network(config, args.official_dir).eval()
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True)["params"])
    test_video = official_test_video(args.official_dir)

    paths = sorted(args.frames.glob("*.png"))
    lq = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]))
    lq = lq.permute(0, 3, 1, 2).float().div(255.0).unsqueeze(0)
    if config.nonblind_denoising:
        lq = torch.cat([lq, torch.full_like(lq[:, :, :1], args.sigma / 255.0)], 2)
    options = Namespace(tile=[task.tile[0], args.tile, args.tile], tile_overlap=list(task.tile_overlap),
                        scale=config.upscale, window_size=list(config.window_size),
                        nonblind_denoising=config.nonblind_denoising)
    with torch.no_grad():
        restored = test_video(lq, model, options)[0]
    args.output.mkdir(parents=True, exist_ok=True)
    frames = (restored.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(args.output / f"{index:06d}.png")


if __name__ == "__main__":
    main()
