"""Frames per second of eager PyTorch vs ONNX Runtime on the same input, same tiling, one run.

    python benchmarks/eager_vs_onnxruntime.py --task sr --tile 64 --frames 8 --size 96

Both backends serve the same weights (random, seeded: this measures speed, not quality) and
the same recurrent driver and tiling; the script also prints how far apart their outputs are.
The ONNX export is made once into --export-dir and reused.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rvrt import EagerStages, Tiling, build_model, get_task, restore_tiled
from rvrt_engines.backends import Backend, load_backend
from rvrt_engines.synthetic import moving_photo_frames
from rvrt_export.onnx_export import export_onnx


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sr")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=96, help="input frame height and width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tiny", action="store_true", help="tiny-width architecture (a quick smoke run)")
    parser.add_argument("--export-dir", type=Path, default=Path("runs/benchmark-export"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    torch.manual_seed(0)
    model = build_model(task.id, random_weights=True, config=task.config.tiny() if args.tiny else None)
    export_dir = args.export_dir / f"{task.short}-tile{args.tile}-batch{args.batch}{'-tiny' if args.tiny else ''}"
    if not export_dir.exists():
        print(f"exporting to {export_dir} (once) ...")
        export_onnx(model, task, args.tile, export_dir, batch=args.batch)

    frames = moving_photo_frames(args.frames, args.size, args.size, seed=0)
    lq = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255).unsqueeze(0)
    if task.kind == "denoise":
        lq = torch.cat([lq, torch.full_like(lq[:, :, :1], 20 / 255)], 2)
    tiling = Tiling(window=0, tile=args.tile, tile_overlap=16, batch=args.batch)

    eager = Backend("pytorch", task, model.config, EagerStages(model))
    with torch.no_grad():
        reference, eager_seconds = timed(lambda: restore_tiled(eager.restore, lq, model.config, tiling))
    onnx_backend = load_backend(export_dir, threads=args.threads)
    with onnx_backend:
        restore_tiled(onnx_backend.restore, lq[:, :2], model.config, tiling)  # session creation, warm-up
        served, ort_seconds = timed(lambda: restore_tiled(onnx_backend.restore, lq, model.config, tiling))

    count = lq.shape[1]
    print(f"task {task.short}{' (tiny)' if args.tiny else ''}, {count} frames {args.size}x{args.size}, tile "
          f"{args.tile}, batch {args.batch}, {args.threads} threads")
    print(f"eager PyTorch : {count / eager_seconds:7.3f} fps ({eager_seconds:.1f} s)")
    print(f"ONNX Runtime  : {count / ort_seconds:7.3f} fps ({ort_seconds:.1f} s)")
    print(f"speed-up ONNX Runtime / eager: {eager_seconds / ort_seconds:.2f}x")
    print(f"max abs difference of outputs: {(served - reference).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
