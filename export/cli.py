"""``rvrt-export``: ONNX export of the stages (and TensorRT engines where TensorRT exists)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from rvrt import build_model, get_task


@click.group()
def main():
    """Export RVRT stage graphs for fast inference."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    project_log = logging.getLogger("rvrt_export")
    project_log.addHandler(handler)
    project_log.setLevel(logging.INFO)


@main.command("onnx")
@click.option("--task", required=True, help="Official checkpoint id or short name (sr, sr-vimeo, sr-bd, "
                                             "deblur-dvd, deblur-gopro, denoise).")
@click.option("--tile", type=int, required=True, help="Spatial tile in input pixels (multiple of 8).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="Official .pth file.")
@click.option("--random-weights", is_flag=True, help="No checkpoint: random weights (tests and demos only).")
@click.option("--tiny", is_flag=True, help="Tiny-width architecture (tests and demos; needs --random-weights).")
@click.option("--batch", type=int, default=1, show_default=True, help="Tiles per call (the graphs' batch size).")
@click.option("--opset", type=int, default=20, show_default=True, help="ONNX default-domain opset.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
def export_onnx_command(task, tile, checkpoint, random_weights, tiny, batch, opset, out_dir):
    """One ONNX graph per stage + manifest.json, each validated against eager PyTorch."""
    from .onnx_export import export_onnx

    if checkpoint and random_weights:
        raise click.UsageError("give either --checkpoint or --random-weights, not both")
    if tiny and not random_weights:
        raise click.UsageError("--tiny only goes with --random-weights (no official checkpoint has that size)")
    if not checkpoint and not random_weights:
        raise click.UsageError(f"no weights: pass --checkpoint {get_task(task).id}.pth, or --random-weights "
                               f"for a test/demo export")
    spec = get_task(task)
    try:
        model = build_model(spec.id, checkpoint, random_weights=random_weights,
                            config=spec.config.tiny() if tiny else None)
        start = time.perf_counter()
        manifest = export_onnx(model, spec, tile, out_dir, batch=batch, opset=opset, checkpoint=checkpoint)
    except (ValueError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    total = sum(stage["bytes"] for stage in manifest["stages"].values())
    worst = max(stage["max_abs"] for stage in manifest["validation"]["stages"].values())
    click.echo(f"exported {len(manifest['stages'])} stage graphs ({total / 1e6:.1f} MB) to {out_dir} in "
               f"{time.perf_counter() - start:.0f} s; largest error vs eager {worst:.2e}")
