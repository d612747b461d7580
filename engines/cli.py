"""``rvrt-run MODEL INPUT -o OUTPUT``: restore a video with any backend."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from rvrt import window_spans

from .backends import known_task
from .cache import ArtefactCache
from .extras import require_extra
from .frontend import TILING_OPTIONS, Prepared, check_request, prepare
from .manifest import check_files, read_manifest
from .options import (ENCODING_OPTIONS, USER_ERRORS, UserError, encoding_options, memory_option, model_options,
                      parse_time, precision_of)
from .progress import ProgressDisplay, log_to_stderr
from .restore import open_source, output_writer, restore_video
from .scenes import OFF, cut_rule, describe_cuts
from .signals import stopped_by_signals
from .video import check_output_path
from .wording import count_of


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
              help="Memory to stay within, e.g. 1.5G, 3GB or 800M (powers of 1024) [60% of free RAM; of the "
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
@click.option("--dry-run", is_flag=True, help="Show the plan (tiling, memory estimate, what a first run would "
                                              "export) and stop: nothing is loaded, exported or written.")
@click.option("--quiet", is_flag=True, help="No progress.")
def main(model, source, output, **options):
    """Restore SOURCE (video file, folder of frames, or - for YUV4MPEG2 on standard input) with
    MODEL: an export directory (ONNX Runtime, TensorRT), an official checkpoint or a task name.

    Exit status: 0 done, 1 the work failed or this machine lacks something (a CUDA GPU,
    TensorRT), 2 bad input, 128 + N when stopped by signal N (130 for Ctrl-C)."""
    if not options["quiet"]:
        show_build_messages()
    # Frames streamed to standard output cannot be taken back; a file or folder is never left half-written.
    aftermath = "the output stream ends here, incomplete" if output == "-" else "nothing was written"
    tiling = {name: options.pop(name) for name in TILING_OPTIONS}
    encoding = {name: options.pop(name) for name in ENCODING_OPTIONS}
    bit_depth = options.pop("bit_depth")
    encoding["bit_depth"] = int(bit_depth) if bit_depth else None
    try:
        with stopped_by_signals("rvrt-run", aftermath):
            run(model, source, output, tiling=tiling, encoding=encoding, start=parse_time(options.pop("start_time")),
                frames=options.pop("frame_limit"), **options)
    except USER_ERRORS as err:
        raise UserError(str(err)) from None
    except (RuntimeError, OSError) as err:
        raise click.ClickException(str(err)) from None


def show_build_messages() -> None:
    """A first use of --runtime exports (minutes): its progress goes to stderr, line by line."""
    log_to_stderr("rvrt_engines.cache", "rvrt_engines.runtimes", "rvrt_export")


def run(model, source, output, *, task, checkpoint, random_weights, runtime, precision=None, fp16=False, sigma, tiling,
        device, threads, memory=None, start, frames, fps, encoding, overwrite, allow_unvalidated, verify, ray, workers,
        quiet, dry_run=False, scene_cuts="auto"):
    check_request(model, task=task, sigma=sigma, tile=tiling["tile"])
    if workers is not None and ray is None:
        raise ValueError("--workers sets the number of Ray workers: it needs --ray (local, auto or an address)")
    if ray is not None:
        require_extra("cluster", "--ray")
    check_output_path(output, inputs=(source,), overwrite=overwrite)
    frame_source = open_source(source, fps, start, frames)
    # A cut list that cannot be read is refused before the model loads (an export takes minutes).
    cut_rule(scene_cuts, frame_source)
    known = known_task(model, task)
    if known is not None:
        # Every output choice is checked by opening the real encoder before the model is loaded.
        output_writer(frame_source, output, known.config.upscale, overwrite=overwrite, **encoding).validate()
    if verify and Path(model).is_dir():
        check_files(read_manifest(model), model, hashes=True)
    prepared = prepare(model, frame=(frame_source.height, frame_source.width), frames=frame_source.frame_count,
                       task=task, checkpoint=checkpoint, random_weights=random_weights, runtime=runtime,
                       precision=precision_of(precision, fp16), device=device, threads=threads, sigma=sigma,
                       memory=memory, allow_unvalidated=allow_unvalidated,
                       cache=ArtefactCache(read_only=True) if dry_run else None, **tiling)
    if dry_run:
        tell_dry_run(prepared, frame_source)
        return
    for message in prepared.warnings:
        click.secho(f"warning: {message}", fg="yellow", err=True)
    with contextlib.ExitStack() as stack:
        windows = None
        if ray is not None:
            from rvrt_cluster import RayWindows
            # The workers open the model where they run; the driver only holds its description.
            windows = stack.enter_context(RayWindows(prepared.description, address=ray, workers=workers,
                                                     threads=threads))
        restore_with(prepared, windows, frame_source, output, sigma=sigma, encoding=encoding, overwrite=overwrite,
                     quiet=quiet, scene_cuts=scene_cuts)


def tell_dry_run(prepared: Prepared, frame_source) -> None:
    """What a run would do, on standard output: the input, the tiling and memory estimate, the runtime, and
    what it would make first."""
    count = frame_source.frame_count
    click.echo(f"input: {frame_source.width}x{frame_source.height}, "
               f"{count_of(count, 'frame') if count is not None else 'frames until the stream ends'}")
    for message in prepared.plan_warnings + prepared.warnings:
        click.echo(f"warning: {message}")
    for line in prepared.lines:
        click.echo(line)
    if prepared.missing:
        click.echo(f"first: {prepared.missing}: minutes of work, once (the export is cached for later runs)")
        return
    description = prepared.description
    served = description.directory or "the network itself (no export)"
    click.echo(f"runtime: {description.runtime.label} {description.precision}, serving {served}")
    click.echo(f"windows: {count_of(len(window_spans(count, prepared.tiling)), 'window')} of up to "
               f"{prepared.tiling.window or count} frames" if count else "windows: as the stream comes")


def tell_plan(prepared: Prepared, quiet: bool) -> None:
    """The tiling chosen on stderr (not with --quiet), and a warning where it is over the budget (always)."""
    for message in prepared.plan_warnings:
        click.secho(f"warning: {message}", fg="yellow", err=True)
    if not quiet:
        for line in prepared.lines:
            click.echo(line, err=True)


def told_first(progress, tell):
    """``progress``, calling ``tell()`` once before its first report."""
    pending = [tell]

    def report(status):
        while pending:
            pending.pop()()
        progress(status)
    return report


def restore_with(prepared: Prepared, windows, frame_source, output, *, sigma, encoding, overwrite, quiet, scene_cuts):
    display = ProgressDisplay(enabled=not quiet)
    # The tiling is told with the first progress report, which comes once the model runs: a run that cannot
    # start (a damaged graph is found when its session opens) ends with its one error line only.
    progress = told_first(display, lambda: tell_plan(prepared, quiet))
    try:
        summary = restore_video(prepared.description, frame_source, output, sigma=sigma, overwrite=overwrite,
                                progress=progress, windows=windows, notes=lambda message: click.echo(message, err=True),
                                scene_cuts=scene_cuts, **prepared.options, **encoding)
    finally:
        display.close()
    if not quiet:
        if scene_cuts != OFF:
            click.echo(describe_cuts(summary.cuts), err=True)
        click.echo(f"{count_of(summary.frames, 'frame')} {summary.input_size[0]}x{summary.input_size[1]} -> "
                   f"{summary.output_size[0]}x{summary.output_size[1]} ({summary.bit_depth}-bit) in "
                   f"{summary.seconds:.1f} s ({summary.fps:.2f} fps, {summary.backend}) -> {summary.output}", err=True)
