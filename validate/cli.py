"""``rvrt-validate``: accuracy parity report of an export or engine directory."""

from __future__ import annotations

from pathlib import Path

import click

from rvrt_engines.progress import log_to_stderr
from rvrt_export.cli import (Command, UserError, check_output, reference_for, require_export_extra,
                             with_reference_options)
from rvrt_engines.manifest import ArtifactError, check_files, read_manifest
from rvrt_engines.runtimes import PRECISION_NAMES, RUNTIMES


@click.command(cls=Command)
@click.argument("model_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@with_reference_options
@click.option("--frames", type=click.IntRange(min=2), default=6, show_default=True,
              help="Frames of the generated clip (at least 2, one clip).")
@click.option("--runtime", "runtimes", type=click.Choice(list(RUNTIMES)), multiple=True,
              help="Measure only this runtime, in every precision it serves (repeat for several) [every runtime "
                   "of the registry: making OpenVINO's compiled graphs or the float16 graphs takes minutes at "
                   "full size].")
@click.option("--precision", "precisions", type=click.Choice(list(PRECISION_NAMES)), multiple=True,
              help="Measure only this precision, of each runtime that serves it (repeat for several) [all].")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="New folder for the report (report.json, report.md, PNGs).")
def main(model_dir, checkpoint, random_weights, frames, runtimes, precisions, out_dir):
    """Hold every backend and precision of MODEL_DIR (an 'rvrt-export onnx' or 'rvrt-export trt'
    directory) against eager PyTorch float32, per stage and on a restored clip. Every file of
    MODEL_DIR is first checked against the size and sha256 its manifest records.

    Exit status: 0 every candidate that ran passed, 1 one failed (or none could run here),
    2 bad input, 128 + N when stopped by signal N (130 for Ctrl-C)."""
    require_export_extra("validating against eager PyTorch")
    from .render import decibels, number
    from .report import candidate_records, validate

    precisions = [PRECISION_NAMES[name] for name in precisions]
    if not candidate_records(runtimes, precisions):
        # Each record refuses a precision it does not serve, naming those it does.
        refusals = []
        for name in runtimes:
            for precision in precisions:
                try:
                    RUNTIMES[name](precision=precision)
                except ValueError as err:
                    refusals.append(str(err))
        raise UserError("; ".join(refusals))

    try:
        manifest = read_manifest(model_dir)
        check_files(manifest, model_dir, hashes=True)
    except ArtifactError as err:
        raise UserError(str(err)) from None
    check_output(out_dir)
    model = reference_for(model_dir, checkpoint, random_weights, manifest)
    # A report takes minutes on a CPU: a line per stage and candidate (and float16 conversion) on stderr.
    log_to_stderr("rvrt_validate", "rvrt_export")
    try:
        report = validate(model, model_dir, out_dir, frames=frames, runtimes=runtimes, precisions=precisions)
    except (ValueError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    for candidate in report["candidates"]:
        if candidate["status"] == "skipped":
            click.echo(f"{candidate['label']:>22}: skipped ({candidate['skipped']})")
        else:
            e2e = candidate["end_to_end"]
            click.echo(f"{candidate['label']:>22}: {candidate['status']} (frames max abs {number(e2e['max_abs'])}, "
                       f"PSNR {decibels(e2e['psnr_db'])}, SSIM {e2e['ssim']:.5f})")
    click.echo(f"verdict: {report['verdict']}; report: {out_dir / 'report.md'}")
    if report["verdict"] != "pass":
        raise SystemExit(1)
