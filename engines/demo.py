"""``rvrt-demo``: the whole pipeline on a generated video, eager PyTorch vs ONNX Runtime.

Makes a pan-and-zoom clip over a photograph bundled with scikit-image, degrades it for the
task, exports the model to ONNX (validated stage by stage), restores the clip with eager
PyTorch and with ONNX Runtime through the same runner, and reports speed and agreement (and
PSNR against the clean clip when a real checkpoint is given).
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from rvrt import get_task
from rvrt.tiling import tile_name, tile_shape_of

from .backends import eager_description, load_backend
from .extras import MissingExtra, require_extra
from .options import TILE, UserError, check_tile_fits
from .progress import ProgressDisplay, log_to_stderr
from .restore import restore_video
from .video import open_frames
from .wording import count_of


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@click.command()
@click.option("--task", default="sr", show_default=True, help="sr, sr-vimeo, sr-bd, deblur-dvd, deblur-gopro, denoise")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="Official .pth; without it the demo uses random weights and says so.")
@click.option("--tiny", is_flag=True, help="Tiny-width random model: the pipeline in about a minute.")
@click.option("--frames", default=6, show_default=True)
@click.option("--tile", type=TILE, help="Tile in input px: 64 (square) or HEIGHTxWIDTH, e.g. 144x176; multiples of 8, "
                                       "at least 40 for SR and 136 otherwise [64 for SR, 136 otherwise].")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              show_default=True)
def main(task, checkpoint, tiny, frames, tile, workdir):
    """Restore a generated video with eager PyTorch and ONNX Runtime and compare them."""
    try:
        require_extra("export", "the demo (it exports the model and runs it eagerly too)")
    except MissingExtra as err:
        raise UserError(str(err)) from None
    from rvrt import build_model

    from .synthetic import degrade, moving_photo_frames, write_video

    try:
        spec = get_task(task)
    except ValueError as err:
        raise UserError(f"--task: {err}") from None
    if tiny and checkpoint:
        raise UserError("--tiny is a random-weights model; it cannot load a checkpoint: drop one of them")
    tile = tile or (64 if spec.kind == "sr" else 136)
    try:
        check_tile_fits(tile, spec, spec.config)
    except ValueError as err:
        raise UserError(str(err)) from None
    scale = spec.config.upscale
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"{spec.short}-tile{tile_name(tile)}{'-tiny' if tiny else ''}{'-' + checkpoint.stem if checkpoint else ''}"

    tile_h, tile_w = tile_shape_of(tile)
    clean = moving_photo_frames(frames, (tile_h + 16) * scale, (tile_w + 32) * scale, image="chelsea", seed=0)
    sigma = 20 if spec.kind == "denoise" else None
    lq_path = workdir / f"{spec.kind}-input.mkv"
    write_video(lq_path, degrade(clean, spec.kind, sigma=sigma or 0), lossless=True)
    click.echo(f"input: {lq_path} ({count_of(frames, 'frame')}, {spec.kind} degradation of a pan over a photograph)")

    if checkpoint is None:
        click.secho("no checkpoint: random weights (seed 0). The outputs are not restorations; the demo then "
                    "shows speed and that both backends compute the same function.", fg="yellow")
    seed = None if checkpoint else 0
    model = build_model(spec.id, checkpoint, random_weights=checkpoint is None,
                        config=spec.config.tiny() if tiny else None, seed=seed)
    export_dir = workdir / f"onnx-{name}"
    if not export_dir.exists():
        from rvrt_export.onnx_export import export_onnx

        # The export validates stage by stage for a minute or more: its progress shows, also without a terminal.
        log_to_stderr("rvrt_export")
        start = time.perf_counter()
        manifest = export_onnx(model, spec, tile, export_dir, checkpoint=checkpoint, random_seed=seed)
        worst = max(s["max_abs"] for s in manifest["validation"]["stages"].values())
        click.echo(f"exported {len(manifest['stages'])} stage graphs to {export_dir} in "
                   f"{time.perf_counter() - start:.0f} s (largest stage error vs eager: {worst:.1e})")

    results = {}
    eager = eager_description(spec, model, random_weights=checkpoint is None)
    for label, backend in (("eager PyTorch", eager), ("ONNX Runtime", load_backend(export_dir, runtime="onnxruntime"))):
        out = workdir / f"{name}-{backend.name}.mkv"
        display = ProgressDisplay()
        try:
            summary = restore_video(backend, lq_path, out, sigma=sigma, tile=tile, lossless=True, overwrite=True,
                                    progress=display)
        finally:
            display.close()
        results[label] = (summary, np.stack(list(open_frames(out))))
        click.echo(f"{label:14s}: {summary.fps:6.3f} fps ({summary.seconds:.1f} s) -> {out}")

    (eager, eager_frames), (served, served_frames) = results.values()
    diff = np.abs(eager_frames.astype(int) - served_frames.astype(int))
    click.echo(f"ONNX Runtime vs eager: max {count_of(int(diff.max()), 'level')}, {np.mean(diff > 0) * 100:.3f} % of "
               f"values differ; speed ratio {eager.seconds / served.seconds:.2f}x")
    if checkpoint is not None:
        click.echo(f"PSNR vs clean: input {psnr(np.stack(list(open_frames(lq_path))), clean) if scale == 1 else 0:.2f}"
                   f" dB, restored {psnr(served_frames, clean):.2f} dB")
