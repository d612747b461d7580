"""The options that several commands share, each written once: ``--tile H[xW]`` (rvrt-run, rvrt-batch,
rvrt-export onnx, rvrt-demo), what chooses and shapes the model and how outputs are encoded (rvrt-run and
rvrt-batch), ``--memory`` and ``--start``, and the one-line error of bad input (exit status 2)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from rvrt import CheckpointError, RVRTConfig, Task
from rvrt.tiling import tile_name, tile_shape_of

from .manifest import ArtifactError
from .memory_budget import parse_memory
from .runtimes import PRECISION_NAMES, RUNTIMES
from .video import VideoInputError, VideoOutputError

USER_ERRORS = (VideoInputError, VideoOutputError, ArtifactError, CheckpointError, ValueError, FileExistsError)


class UserError(click.ClickException):
    """One line on stderr, exit status 2: the user asked for something that cannot work (README,
    "Exit status": RuntimeError and OSError, the work failed or the machine lacks something, exit 1)."""

    exit_code = 2

EXPECTED = ("expected the tile in input px, one number for a square (64) or HEIGHTxWIDTH (144x176), each side a "
            "positive multiple of 8 (the attention window)")


class TileError(click.ClickException):
    """A --tile that no model can serve: one line naming the flag and what it expects, exit status 2
    (bad input), raised while the command line is parsed, before any work."""

    exit_code = 2


class TileShape(click.ParamType):
    """"64" -> (64, 64); "144x176" -> (144, 176): (height, width) in input px, multiples of 8. The
    task's minimum (SpyNet's, :func:`check_tile_fits`) is checked once the task is known."""

    name = "tile"

    def get_metavar(self, param, ctx=None) -> str:
        return "H[xW]"

    def convert(self, value, param, ctx) -> tuple[int, int]:
        # Click hands a value back to convert when it is already converted (a default, a second pass).
        if isinstance(value, tuple):
            return value
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(value))
        if match is None or any(int(side) == 0 or int(side) % 8 for side in match.groups() if side):
            raise TileError(f"--tile {value}: {EXPECTED}")
        return int(match[1]), int(match[2] or match[1])


TILE = TileShape()


def check_tile_fits(tile, task: Task, config: RVRTConfig) -> None:
    """Raise ValueError naming --tile when a side of ``tile`` is below what ``config``'s SpyNet needs."""
    height, width = tile_shape_of(tile)
    if min(height, width) < config.min_tile:
        raise ValueError(f"--tile {tile_name(tile)}: each side must be at least {config.min_tile} input px for task "
                         f"{task.short!r} (SpyNet's smallest input; multiples of 8); its official tile is "
                         f"{task.tile[1]}")


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


def precision_of(precision: str | None, fp16: bool) -> str | None:
    """--precision (f32, f16, bf16) or --fp16 as the precision it names."""
    if fp16 and precision not in (None, "f16"):
        raise ValueError(f"--fp16 and --precision {precision} ask for different precisions: give one")
    return PRECISION_NAMES["f16"] if fp16 else PRECISION_NAMES.get(precision)


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
                 help="The weights, when MODEL is a task name: an official .pth, or official for the file 'rvrt-fetch TASK' downloaded."),
    click.option("--random-weights", is_flag=True, help="Random weights (tests and demos only)."),
    click.option("--runtime", type=click.Choice(list(RUNTIMES)),
                 help="Run MODEL on this runtime: for a task name or checkpoint, exports are made and cached on "
                      "first use [eager PyTorch for a task or checkpoint; an export directory's own]."),
    click.option("--precision", type=click.Choice(list(PRECISION_NAMES)),
                 help="Compute precision, where the runtime serves it [the runtime's default: bf16 for openvino "
                      "on CPUs with bfloat16 instructions, else f32]."),
    click.option("--fp16", is_flag=True, help="float16 graphs/engines: --precision f16."),
    click.option("--sigma", type=float, help="Noise level (0-255 scale), denoising only."),
    click.option("--window", type=int, help="Frames per temporal window [chosen within --memory, up to the task's "
                                            "official value; 100 where the official script takes the whole "
                                            "video]; 0 = whole video."),
    click.option("--scene-cuts", default="auto", show_default=True,
                 help="Where shots begin, so that no temporal window spans a cut: auto (FFmpeg's scdet on the frames "
                      "as they are read), off (the official behaviour: windows run across cuts), or a file listing "
                      "the first frame of each shot (one number a line, or PySceneDetect's scene-list CSV)."),
    click.option("--window-overlap", type=int, help="Frames shared by neighbouring windows [2]."),
    click.option("--tile", type=TILE, help="Spatial tile in input px: 64 (square) or HEIGHTxWIDTH, e.g. 144x176; "
                                           "multiples of 8, at least 40 for SR and 136 otherwise [the whole "
                                           "frame, or the tile computing the fewest pixels within --memory (the "
                                           "largest input's, for rvrt-batch)]: eager PyTorch takes any such "
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
    click.option("--preset", help="Encoder preset, as FFmpeg takes it, e.g. slow for libx264 [the encoder's]."),
    click.option("--encoder-option", "encoder_options", multiple=True, metavar="KEY=VALUE",
                 help="An option of the encoder as FFmpeg takes it (-x264-params, tune=film...); repeatable."),
)

ENCODING_OPTIONS = ("codec", "crf", "lossless", "pix_fmt", "preset", "encoder_options")
"""The names of :data:`encoding_options` as ``restore_video`` takes them (and bit_depth, as an int)."""
