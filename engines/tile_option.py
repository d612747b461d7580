"""``--tile H[xW]``: the one option type of every command that takes a tile (rvrt-run, rvrt-batch,
rvrt-export onnx, rvrt-demo)."""

from __future__ import annotations

import re

import click

from rvrt import RVRTConfig, Task
from rvrt.tiling import tile_name, tile_shape_of

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
