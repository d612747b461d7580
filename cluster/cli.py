"""``rvrt-batch MODEL INPUT... -o OUT_DIR``: many videos restored by one pool of Ray workers.

One :class:`RayWindows` pool serves the whole batch: files are restored one after another,
each file's temporal windows spread over all the workers, so a single long video and many
short ones use the cluster alike and every file is written by the driver exactly as
``rvrt-run`` writes it (same frames, temporary name renamed when complete).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
from tqdm import tqdm

from rvrt_engines.cli import USER_ERRORS, UserError, encoding_options, known_task, model_options
from rvrt_engines.extras import require_extra
from rvrt_engines.progress import terminal_columns
from rvrt_engines.restore import check_sigma, open_source, output_writer, restore_video
from rvrt_engines.tile_option import check_tile_fits
from rvrt_engines.video import Terminated, VideoInputError, VideoOutputError, natural_key, signals_as_exceptions
from rvrt_engines.video.reader import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from rvrt_engines.video.writer import VIDEO_OUTPUT_SUFFIXES
from rvrt_engines.wording import count_of

if TYPE_CHECKING:
    from .windows import RayWindows


@dataclass
class Item:
    """One input of the batch and what became of it: ``state`` pending, done, failed or skipped."""

    source: Path
    output: Path
    state: str = "pending"
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    opened: object = None


def collect_inputs(inputs: tuple[Path, ...]) -> list[Path]:
    """Video files as given; a folder stands for its video files (by name, not recursive) or, when
    it holds none, for itself as a folder of frames."""
    sources = []
    for path in inputs:
        if not path.exists():
            raise UserError(f"{path}: no such file or folder; expected video files or folders of videos")
        if path.is_dir():
            videos = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES),
                            key=natural_key)
            if videos:
                sources.extend(videos)
            elif any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
                sources.append(path)
            else:
                raise UserError(f"{path}: no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) and no frames in this "
                                f"folder")
        else:
            sources.append(path)
    return sources


def output_name(source: Path, out_dir: Path, suffix: str | None) -> Path:
    """OUT_DIR/<input name> in the input's container (.mkv where it cannot be written), or a frame
    folder for a frame-folder input; ``--suffix`` chooses for every file (``png``: frame folders)."""
    if source.is_dir():
        return out_dir / (source.name + (suffix or ""))
    if suffix is None:
        suffix = source.suffix.lower() if source.suffix.lower() in VIDEO_OUTPUT_SUFFIXES else ".mkv"
    return out_dir / (source.stem + suffix)


def plan(sources: list[Path], out_dir: Path, suffix: str | None) -> list[Item]:
    items = [Item(source, output_name(source, out_dir, suffix)) for source in sources]
    seen: dict[Path, Path] = {}
    for item in items:
        if item.output in seen:
            raise UserError(f"{seen[item.output]} and {item.source} would both be written to {item.output}; "
                            f"restore them in separate runs or rename one")
        seen[item.output] = item.source
    return items


class BatchProgress:
    """One bar over the frames of every file (a tqdm bar on a terminal that reports its width, else a
    plain line every ``interval`` seconds on standard error), with the windows done over all workers."""

    def __init__(self, items: list[Item], pool: RayWindows, enabled: bool, interval: float = 10.0):
        self.items = items
        self.pool = pool
        self.total = sum(item.frames for item in items if item.state == "pending")
        self.finished = 0
        self.current = 0.0
        self.index = 0
        self.began = time.perf_counter()
        self.last = self.began
        self.bar = None
        self.label = ""
        self.enabled = enabled
        if enabled and terminal_columns(sys.stderr) > 0:
            self.bar = tqdm(total=self.total, desc="rvrt-batch", unit="frame", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}{postfix}]")

    def start(self, position: int, count: int, item: Item) -> None:
        self.label = f"file {position}/{count} {item.source.name}"
        self.current = 0.0

    def __call__(self, status) -> None:
        self.current = status.frames_done
        self.show()

    def file_done(self, item: Item) -> None:
        self.finished += item.frames
        self.current = 0.0
        self.show(force=True)

    def show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        done = self.finished + self.current
        windows = sum(stats.windows for stats in self.pool.stats)
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix_str(f"{self.label}, {count_of(windows, 'window')}", refresh=False)
            self.bar.refresh()
            return
        now = time.perf_counter()
        if force or now - self.last >= 10.0:
            self.last = now
            rate = done / (now - self.began) if now > self.began else 0.0
            click.echo(f"rvrt-batch: {done:.0f}/{self.total} frames, {self.label}, {count_of(windows, 'window')} on "
                       f"{count_of(len(self.pool.stats), 'worker')}, {rate:.3g} fps", err=True)

    def note(self, message: str) -> None:
        """What an output cannot keep, or how an input was converted, said without breaking the bar."""
        if self.enabled:
            (self.bar.write if self.bar is not None else lambda line: click.echo(line, err=True))(
                f"{self.label}: {message}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary_lines(items: list[Item], pool: RayWindows | None, seconds: float) -> list[str]:
    lines = []
    for item in items:
        if item.state == "done":
            lines.append(f"done: {item.source} -> {item.output} ({count_of(item.frames, 'frame')}, "
                         f"{item.seconds:.1f} s)")
        elif item.state == "skipped":
            lines.append(f"skipped: {item.source}: {item.reason}")
        elif item.state == "pending":
            lines.append(f"not restored: {item.source}")
        else:
            lines.append(f"failed: {item.source}: {item.reason.removeprefix(f'{item.source}: ')}")
    counts = {state: sum(item.state == state for item in items) for state in ("done", "failed", "skipped", "pending")}
    stopped = f", {counts['pending']} not restored" if counts["pending"] else ""
    lines.append(f"{counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped{stopped} "
                 f"in {seconds:.1f} s")
    if pool is not None:
        lines.extend(pool.report())
    return lines


@click.command()
@click.argument("model")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the restored videos, one per input, named after it.")
@click.option("--suffix", type=click.Choice([*VIDEO_OUTPUT_SUFFIXES, "png"]),
              help="Output container for every file, or png for frame folders [the input's; .mkv where it cannot "
                   "be written; frame folders for frame folders].")
@click.option("--ray", "address", default="local", show_default=True,
              help="Ray cluster: local (started here, shut down at the end), auto (the one this machine joined) or "
                   "an address.")
@click.option("--workers", type=int, help="Ray workers, each loading the model once [one per GPU for GPU backends, "
                                          "else one per node].")
@click.option("--threads", type=int, help="CPU threads per worker [the CPUs shared out on a local cluster, else 1].")
@model_options
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda (one GPU per worker).")
@encoding_options
@click.option("--overwrite", is_flag=True, help="Replace existing outputs [they are skipped].")
@click.option("--allow-unvalidated", is_flag=True, help="Serve an export without a passing validation record.")
@click.option("--quiet", is_flag=True, help="No progress.")
def main(model, inputs, output_dir, suffix, address, workers, threads, task, checkpoint, random_weights, runtime,
         fp16, sigma, window, window_overlap, tile, tile_overlap, batch, device, codec, crf, lossless, bit_depth,
         pix_fmt, overwrite, allow_unvalidated, quiet):
    """Restore every INPUT (video files, folders of videos, folders of frames) with MODEL into
    OUTPUT_DIR, on a Ray cluster. Exit status 1 when any file failed."""
    began = time.perf_counter()
    items: list[Item] = []
    pool = None
    try:
        with signals_as_exceptions():
            require_extra("cluster", "rvrt-batch (its Ray workers)")
            from .windows import RayWindows

            items = plan(collect_inputs(inputs), output_dir, None if suffix is None else
                         ("" if suffix == "png" else suffix))
            encoding = dict(codec=codec, crf=crf, lossless=lossless, pix_fmt=pix_fmt,
                            bit_depth=int(bit_depth) if bit_depth else None)
            known = known_task(model, task)
            if known is not None:
                check_sigma(known, sigma)
                if tile is not None:
                    check_tile_fits(tile, known, known.config)
            if workers is not None and workers < 1:
                raise UserError(f"--workers {workers}: expected at least 1")
            if threads is not None and threads < 1:
                raise UserError(f"--threads {threads}: expected at least 1")
            probe(items, known, overwrite, encoding)
            if not any(item.state == "pending" for item in items):
                finish(items, None, began)
            load_args = dict(model=model, task=task, checkpoint=checkpoint, random_weights=random_weights,
                             device=device, allow_unvalidated=allow_unvalidated)
            if runtime is not None:
                # A task or checkpoint on an exported runtime is exported for the tile and batch asked for.
                load_args.update(runtime=runtime, tile=tile, batch=batch)
            if fp16:
                load_args["fp16"] = True
            pool = RayWindows(load_args, address=address, workers=workers, threads=threads)
            with pool:
                warn(pool, allow_unvalidated)
                restore_all(items, pool, quiet, dict(sigma=sigma, window=window, window_overlap=window_overlap,
                                                     tile=tile, tile_overlap=tile_overlap, batch=batch,
                                                     overwrite=overwrite, **encoding))
    except (Terminated, KeyboardInterrupt) as stop:
        for line in summary_lines(items, pool, time.perf_counter() - began):
            click.echo(line, err=True)
        click.echo(f"rvrt-batch: {str(stop) or 'interrupted (Ctrl-C)'}; the file in progress was not written", err=True)
        sys.exit(getattr(stop, "exit_status", 130))
    except USER_ERRORS as err:
        raise UserError(str(err)) from None
    except (RuntimeError, OSError) as err:
        # The machines lack something (no GPU in the cluster, no TensorRT on a worker) or the
        # workers could not start: one line, exit status 1.
        raise click.ClickException(str(err)) from None
    finish(items, pool, began)


def probe(items: list[Item], known, overwrite: bool, encoding: dict) -> None:
    """Skip existing outputs, open every input (unreadable ones fail here, before any work) and check
    the output encoder where the task is known."""
    for item in items:
        if item.output.exists() and not overwrite:
            item.state, item.reason = "skipped", f"{item.output} exists (--overwrite replaces it)"
            continue
        try:
            item.opened = open_source(item.source)
        except VideoInputError as err:
            item.state, item.reason = "failed", str(err)
            continue
        item.frames = item.opened.frame_count or 0
        if known is not None:
            try:
                output_writer(item.opened, item.output, known.config.upscale, overwrite=overwrite,
                              **encoding).validate()
            except VideoInputError as err:
                item.state, item.reason = "failed", str(err)
            except VideoOutputError as err:
                raise UserError(f"{item.source}: {err}") from None


def warn(pool: RayWindows, allow_unvalidated: bool) -> None:
    if allow_unvalidated:
        click.secho("warning: --allow-unvalidated: this model's outputs have not been checked against eager PyTorch",
                    fg="yellow", err=True)
    if pool.backend.random_weights:
        click.secho("warning: random weights: the outputs are not restorations (demo/test mode)", fg="yellow",
                    err=True)


def restore_all(items: list[Item], pool: RayWindows, quiet: bool, options: dict) -> None:
    """Each pending file in turn over the whole pool; a file that fails is recorded and the next one
    goes on, unless the options themselves cannot work (exit 2) or every worker is lost."""
    from .windows import WindowFailed

    pending = [item for item in items if item.state == "pending"]
    progress = BatchProgress(items, pool, enabled=not quiet)
    try:
        for position, item in enumerate(pending, 1):
            progress.start(position, len(pending), item)
            try:
                summary = restore_video(pool.backend, item.opened, item.output, windows=pool, progress=progress,
                                        notes=progress.note, **options)
            except (VideoInputError, VideoOutputError, WindowFailed, FileExistsError, OSError) as err:
                item.state, item.reason = "failed", str(err)
                continue
            except RuntimeError as err:
                for rest in pending[position - 1:]:
                    rest.state, rest.reason = "failed", f"not restored: {err}"
                return
            item.state, item.frames, item.seconds = "done", summary.frames, summary.seconds
            progress.file_done(item)
    finally:
        progress.close()


def finish(items: list[Item], pool: RayWindows | None, began: float) -> None:
    for line in summary_lines(items, pool, time.perf_counter() - began):
        click.echo(line)
    sys.exit(1 if any(item.state == "failed" for item in items) else 0)


if __name__ == "__main__":
    main()
