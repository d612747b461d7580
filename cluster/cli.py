"""``rvrt-batch MODEL INPUT... -o OUT_DIR``: many videos restored by one pool of Ray workers.

One :class:`RayWindows` pool serves the whole batch. Several files are restored at once (a
driver thread each) and their temporal windows share the pool's window slots, the first file
first: a single long video and many one-window clips keep every worker busy alike, memory stays
bounded by the same number of windows in flight, and every file is written by the driver
exactly as ``rvrt-run`` writes it (same frames, in order, under a temporary name renamed when
complete).
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
from tqdm import tqdm

from rvrt import window_spans
from rvrt_engines.backends import known_task
from rvrt_engines.frontend import Prepared, check_request, prepare
from rvrt_engines.options import (USER_ERRORS, UserError, encoding_options, memory_option, model_options, parse_time,
                                  precision_of)
from rvrt_engines.extras import require_extra
from rvrt_engines.progress import clock, terminal_columns
from rvrt_engines.restore import open_source, output_writer, restore_video
from rvrt_engines.scenes import AUTO, OFF, read_cut_file
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
    """Files and windows done over the whole batch, frames per second and an ETA: a tqdm bar on a
    terminal that reports its width, else a plain line on standard error every ``interval`` seconds
    and whenever a file is finished. Fed from the threads of the files restored at once.

    Work is counted in window-frames (``rvrt_engines.progress``): the ETA is the time per unit of
    work done so far times the work left, the work of files that failed taken out."""

    def __init__(self, windows: dict[int, list[int]], pool: RayWindows, enabled: bool, interval: float = 10.0):
        self.lengths = windows
        self.pool = pool
        self.enabled = enabled
        self.interval = interval
        self.files = len(windows)
        self.windows = sum(len(spans) for spans in windows.values())
        self.work = float(sum(sum(spans) for spans in windows.values()))
        self.finished = self.failed = 0
        self.finished_work = self.finished_frames = 0.0
        self.current: dict[int, tuple[float, float]] = {}
        self.lock = threading.RLock()
        self.began = time.perf_counter()
        self.last = self.began
        self.bar = None
        if enabled and terminal_columns(sys.stderr) > 0:
            self.bar = tqdm(total=max(self.work, 1.0), desc="rvrt-batch", dynamic_ncols=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")

    def update(self, key: int, status) -> None:
        with self.lock:
            self.current[key] = (status.work_done, status.frames_done)
            self.show()

    def file_done(self, key: int, item: Item) -> None:
        with self.lock:
            self.current.pop(key, None)
            if item.state == "done":
                self.finished += 1
                self.finished_work += sum(self.lengths[key])
                self.finished_frames += item.frames
            else:
                self.failed += item.state == "failed"
                self.work -= sum(self.lengths[key])
            self.show(force=True)

    def line(self) -> str:
        now = time.perf_counter()
        done = self.finished_work + sum(work for work, _ in self.current.values())
        frames = self.finished_frames + sum(frames for _, frames in self.current.values())
        windows = sum(stats.windows for stats in self.pool.stats)
        eta = (now - self.began) / done * max(self.work - done, 0.0) if done > 0 else None
        failed = f" ({self.failed} failed)" if self.failed else ""
        return (f"{self.finished}/{self.files} files{failed}, {windows}/{self.windows} windows on "
                f"{count_of(len(self.pool.stats), 'worker')}, {frames:.0f} frames, "
                f"{frames / (now - self.began):.3g} fps, ETA {clock(eta)}")

    def show(self, force: bool = False) -> None:
        """Draw the bar, or print a plain line when ``interval`` seconds have passed (or ``force``)."""
        if not self.enabled:
            return
        with self.lock:
            if self.bar is not None:
                done = self.finished_work + sum(work for work, _ in self.current.values())
                self.bar.total = max(self.work, 1.0)
                self.bar.n = min(done, self.bar.total)
                self.bar.set_description_str(f"rvrt-batch: {self.line().rsplit(', ETA', 1)[0]}", refresh=False)
                self.bar.refresh()
                return
            now = time.perf_counter()
            if force or now - self.last >= self.interval:
                self.last = now
                click.echo(f"rvrt-batch: {self.line()}", err=True)

    def note(self, item: Item, message: str) -> None:
        """What an output cannot keep, or how an input was converted, said without breaking the bar."""
        if self.enabled:
            with self.lock:
                line = f"{item.source.name}: {message}"
                if self.bar is not None:
                    self.bar.write(line, file=sys.stderr)
                else:
                    click.echo(line, err=True)

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
                                          "else one per node with CPUs].")
@click.option("--threads", type=int, help="CPU threads per worker [the CPUs shared out on a local cluster, else 1].")
@click.option("--start", "start_time", help="Restore every file from this time: seconds or HH:MM:SS[.ms] (audio cut "
                                            "to match).")
@click.option("--frames", "frame_limit", type=int, help="Restore at most this many frames of every file.")
@model_options
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda (one GPU per worker).")
@click.option("--memory", callback=memory_option,
              help="Memory each worker stays within, e.g. 1.5G, 3GB or 800M (powers of 1024) [60% of free RAM; of "
                   "the GPU's free memory for GPU runtimes]: the tile and window are chosen within it for the "
                   "largest input, as rvrt-run chooses them.")
@encoding_options
@click.option("--overwrite", is_flag=True, help="Replace existing outputs [they are skipped].")
@click.option("--allow-unvalidated", is_flag=True, help="Serve an export without a passing validation record.")
@click.option("--quiet", is_flag=True, help="No progress.")
@click.option("--verbose", is_flag=True, help="Also show Ray's own start-up messages.")
def main(model, inputs, output_dir, suffix, address, workers, threads, start_time, frame_limit, task, checkpoint,
         random_weights, runtime, precision, fp16, sigma, window, window_overlap, tile, tile_overlap, batch, device,
         memory, scene_cuts, codec, crf, lossless, bit_depth, pix_fmt, preset, encoder_options, overwrite,
         allow_unvalidated, quiet, verbose):
    """Restore every INPUT (video files, folders of videos, folders of frames) with MODEL into
    OUTPUT_DIR, on a Ray cluster. Existing outputs are skipped, so a batch that was stopped
    restores only what is missing when run again.

    Exit status: 0 every file done or skipped, 1 a file failed (the summary names it and why) or
    the cluster lacks something, 2 bad input, 128 + N when stopped by signal N (130 for Ctrl-C)."""
    began = time.perf_counter()
    items: list[Item] = []
    pool = None
    try:
        with signals_as_exceptions():
            require_extra("cluster", "rvrt-batch (its Ray workers)")
            from .windows import RayWindows

            items = plan(collect_inputs(inputs), output_dir, None if suffix is None else
                         ("" if suffix == "png" else suffix))
            encoding = dict(codec=codec, crf=crf, lossless=lossless, pix_fmt=pix_fmt, preset=preset,
                            encoder_options=encoder_options, bit_depth=int(bit_depth) if bit_depth else None)
            check_request(model, task=task, sigma=sigma, tile=tile)
            if scene_cuts not in (AUTO, OFF):
                read_cut_file(scene_cuts)       # one line, exit 2, before any file is opened
            known = known_task(model, task)
            if workers is not None and workers < 1:
                raise UserError(f"--workers {workers}: expected at least 1")
            if threads is not None and threads < 1:
                raise UserError(f"--threads {threads}: expected at least 1")
            segment = dict(start=parse_time(start_time), frames=frame_limit)
            probe(items, known, overwrite, encoding, segment)
            pending = [item for item in items if item.state == "pending"]
            if not pending:
                finish(items, None, began)
            # One model serves every file: its tile and window are chosen for the largest frame and the longest
            # file, within --memory for each worker.
            largest = max(pending, key=lambda item: item.opened.height * item.opened.width)
            longest = max((item.opened.frame_count for item in pending), key=lambda count: count or 0)
            prepared = prepare(model, frame=(largest.opened.height, largest.opened.width), frames=longest,
                               task=task, checkpoint=checkpoint, random_weights=random_weights, runtime=runtime,
                               precision=precision_of(precision, fp16), device=device, threads=threads,
                               sigma=sigma, memory=memory, allow_unvalidated=allow_unvalidated, window=window,
                               window_overlap=window_overlap, tile=tile, tile_overlap=tile_overlap, batch=batch)
            for message in prepared.warnings + prepared.plan_warnings:
                click.secho(f"warning: {message}", fg="yellow", err=True)
            if not quiet:
                for line in prepared.lines:
                    click.echo(line, err=True)
            pool = RayWindows(prepared.description, address=address, workers=workers, threads=threads,
                              verbose=verbose)
            with pool:
                restore_all(items, pool, prepared, quiet, dict(sigma=sigma, overwrite=overwrite, scene_cuts=scene_cuts,
                                                              **encoding))
    except (Terminated, KeyboardInterrupt) as stop:
        for line in summary_lines(items, pool, time.perf_counter() - began):
            click.echo(line, err=True)
        click.echo(f"rvrt-batch: {str(stop) or 'interrupted (Ctrl-C)'}; the files in progress were not written "
                   f"(run the same command again to restore what is missing)", err=True)
        sys.exit(getattr(stop, "exit_status", 130))
    except USER_ERRORS as err:
        raise UserError(str(err)) from None
    except (RuntimeError, OSError) as err:
        # The machines lack something (no GPU in the cluster, no TensorRT on a worker) or the
        # workers could not start: one line, exit status 1.
        raise click.ClickException(str(err)) from None
    finish(items, pool, began)


def probe(items: list[Item], known, overwrite: bool, encoding: dict, segment: dict) -> None:
    """Skip existing outputs, remove temporaries that an interrupted run of ours left beside an output,
    open every input (unreadable ones fail here, before any work; ``segment``: start and frames) and
    check the output encoder where the task is known."""
    for item in items:
        for leftover in leftovers(item.output):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            click.echo(f"removed {leftover}: an unfinished output left by a run that was killed", err=True)
        if item.output.exists() and not overwrite:
            item.state, item.reason = "skipped", f"{item.output} exists (--overwrite replaces it)"
            continue
        try:
            item.opened = open_source(item.source, None, **segment)
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


def leftovers(output: Path) -> list[Path]:
    """Temporaries of ``output`` that a killed run left behind: the names outputs are written under
    until complete (``rvrt_engines.video.output.Staging``: ``.NAME.partial-TAG`` + the suffix)."""
    if not output.parent.is_dir():
        return []
    folder = output.suffix == ""
    pattern = re.compile(re.escape(f".{output.name if folder else output.stem}.partial-") + "[0-9a-f]{8}"
                         + re.escape("" if folder else output.suffix))
    return sorted(path for path in output.parent.iterdir() if pattern.fullmatch(path.name))


def restore_all(items: list[Item], pool: RayWindows, prepared: Prepared, quiet: bool, options: dict,
                interval: float = 10.0) -> None:
    """The pending files, several at once over the whole pool (one thread each, as many as the pool
    has window slots), so that every worker has a window while windows are left. A file that fails
    is recorded and the others go on, unless the options themselves cannot work (exit 2) or no
    worker is left (the files not restored fail with the reason)."""
    from .windows import Cancelled, WindowFailed

    pending = [item for item in items if item.state == "pending"]
    tiling = prepared.tiling
    windows = {key: [stop - first for first, stop in window_spans(item.frames, tiling)] if item.frames else []
               for key, item in enumerate(pending)}
    progress = BatchProgress(windows, pool, enabled=not quiet, interval=interval)
    todo = deque(enumerate(pending))
    taking = threading.Lock()
    stopped: list[BaseException] = []

    def restore_one(key: int, item: Item, runner) -> None:
        try:
            summary = restore_video(prepared.description, item.opened, item.output, windows=runner,
                                    progress=lambda status: progress.update(key, status),
                                    notes=lambda message: progress.note(item, message), **prepared.options,
                                    **options)
        except Cancelled:
            return
        except (VideoInputError, VideoOutputError, WindowFailed, FileExistsError, OSError) as err:
            item.state, item.reason = "failed", str(err)
        except RuntimeError as err:
            item.state, item.reason = "failed", f"not restored: {err}"
            stopped.append(err)
        except BaseException as err:
            stopped.append(err)
            pool.cancel(f"stopped by an error on another file: {err}")
            return
        else:
            item.state, item.frames, item.seconds = "done", summary.frames, summary.seconds
        progress.file_done(key, item)

    def drive() -> None:
        while True:
            with taking:
                if not todo or stopped:
                    return
                key, item = todo.popleft()
                runner = pool.for_file()
            restore_one(key, item, runner)

    threads = [threading.Thread(target=drive, name=f"rvrt-batch-{index}", daemon=True)
               for index in range(min(len(pending), pool.max_in_flight))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(interval)
                progress.show()
    except BaseException:
        # Ctrl-C or SIGTERM (this thread's): every file in progress stops and removes its temporary.
        with taking:
            stopped.append(Cancelled("interrupted"))
        pool.cancel("interrupted")
        for thread in threads:
            thread.join()
        raise
    finally:
        progress.close()
    failure = next((err for err in stopped if not isinstance(err, RuntimeError)), None)
    if failure is not None:
        raise failure
    if stopped:
        for _, rest in todo:
            rest.state, rest.reason = "failed", f"not restored: {stopped[0]}"


def finish(items: list[Item], pool: RayWindows | None, began: float) -> None:
    for line in summary_lines(items, pool, time.perf_counter() - began):
        click.echo(line)
    sys.exit(1 if any(item.state == "failed" for item in items) else 0)


if __name__ == "__main__":
    main()
