"""The one setup every frontend runs: rvrt-run, rvrt-batch and the VapourSynth filter turn what the user asked
for into what is served, the same way (vs-mlrt's filter shape: check the input, choose the tiles, fill the
runtime's defaults, then run).

:func:`prepare` checks the task, the noise level and the tile before anything loads, chooses the tile and the
window within the memory budget, describes the model on its runtime (exporting it into the cache on first use),
then checks the tiling against what it serves. It opens nothing: the caller (or each Ray worker) opens the
:class:`~rvrt_engines.backends.Description` where the work runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rvrt import Tiling

from .backends import Description, known_task, load_backend
from .cache import ArtefactCache, EntryMissing
from .memory_budget import Budget
from .options import check_tile_fits
from .restore import check_sigma, resolve_tiling
from .runtimes import Runtime, default_runtime, runtime_record

TILING_OPTIONS = ("window", "window_overlap", "tile", "tile_overlap", "batch")


@dataclass
class Prepared:
    """What a frontend serves and how: ``description`` (opened where the work runs), ``options`` (the
    window, overlaps, tile and batch chosen: what ``restore_video`` takes), ``tiling`` (them, checked),
    ``lines`` (the tiling chosen, to tell the user unless quiet) with ``plan_warnings`` (where it is over the
    budget, always told), and ``warnings`` about the model (always told, before any work)."""

    description: Description | None
    options: dict
    tiling: Tiling | None
    lines: list[str] = field(default_factory=list)
    plan_warnings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    missing: str | None = None
    """With a read-only cache (a dry run): what the first run would make first, minutes of work (the
    description and tiling are then None)."""


def check_request(model: str | os.PathLike, *, task: str | None, sigma: float | None, tile) -> None:
    """What can be refused before anything is opened or loaded: a noise level out of range or where the task
    takes none, a tile below the task's smallest."""
    if sigma is not None and not 0 <= sigma <= 255:
        raise ValueError(f"--sigma {sigma:g}: expected a noise level from 0 to 255 (the 8-bit scale)")
    known = known_task(str(model), task)
    if known is not None:
        check_sigma(known, sigma)
        if tile is not None:
            check_tile_fits(tile, known, known.config)


def prepare(model: str | os.PathLike, *, frame: tuple[int, int], frames: int | None, task: str | None = None,
            checkpoint=None, random_weights: bool = False, runtime: str | Runtime | None = None,
            precision: str | None = None, device: str = "cpu", threads: int | None = None, sigma: float | None = None, memory: int | None = None, allow_unvalidated: bool = False,
            cached_windows: int = 0, option: str = "--{} {}", cache: ArtefactCache | None = None,
            **tiling) -> Prepared:
    """The description, tiling and messages for restoring frames of ``frame`` (height, width) px, ``frames``
    of them (None: unknown, a stream), with MODEL (an export or engine directory, a checkpoint or a task).

    runtime: a record or name of :mod:`rvrt_engines.runtimes`, a name with ``precision``, ``device`` and
    ``threads`` [None: a directory's own runtime; eager PyTorch for a task or checkpoint]. tiling: window, window_overlap, tile, tile_overlap, batch (None or
    absent: chosen). memory: the budget in bytes [a share of what is free]; ``cached_windows``: restored
    windows the frontend keeps besides (the filter's cache), counted in it. ``option``: how the frontend spells
    an option in messages ("--{} {}" for flags, "{}={}" for the filter's keywords). cache: where exports are
    found or made; a read-only one makes nothing (:attr:`Prepared.missing` says what a run would make).
    """
    options = {name: tiling.get(name) for name in TILING_OPTIONS}
    unknown = set(tiling) - set(TILING_OPTIONS)
    if unknown:
        raise TypeError(f"unknown tiling options {', '.join(sorted(unknown))}")
    check_request(model, task=task, sigma=sigma, tile=options["tile"])
    height, width = frame

    def described(record: Runtime | None) -> Description:
        return load_backend(model, task=task, checkpoint=checkpoint, random_weights=random_weights, device=device,
                            threads=threads, precision=precision, allow_unvalidated=allow_unvalidated,
                            runtime=record, tile=options["tile"], batch=options["batch"], cache=cache)

    if Path(model).is_dir():
        # An export or engine directory serves its own tile and batch: only the window is chosen.
        description = described(runtime)
        budget = Budget(memory, description.runtime, option=option, cached_windows=cached_windows)
        options["window"] = budget.plan(description.task, description.config, height, width, frames, options,
                                        export=description).window
    else:
        record = runtime if isinstance(runtime, Runtime) else (
            runtime_record(runtime, precision=precision, device=device, threads=threads) if runtime
            else default_runtime(precision=precision, device=device, threads=threads)).resolved()
        budget = Budget(memory, record, option=option, cached_windows=cached_windows)
        known = known_task(str(model), task)
        if known is not None:
            # The tile and window are chosen before loading: an exported runtime is exported for that tile.
            options.update(budget.plan(known, known.config, height, width, frames, options).options())
        try:
            description = described(record)
        except EntryMissing as missing:
            return Prepared(None, options, None, list(budget.lines), list(budget.warnings), missing=str(missing))
    check_sigma(description.task, sigma)
    warnings = []
    if allow_unvalidated:
        warnings.append("allow_unvalidated: this model's outputs have not been checked against eager PyTorch"
                        if option == "{}={}" else
                        "--allow-unvalidated: this model's outputs have not been checked against eager PyTorch")
    if description.random_weights:
        warnings.append("random weights: the output is not a restoration (demo/test mode)")
    return Prepared(description, options, resolve_tiling(description, **options), list(budget.lines),
                    list(budget.warnings), warnings)
