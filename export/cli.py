"""``rvrt-export``: ONNX export of the stages (and TensorRT engines where TensorRT exists).

Bad input is found before any export work and reported as one line saying what was wrong and
what is expected, in terms of the command's flags, with exit status 2 (:class:`UserError`).
Ctrl-C, SIGTERM and SIGHUP remove the folder being assembled and exit with 128 + the signal's
number (:class:`Command`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
from click.exceptions import NoArgsIsHelpError

from rvrt import CheckpointError, Task, get_task
from rvrt_engines.extras import MissingExtra, require_extra
from rvrt_engines.progress import log_to_stderr
from rvrt_engines.signals import stopped_by_signals
from rvrt_engines.options import TILE, check_tile_fits
from rvrt.config import TASKS
from rvrt.tiling import tile_name

from rvrt_engines.manifest import ArtifactError, check_files, read_manifest


class UserError(click.ClickException):
    """Bad input: one line saying what was wrong and what is expected; exit status 2."""

    exit_code = 2


def one_line(error: click.UsageError) -> UserError:
    command = error.ctx.command_path if error.ctx else "the command"
    return UserError(f"{error.format_message()} (see '{command} --help')")


class OneLineUsage:
    """Click's own usage errors (a missing option, a value of the wrong type) as one
    :class:`UserError` line pointing to ``--help``, instead of the usage text."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except NoArgsIsHelpError:
            raise
        except click.UsageError as error:
            raise one_line(error) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except click.UsageError as error:
            raise one_line(error) from None


class Command(OneLineUsage, click.Command):
    """A command whose output folder is assembled under a temporary name: a signal unwinds through
    its removal and the command exits with 128 + the signal's number (130 for Ctrl-C)."""

    def invoke(self, ctx):
        with stopped_by_signals(ctx.command_path, "nothing was written"):
            return super().invoke(ctx)


class Group(OneLineUsage, click.Group):
    command_class = Command


def task_named(name: str) -> Task:
    try:
        return get_task(name)
    except ValueError:
        known = ", ".join(task.short for task in TASKS.values())
        raise UserError(f"--task {name!r} is not a task: expected one of {known} (or an official checkpoint "
                        f"id)") from None


def check_output(out_dir: Path) -> None:
    """``-o`` must name a new (or empty) folder that can be created: nothing is overwritten."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"-o {out_dir} is a file: expected a new folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise UserError(f"-o {out_dir} exists and is not empty: choose a new folder (nothing is overwritten)")
    # The folder is assembled beside its final name, so its parent must be writable.
    parent = out_dir.absolute().parent
    existing = next(path for path in (parent, *parent.parents) if path.exists())
    if not existing.is_dir():
        raise UserError(f"-o {out_dir} cannot be created: {existing} is a file, expected a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"-o {out_dir} cannot be created: no permission to write in {existing}")


def export_manifest(directory: Path, *, float32: bool) -> dict:
    """The manifest of a validated ONNX export given as a command's argument (float32 only, or any)."""
    try:
        manifest = read_manifest(directory)
    except ArtifactError as err:
        raise UserError(str(err)) from None
    if "engine" in manifest:
        raise UserError(f"{directory} holds TensorRT engines: pass the ONNX export made by 'rvrt-export onnx'")
    if float32 and manifest["dtype"] != "float32":
        raise UserError(f"{directory} holds {manifest['dtype']} graphs: pass the float32 export made by "
                        f"'rvrt-export onnx'")
    if not (manifest.get("validation") or {}).get("passed"):
        raise UserError(f"{directory} has no passing validation record: export it again with 'rvrt-export onnx'")
    try:
        # Every graph is read in full by the conversion anyway: a damaged one is named before any work.
        check_files(manifest, directory, hashes=True)
    except ArtifactError as err:
        raise UserError(str(err)) from None
    return manifest


def require_export_extra(action: str) -> None:
    try:
        require_extra("export", action)
    except MissingExtra as err:
        raise UserError(str(err)) from None


@click.group(cls=Group)
def main():
    """Export RVRT stage graphs for fast inference."""
    require_export_extra("exporting")
    log_to_stderr("rvrt_export")


@main.command("onnx")
@click.option("--task", required=True, help="Official checkpoint id or short name (sr, sr-vimeo, sr-bd, "
                                             "deblur-dvd, deblur-gopro, denoise).")
@click.option("--tile", type=TILE, help="Spatial tile in input px: 64 (square) or HEIGHTxWIDTH, e.g. 144x176; "
                                       "multiples of 8, at least SpyNet's minimum (40 for SR, 136 otherwise) "
                                       "[the task's official tile].")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="Official .pth file.")
@click.option("--random-weights", is_flag=True, help="No checkpoint: random weights (tests and demos only).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random-weights (recorded).")
@click.option("--tiny", is_flag=True, help="Tiny-width architecture (tests and demos; needs --random-weights).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tiles per call (the graphs' batch size).")
@click.option("--opset", type=int, default=20, show_default=True, help="ONNX default-domain opset.")
@click.option("--jobs", type=click.IntRange(min=1),
              help="Processes exporting stages side by side, 1.2 GB of memory each for full-size SR at tile 64 "
                   "[one per core, at most 4]; the graphs are the same whatever their number.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="New folder for the graphs [TASK-tileTILE-fp32, e.g. sr-tile128-fp32, sr-tile144x176-fp32].")
def export_onnx_command(task, tile, checkpoint, random_weights, seed, tiny, batch, opset, jobs, out_dir):
    """One ONNX graph per stage + manifest.json, each validated against eager PyTorch."""
    from .onnx_export import export_onnx

    spec = task_named(task)
    config = spec.config.tiny() if tiny else spec.config
    tile = spec.tile[1] if tile is None else tile
    try:
        check_tile_fits(tile, spec, config)
    except ValueError as err:
        raise UserError(str(err)) from None
    if checkpoint and random_weights:
        raise UserError("give either --checkpoint or --random-weights, not both")
    if tiny and not random_weights:
        raise UserError("--tiny only goes with --random-weights (no official checkpoint has that size)")
    if not checkpoint and not random_weights:
        raise UserError(f"no weights: pass --checkpoint {spec.id}.pth, or --random-weights for a test/demo export")
    out_dir = out_dir or Path(f"{spec.short}{'-tiny' if tiny else ''}-tile{tile_name(tile)}-fp32")
    check_output(out_dir)
    from rvrt import build_model

    try:
        model = build_model(spec.id, checkpoint, random_weights=random_weights, config=config,
                            seed=seed if random_weights else None)
    except CheckpointError as err:
        raise UserError(str(err)) from None
    start = time.perf_counter()
    try:
        manifest = export_onnx(model, spec, tile, out_dir, batch=batch, opset=opset, checkpoint=checkpoint,
                               random_seed=seed if random_weights else None, jobs=jobs)
    except (ValueError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    total = sum(stage["bytes"] for stage in manifest["stages"].values())
    worst = max(stage["max_abs"] for stage in manifest["validation"]["stages"].values())
    click.echo(f"exported {len(manifest['stages'])} stage graphs ({total / 1e6:.1f} MB) to {out_dir} in "
               f"{time.perf_counter() - start:.0f} s; largest error vs eager {worst:.2e}. "
               f"Run it: rvrt-run {out_dir} VIDEO -o OUTPUT")


def reference_for(onnx_dir: Path, checkpoint: Path | None, random_weights: bool, manifest: dict):
    """The eager model an export (``manifest``) was made from, with the weights asked for explicitly."""
    from .reference import reference_model

    record = manifest["checkpoint"]
    if checkpoint and random_weights:
        raise UserError("give either --checkpoint or --random-weights, not both")
    if record.get("random_weights") and not random_weights:
        raise UserError(f"{onnx_dir} was exported from random weights: pass --random-weights to check it "
                        f"against the same random model (seed {record.get('seed')})")
    if random_weights and not record.get("random_weights"):
        raise UserError(f"{onnx_dir} was exported from {record['file']}: pass --checkpoint")
    try:
        return reference_model(manifest, onnx_dir, checkpoint)
    except (ArtifactError, CheckpointError) as err:
        raise UserError(str(err)) from None


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

    manifest = export_manifest(onnx_dir, float32=True)
    check_output(out_dir)
    model = reference_for(onnx_dir, checkpoint, random_weights, manifest)
    try:
        manifest = export_fp16(model, onnx_dir, out_dir)
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
@click.option("--workspace", "workspace_gb", type=click.FloatRange(min=0, min_open=True),
              help="Builder workspace limit in GB [TensorRT's default].")
@with_reference_options
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="New folder for the engines (e.g. sr.plan).")
def export_trt_command(onnx_dir, fp16, plugin, timing_cache, workspace_gb, checkpoint, random_weights, out_dir):
    """One TensorRT engine per stage (Polygraphy), each validated against eager PyTorch."""
    from rvrt_engines.runtimes.tensorrt import tensorrt_unavailable
    from rvrt_plugins.build import PluginBuildError

    from .trt_build import build_engines

    manifest = export_manifest(onnx_dir, float32=False)
    check_output(out_dir)
    reason = tensorrt_unavailable()
    if reason:
        raise click.ClickException(f"cannot build TensorRT engines here: {reason}. The ONNX export in {onnx_dir} "
                                   f"runs on ONNX Runtime meanwhile ('rvrt-run {onnx_dir} VIDEO'), and "
                                   f"'rvrt-export fp16' makes and checks the float16 graphs on this machine.")
    model = reference_for(onnx_dir, checkpoint, random_weights, manifest)
    start = time.perf_counter()
    try:
        manifest = build_engines(model, onnx_dir, out_dir, fp16=fp16, plugin=plugin, timing_cache=timing_cache,
                                 workspace_gb=workspace_gb)
    except (ValueError, FileExistsError, PluginBuildError) as err:
        raise click.ClickException(str(err)) from None
    engine = manifest["engine"]
    click.echo(f"built {len(manifest['stages'])} {engine['precision']} engines for {engine['gpu']} (TensorRT "
               f"{engine['tensorrt']}) in {out_dir} in {time.perf_counter() - start:.0f} s, each validated. "
               f"Run them: rvrt-run {out_dir} VIDEO -o OUTPUT")
