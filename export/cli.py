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
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random-weights (recorded).")
@click.option("--tiny", is_flag=True, help="Tiny-width architecture (tests and demos; needs --random-weights).")
@click.option("--batch", type=int, default=1, show_default=True, help="Tiles per call (the graphs' batch size).")
@click.option("--opset", type=int, default=20, show_default=True, help="ONNX default-domain opset.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
def export_onnx_command(task, tile, checkpoint, random_weights, seed, tiny, batch, opset, out_dir):
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
                            config=spec.config.tiny() if tiny else None, seed=seed if random_weights else None)
        start = time.perf_counter()
        manifest = export_onnx(model, spec, tile, out_dir, batch=batch, opset=opset, checkpoint=checkpoint,
                               random_seed=seed if random_weights else None)
    except (ValueError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    total = sum(stage["bytes"] for stage in manifest["stages"].values())
    worst = max(stage["max_abs"] for stage in manifest["validation"]["stages"].values())
    click.echo(f"exported {len(manifest['stages'])} stage graphs ({total / 1e6:.1f} MB) to {out_dir} in "
               f"{time.perf_counter() - start:.0f} s; largest error vs eager {worst:.2e}")


def reference_for(onnx_dir: Path, checkpoint: Path | None, random_weights: bool):
    """The eager model an export was made from, with the weights asked for explicitly."""
    from .manifest import read_manifest
    from .reference import reference_model

    manifest = read_manifest(onnx_dir)
    if manifest["checkpoint"].get("random_weights") and not random_weights:
        raise click.UsageError(f"{onnx_dir} was exported from random weights: pass --random-weights to check it "
                               f"against the same random model (seed {manifest['checkpoint'].get('seed')})")
    if random_weights and not manifest["checkpoint"].get("random_weights"):
        raise click.UsageError(f"{onnx_dir} was exported from {manifest['checkpoint']['file']}: pass --checkpoint")
    return reference_model(manifest, onnx_dir, checkpoint)


reference_options = [
    click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
                 help="The .pth the export was made from (the eager reference)."),
    click.option("--random-weights", is_flag=True, help="The export was made from random weights (its recorded seed)."),
]


def with_reference_options(command):
    for option in reversed(reference_options):
        command = option(command)
    return command


@main.command("fp16")
@click.argument("onnx_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@with_reference_options
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
def export_fp16_command(onnx_dir, checkpoint, random_weights, out_dir):
    """Mixed-precision (float16) graphs of a float32 export, validated on ONNX Runtime CPU."""
    from .fp16 import export_fp16

    try:
        manifest = export_fp16(reference_for(onnx_dir, checkpoint, random_weights), onnx_dir, out_dir)
    except (ValueError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    records = manifest["validation"]["stages"].values()
    worst = max(r["max_abs"] / r["tolerance"] for r in records)
    click.echo(f"wrote {len(manifest['stages'])} float16 stage graphs to {out_dir}; largest error "
               f"{max(r['max_abs'] for r in records):.2e}, at most {worst:.0%} of its tolerance")


@main.command("trt")
@click.argument("onnx_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--fp16", is_flag=True, help="Build from mixed-precision graphs (made and validated first).")
@click.option("--plugin", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="GDA plugin library that registers itself when loaded [built from plugins/gda].")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="TensorRT timing cache: read if present, updated after each build.")
@click.option("--workspace", "workspace_gb", type=float, help="Builder workspace limit in GB [TensorRT's default].")
@with_reference_options
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
def export_trt_command(onnx_dir, fp16, plugin, timing_cache, workspace_gb, checkpoint, random_weights, out_dir):
    """One TensorRT engine per stage (Polygraphy), each validated against eager PyTorch."""
    from rvrt_engines.tensorrt import TensorRTUnavailable
    from rvrt_plugins.build import PluginBuildError

    from .trt_build import build_engines

    try:
        model = reference_for(onnx_dir, checkpoint, random_weights)
        start = time.perf_counter()
        manifest = build_engines(model, onnx_dir, out_dir, fp16=fp16, plugin=plugin, timing_cache=timing_cache,
                                 workspace_gb=workspace_gb)
    except TensorRTUnavailable as err:
        raise click.ClickException(f"cannot build TensorRT engines here: {err}. The ONNX export in {onnx_dir} "
                                   f"runs on ONNX Runtime meanwhile ('rvrt-run {onnx_dir} VIDEO'), and "
                                   f"'rvrt-export fp16' makes and checks the float16 graphs on this machine.") from None
    except (ValueError, FileExistsError, PluginBuildError) as err:
        raise click.ClickException(str(err)) from None
    engine = manifest["engine"]
    click.echo(f"built {len(manifest['stages'])} {engine['precision']} engines for {engine['gpu']} (TensorRT "
               f"{engine['tensorrt']}) in {out_dir} in {time.perf_counter() - start:.0f} s, each validated")
