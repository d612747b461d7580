"""What scene-cut detection (``--scene-cuts auto``) costs, against a full-size SR run, in one run.

    python benchmarks/scenes.py                 # 176x144 (QCIF, carphone's size), 2-3 min on 2 cores
    python benchmarks/scenes.py --size 144x176 --frames 300 --sr-frames 8 --repeats 3

An H.264 file of ``--frames`` frames (made here with PyAV: pans over photographs, a hard cut every
``--shot`` frames) is decoded as rvrt-run decodes it, alternately without and with FFmpeg's scdet fed
each decoded frame (rvrt_engines.scenes.SceneDetector, what restore_video runs for "auto"),
``--repeats`` times; the fastest pass of each is kept (load only ever slows a pass down). Detection's
cost per frame is read twice: the detector's own clock, and the decode-and-detect pass less the
decode-only one. The SR side is ``restore_video`` of the file's first ``--sr-frames`` frames with the
full-size SR network (random weights: the same arithmetic as the official ones), whole frames in one
window, scenes off: the smallest SR time per frame rvrt-run has for this size, so the share printed
(goal: <= 3 %) is the largest detection can take. The cuts found are checked against those made.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def clip(frames: int, height: int, width: int, shot: int) -> tuple[np.ndarray, list[int]]:
    from rvrt_engines.synthetic import PHOTOS, moving_photo_frames

    lengths = [min(shot, frames - start) for start in range(0, frames, shot)]
    shots = [moving_photo_frames(length, height, width, image=PHOTOS[k % len(PHOTOS)], seed=k)
             for k, length in enumerate(lengths)]
    return np.concatenate(shots), list(range(shot, frames, shot))


def decode_pass(path: Path, detect: bool) -> tuple[float, float, list[int]]:
    """(seconds of the pass, seconds inside the detector, cuts found) of one decode of ``path``."""
    from rvrt_engines.scenes import SceneDetector
    from rvrt_engines.video import open_frames

    detector = SceneDetector()
    cuts = []
    began = time.perf_counter()
    for index, frame in enumerate(open_frames(path)):
        if detect and detector(index, frame):
            cuts.append(index)
    return time.perf_counter() - began, detector.seconds, cuts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="144x176", help="HEIGHTxWIDTH of the LR frames [144x176]")
    parser.add_argument("--frames", type=int, default=300, help="frames decoded per pass [300]")
    parser.add_argument("--shot", type=int, default=50, help="frames per shot [50]")
    parser.add_argument("--sr-frames", type=int, default=8, help="frames of the SR run [8]")
    parser.add_argument("--repeats", type=int, default=3, help="decode passes of each kind [3]")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads of the SR run [2]")
    args = parser.parse_args()
    height, width = map(int, args.size.split("x"))

    import torch

    from rvrt_engines.backends import load_backend
    from rvrt_engines.restore import restore_video
    from rvrt_engines.synthetic import write_video

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        video = Path(work) / "shots.mp4"
        frames, made = clip(args.frames, height, width, args.shot)
        write_video(video, frames)
        decode_pass(video, True)                              # unmeasured: file cache, scdet's first graph
        plain, detected, inside = [], [], []
        for _ in range(args.repeats):
            plain.append(decode_pass(video, False)[0])
            seconds, own, cuts = decode_pass(video, True)
            detected.append(seconds)
            inside.append(own)
        backend = load_backend("sr", random_weights=True, device="cpu")
        whole = (-(-height // 8) * 8, -(-width // 8) * 8)       # one tile a frame (sides multiples of 8)
        summary = restore_video(backend, video, Path(work) / "sr", frames=args.sr_frames, window=args.sr_frames,
                                tile=whole, scene_cuts="off")
    per_frame = min(inside) / args.frames
    difference = max(min(detected) - min(plain), 0.0) / args.frames
    sr = summary.seconds / summary.frames
    print(f"clip: {args.frames} frames of {width}x{height} (H.264), cuts made at {made}")
    print(f"cuts found: {cuts}" + (" (all of them)" if cuts == made else " (NOT those made)"))
    print(f"decode only: {min(plain) / args.frames * 1e3:.3f} ms/frame; decode + scdet: "
          f"{min(detected) / args.frames * 1e3:.3f} ms/frame (fastest of {args.repeats} passes each)")
    print(f"detection: {per_frame * 1e3:.3f} ms/frame on its own clock, {difference * 1e3:.3f} ms/frame by difference")
    print(f"full-size SR ({summary.backend}, {args.threads} threads, whole frames, {summary.frames} frames in one "
          f"window): {sr:.2f} s/frame ({summary.seconds:.1f} s)")
    print(f"detection's share of the SR run: {100 * per_frame / sr:.4f} % (own clock), "
          f"{100 * difference / sr:.4f} % (by difference); goal <= 3 %")


if __name__ == "__main__":
    main()
