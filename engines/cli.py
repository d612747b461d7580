"""``rvrt-run MODEL INPUT -o OUTPUT``: restore a video with any backend."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from tqdm import tqdm

from rvrt import CheckpointError
from rvrt_export.manifest import ArtifactError

from .backends import load_backend
from .restore import restore_video
from .video_io import VideoInputError


def advance(bar: tqdm, done: int, total: int) -> None:
    bar.total = total
    bar.update(done - bar.n)


@click.command()
@click.argument("model")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Video file (.mp4, .mkv, .mov, .webm) or a folder for PNG frames.")
@click.option("--task", help="Task, when MODEL is a checkpoint with a non-official name.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="Official .pth for eager PyTorch, when MODEL is a task name.")
@click.option("--random-weights", is_flag=True, help="Eager PyTorch with random weights (tests and demos only).")
@click.option("--sigma", type=float, help="Noise level (0-255 scale), denoising only.")
@click.option("--window", type=int, help="Frames per temporal window [task's official value; 100 where the "
                                         "official script takes the whole video]; 0 = whole video.")
@click.option("--window-overlap", type=int, help="Frames shared by neighbouring windows [2].")
@click.option("--tile", type=int, help="Spatial tile, eager only (exports fix it) [task's official value].")
@click.option("--tile-overlap", type=int, help="Pixels shared by neighbouring tiles [20].")
@click.option("--batch", type=int, help="Tiles per call, eager only (exports fix it) [1].")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads [all cores].")
@click.option("--codec", help="Video codec [libx264 for .mp4/.mkv/.mov, libvpx-vp9 for .webm].")
@click.option("--crf", type=int, help="Quality for lossy codecs (lower is better) [codec default].")
@click.option("--lossless", is_flag=True, help="Lossless video output.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--allow-unvalidated", is_flag=True, help="Serve an export without a passing validation record.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(model, source, output, task, checkpoint, random_weights, sigma, window, window_overlap, tile, tile_overlap,
         batch, device, threads, codec, crf, lossless, overwrite, allow_unvalidated, quiet):
    """Restore SOURCE (video file or folder of frames) with MODEL: an export directory (ONNX
    Runtime), an official checkpoint or a task name (PyTorch)."""
    try:
        backend = load_backend(model, task=task, checkpoint=checkpoint, random_weights=random_weights,
                               device=device, threads=threads, allow_unvalidated=allow_unvalidated)
        if allow_unvalidated:
            click.secho("warning: --allow-unvalidated: this model's outputs have not been checked against "
                        "eager PyTorch", fg="yellow", err=True)
        if backend.name == "pytorch" and random_weights:
            click.secho("warning: random weights: the output is not a restoration (demo/test mode)", fg="yellow",
                        err=True)
        show = not quiet and sys.stderr.isatty()
        with tqdm(desc="restoring", unit="frame", disable=not show, dynamic_ncols=True) as bar:
            summary = restore_video(backend, source, output, sigma=sigma, window=window,
                                    window_overlap=window_overlap, tile=tile, tile_overlap=tile_overlap,
                                    batch=batch, overwrite=overwrite, lossless=lossless, crf=crf, codec=codec,
                                    progress=lambda done, total: advance(bar, done, total))
    except (VideoInputError, ArtifactError, CheckpointError, ValueError, FileExistsError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None
    if summary.conversion:
        click.echo(f"input converted: {summary.conversion}", err=True)
    if not quiet:
        click.echo(f"{summary.frames} frames {summary.input_size[0]}x{summary.input_size[1]} -> "
                   f"{summary.output_size[0]}x{summary.output_size[1]} in {summary.seconds:.1f} s "
                   f"({summary.fps:.2f} fps, {summary.backend}) -> {summary.output}")
