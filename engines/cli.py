"""``rvrt-run MODEL INPUT -o OUTPUT``: restore a video with any backend."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import click

from rvrt import CheckpointError
from rvrt_engines.manifest import ArtifactError, check_files, read_manifest

from .backends import known_task, load_backend
from .extras import require_extra
from .memory_budget import Budget, parse_memory
from .progress import ProgressDisplay, log_to_stderr
from .restore import check_sigma, open_source, output_writer, restore_video
from .signals import stopped_by_signals
from .tile_option import TILE, check_tile_fits
from .video import VideoInputError, VideoOutputError, check_output_path
from .wording import count_of

USER_ERRORS = (VideoInputError, VideoOutputError, ArtifactError, CheckpointError, ValueError, FileExistsError)


class UserError(click.ClickException):
    """One line on stderr, exit status 2: the user asked for something that cannot work (README,
    "Exit status": RuntimeError and OSError, the work failed or the machine lacks something, exit 1)."""

    exit_code = 2


def parse_time(text: str | None) -> float | None:
    """Seconds (``12.5``) or ``[HH:]MM:SS[.ms]``, as FFmpeg's -ss takes them."""
    if text is None:
        return None
    match = re.fullmatch(r"(?:(\d+):)?(?:(\d+):)?(\d+(?:\.\d*)?)", text.strip())
    if not match:
        raise UserError(f"--start {text}: expected seconds (12.5) or HH:MM:SS[.ms] (00:01:02.5)")
    parts = [float(p) for p in match.groups() if p is not None]
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds


def memory_option(ctx, param, value) -> int | None:
    """--memory SIZE in bytes, read with the command line (one line, exit 2, before any work)."""
    if value is None:
        return None
    try:
        return parse_memory(value)
    except ValueError as err:
        raise UserError(str(err)) from None


def option_group(*options):
    """One decorator adding ``options`` to a command, in the order listed (as --help shows them)."""
    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


# What chooses and shapes the model, and how outputs are encoded: the same for rvrt-run and rvrt-batch.
model_options = option_group(
    click.option("--task", help="Task, when MODEL is a checkpoint with a non-official name."),
    click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
                 help="Official .pth for eager PyTorch, when MODEL is a task name."),
    click.option("--random-weights", is_flag=True, help="Random weights (tests and demos only)."),
    click.option("--runtime", type=click.Choice(["onnxruntime", "tensorrt", "pytorch"]),
                 help="Run MODEL (a task name or checkpoint) on this runtime; exports are made and cached on first "
                      "use."),
    click.option("--fp16", is_flag=True, help="float16 graphs/engines (with --runtime)."),
    click.option("--sigma", type=float, help="Noise level (0-255 scale), denoising only."),
    click.option("--window", type=int, help="Frames per temporal window [rvrt-run: chosen within --memory, up to "
                                            "the task's official value; rvrt-batch: the official value; 100 where "
                                            "the official script takes the whole video]; 0 = whole video."),
    click.option("--window-overlap", type=int, help="Frames shared by neighbouring windows [2]."),
    click.option("--tile", type=TILE, help="Spatial tile in input px: 64 (square) or HEIGHTxWIDTH, e.g. 144x176; "
                                           "multiples of 8, at least 40 for SR and 136 otherwise [rvrt-run: the "
                                           "whole frame, or the tile computing the fewest pixels within --memory; "
                                           "rvrt-batch: the task's official value]: eager PyTorch takes any such "
                                           "tile; with --runtime an export is made (and cached) for it; an export "
                                           "directory serves the tile it was exported for."),
    click.option("--tile-overlap", type=int, help="Pixels shared by neighbouring tiles [20]."),
    click.option("--batch", type=int, help="Tiles per call [1]: eager PyTorch takes any; with --runtime an export "
                                           "is made (and cached) for it; an export directory serves its own."),
)
encoding_options = option_group(
    click.option("--codec", help="Video codec [libx264; libvpx-vp9 for .webm; lossless: libx264rgb, ffv1]."),
    click.option("--crf", type=int, help="Quality for lossy codecs (lower is better) [18 for H.264, 30 for VP9]."),
    click.option("--lossless", is_flag=True, help="Lossless RGB video output."),
    click.option("--bit-depth", type=click.Choice(["8", "10", "16"]),
                 help="Output bits per component [8 for 8-bit input; 10 (video) or 16 (PNG) for deeper input]."),
    click.option("--pix-fmt", help="Encoder pixel format, e.g. yuv444p [yuv420p / yuv420p10le]."),
)


@click.command()
@click.argument("model")
@click.argument("source")
@click.option("-o", "--output", required=True,
              help="Video file (.mp4, .mkv, .mov, .m4v, .webm, .avi), a folder for PNG frames, or - for "
                   "YUV4MPEG2 on standard output.")
@model_options
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads [all cores].")
@click.option("--memory", callback=memory_option,
              help="Memory to stay within, e.g. 1.5G, 3GB or 800M (powers of 1024) [60%% of free RAM; of the "
                   "GPU's free memory for --device cuda and TensorRT]: a task or checkpoint run picks the tile "
                   "(the whole frame when it fits, else the shape computing the fewest pixels) and the window (up "
                   "to the official one) within it; an explicit --tile or --window is kept.")
@click.option("--start", "start_time", help="Restore from this time: seconds or HH:MM:SS[.ms] (audio cut to match).")
@click.option("--frames", "frame_limit", type=int, help="Restore at most this many frames.")
@click.option("--fps", type=float, help="Frame rate of a folder of frames [25].")
@encoding_options
@click.option("--overwrite", is_flag=True, help="Replace an existing output file, or the frames of a frame folder "
                                                "this program wrote (never other files).")
@click.option("--allow-unvalidated", is_flag=True, help="Serve an export without a passing validation record.")
@click.option("--verify", is_flag=True, help="Check every file of an export or engine directory against the sha256 "
                                             "its manifest records before loading (reads every byte; file sizes are "
                                             "always checked, and cached exports are fully checked on every use).")
@click.option("--ray", help="Restore windows on a Ray cluster: local, auto or an address.")
@click.option("--workers", type=int, help="Ray workers [one per GPU for GPU backends, else one per node].")
@click.option("--quiet", is_flag=True, help="No progress.")
def main(model, source, output, task, checkpoint, random_weights, runtime, fp16, sigma, window, window_overlap, tile,
         tile_overlap, batch, device, threads, memory, start_time, frame_limit, fps, codec, crf, lossless, bit_depth,
         pix_fmt, overwrite, allow_unvalidated, verify, ray, workers, quiet):
    """Restore SOURCE (video file, folder of frames, or - for YUV4MPEG2 on standard input) with
    MODEL: an export directory (ONNX Runtime, TensorRT), an official checkpoint or a task name.

    Exit status: 0 done, 1 the work failed or this machine lacks something (a CUDA GPU,
    TensorRT), 2 bad input, 128 + N when stopped by signal N (130 for Ctrl-C)."""
    if not quiet:
        show_build_messages()
    # Frames streamed to standard output cannot be taken back; a file or folder is never left half-written.
    aftermath = "the output stream ends here, incomplete" if output == "-" else "nothing was written"
    try:
        with stopped_by_signals("rvrt-run", aftermath):
            run(model, source, output, task=task, checkpoint=checkpoint, random_weights=random_weights,
                runtime=runtime, fp16=fp16, sigma=sigma, tiling=dict(window=window, window_overlap=window_overlap,
                                                                      tile=tile, tile_overlap=tile_overlap,
                                                                      batch=batch),
                device=device, threads=threads, memory=memory, start=parse_time(start_time), frames=frame_limit,
                fps=fps,
                encoding=dict(codec=codec, crf=crf, lossless=lossless, pix_fmt=pix_fmt,
                              bit_depth=int(bit_depth) if bit_depth else None),
                overwrite=overwrite, allow_unvalidated=allow_unvalidated, verify=verify, ray=ray, workers=workers,
                quiet=quiet)
    except USER_ERRORS as err:
        raise UserError(str(err)) from None
    except (RuntimeError, OSError) as err:
        raise click.ClickException(str(err)) from None


def show_build_messages() -> None:
    """A first use of --runtime exports (minutes): its progress goes to stderr, line by line."""
    log_to_stderr("rvrt_engines.cache", "rvrt_export")


def run(model, source, output, *, task, checkpoint, random_weights, runtime, fp16, sigma, tiling, device, threads,
        memory=None, start, frames, fps, encoding, overwrite, allow_unvalidated, verify, ray, workers, quiet):
    known = known_task(model, task)
    if known is not None:
        check_sigma(known, sigma)
        if tiling["tile"] is not None:
            check_tile_fits(tiling["tile"], known, known.config)
    if sigma is not None and not 0 <= sigma <= 255:
        raise ValueError(f"--sigma {sigma:g}: expected a noise level from 0 to 255 (the 8-bit scale)")
    if workers is not None and ray is None:
        raise ValueError("--workers sets the number of Ray workers: it needs --ray (local, auto or an address)")
    check_output_path(output, inputs=(source,), overwrite=overwrite)
    frame_source = open_source(source, fps, start, frames)
    if known is not None:
        # Every output choice is checked by opening the real encoder before the model is loaded.
        output_writer(frame_source, output, known.config.upscale, overwrite=overwrite, **encoding).validate()
    if verify and Path(model).is_dir():
        check_files(read_manifest(model), model, hashes=True)
    budget = Budget(memory, runtime or "pytorch", device)
    if known is not None and not Path(model).is_dir():
        # The tile and window are chosen before loading: an exported runtime is exported for that tile.
        tiling.update(budget.plan(known, known.config, frame_source.height, frame_source.width,
                                  frame_source.frame_count, tiling).options())
    load_args = dict(model=model, task=task, checkpoint=checkpoint, random_weights=random_weights, device=device,
                     threads=threads, allow_unvalidated=allow_unvalidated)
    if runtime is not None:
        # A task or checkpoint on an exported runtime is exported for the tile and batch asked for.
        load_args.update(runtime=runtime, tile=tiling["tile"], batch=tiling["batch"])
    if fp16:
        load_args["fp16"] = True
    with contextlib.ExitStack() as stack:
        windows = None
        if ray is not None:
            require_extra("cluster", "--ray")
            from rvrt_cluster import RayWindows
            # The workers load the model; the driver only needs its description.
            windows = stack.enter_context(RayWindows(load_args, address=ray, workers=workers, threads=threads))
            backend = windows.backend
        else:
            backend = load_backend(**load_args)
        if Path(model).is_dir():
            tiling["window"] = budget.plan(backend.task, backend.config, frame_source.height, frame_source.width,
                                           frame_source.frame_count, tiling, export=backend).window
        restore_with(backend, windows, frame_source, output, sigma=sigma, tiling=tiling, encoding=encoding,
                     overwrite=overwrite, allow_unvalidated=allow_unvalidated, random_weights=random_weights,
                     quiet=quiet, budget=budget)


def tell_budget(budget: Budget, quiet: bool) -> None:
    """The tiling chosen on stderr (not with --quiet), and a warning where it is over the budget (always)."""
    for message in budget.warnings:
        click.secho(f"warning: {message}", fg="yellow", err=True)
    if not quiet:
        for line in budget.lines:
            click.echo(line, err=True)


def told_first(progress, tell):
    """``progress``, calling ``tell()`` once before its first report."""
    pending = [tell]

    def report(status):
        while pending:
            pending.pop()()
        progress(status)
    return report


def restore_with(backend, windows, frame_source, output, *, sigma, tiling, encoding, overwrite, allow_unvalidated,
                 random_weights, quiet, budget: Budget):
    if allow_unvalidated:
        click.secho("warning: --allow-unvalidated: this model's outputs have not been checked against "
                    "eager PyTorch", fg="yellow", err=True)
    if getattr(backend, "random_weights", False) or (backend.name == "pytorch" and random_weights):
        click.secho("warning: random weights: the output is not a restoration (demo/test mode)", fg="yellow",
                    err=True)
    display = ProgressDisplay(enabled=not quiet)
    # The tiling is told with the first progress report, which comes once the model runs: a run that cannot
    # start (a damaged graph is found when its session opens) ends with its one error line only.
    progress = told_first(display, lambda: tell_budget(budget, quiet))
    try:
        summary = restore_video(backend, frame_source, output, sigma=sigma, overwrite=overwrite, progress=progress,
                                windows=windows, notes=lambda message: click.echo(message, err=True),
                                **tiling, **encoding)
    finally:
        display.close()
    if not quiet:
        click.echo(f"{count_of(summary.frames, 'frame')} {summary.input_size[0]}x{summary.input_size[1]} -> "
                   f"{summary.output_size[0]}x{summary.output_size[1]} ({summary.bit_depth}-bit) in "
                   f"{summary.seconds:.1f} s ({summary.fps:.2f} fps, {summary.backend}) -> {summary.output}", err=True)
