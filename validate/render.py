"""A validation report as JSON for machines and Markdown for people.

Numbers are written by the same formatters here and on the terminal (``rvrt-validate``), so a
value reads the same in both: :func:`number` for errors and tolerances, :func:`decibels` for PSNR.
"""

from __future__ import annotations

import json
from pathlib import Path

from rvrt.tiling import tile_name

STATUS = {"pass": "PASS", "fail": "**FAIL**", "skipped": "skipped"}


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")


def number(value: float, digits: int = 2) -> str:
    """An error or tolerance: scientific below 0.01 (3.81e-06), else ``digits + 1`` significant digits."""
    return f"{value:.{digits}e}" if abs(value) < 1e-2 and value else f"{value:.{digits + 1}g}"


def decibels(value: float | None) -> str:
    """A PSNR: one decimal in dB (147.4 dB), or "identical" where the frames do not differ (None)."""
    return "identical" if value is None else f"{value:.1f} dB"


def weights_of(report: dict) -> str:
    """What the model's weights are, for the title: a random-weights export is never given a
    checkpoint's name (the official task ids read like one)."""
    weights = report["weights"]
    if weights.get("random_weights"):
        return f"random weights (seed {weights.get('seed')})"
    return f"checkpoint {weights['file']}"


def asked(chosen: dict) -> str:
    """The candidates a report was limited to, as the options that chose them."""
    return "; ".join(f"{what} {', '.join(chosen[key])}" for key, what in (("runtimes", "runtime"),
                                                                          ("precisions", "precision")) if chosen[key])


def render_markdown(report: dict) -> str:
    clip, summary = report["clip"], report["summary"]
    weights = weights_of(report)
    source = (f"{weights}: outputs are not restorations; the comparison still holds"
              if report["weights"].get("random_weights") else weights)
    lines = [
        f"# Accuracy parity: {report['task_short']}, {weights}",
        "",
        f"Model: `{report['model_dir']}` (task {report['task']}, tile {tile_name(report['tile'])}, "
        f"batch {report['batch']}), {source}.",
        f"Reference: {report['reference']}. Clip: {clip['frames']} frames of {clip['input_size'][0]}x"
        f"{clip['input_size'][1]} -> {clip['output_size'][0]}x{clip['output_size'][1]}, {clip['content']}.",
        *([f"Measured only as asked: {asked(report['asked'])}; the other candidates did not run.", ""]
          if any(report["asked"].values()) else [""]),
        f"**Verdict: {report['verdict'].upper()}** ({summary['passed']} passed, {summary['failed']} failed, "
        f"{summary['skipped']} skipped; skipped candidates did not run and are not counted as passing).",
        "",
        "Frames max abs: the largest difference of one colour channel of one pixel over all restored frames "
        "(values in [0, 1]); mean abs: the mean of all differences; PSNR and SSIM: the worst frame's.",
        "",
        "| candidate | status | worst stage (max abs / tolerance) | frames max abs | mean abs | min PSNR | "
        "min SSIM | end-to-end tolerance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in report["candidates"]:
        if c["status"] == "skipped":
            lines.append(f"| {c['label']} | skipped | {c['skipped']} | | | | | |")
            continue
        name, worst = max(c["stages"].items(), key=lambda item: item[1]["max_abs"] / item[1]["tolerance"])
        e2e = c["end_to_end"]
        lines.append(f"| {c['label']} | {STATUS[c['status']]} | {name}: {number(worst['max_abs'])} / "
                     f"{number(worst['tolerance'])} | {number(e2e['max_abs'])} | {number(e2e['mean_abs'])} | "
                     f"{decibels(e2e['psnr_db'])} | {e2e['ssim']:.5f} | {e2e['tolerance']} |")
    for c in report["candidates"]:
        if c["status"] == "skipped":
            continue
        pictures = c["images"]
        lines += ["", f"## {c['label']}", "",
                  "| stage | max abs | mean abs | reference peak | tolerance | |", "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {number(s['max_abs'])} | {number(s['mean_abs'])} | {s['reference_peak']:.3g} | "
                  f"{number(s['tolerance'])} | {'ok' if s['passed'] else '**over**'} |"
                  for name, s in c["stages"].items()]
        top, left, height, width = pictures["crop_box"]
        lines += ["", f"Frame {pictures['frame']} (the frame with the largest error), a {width}x{height} crop at row "
                      f"{top}, column {left}, left to right: input (nearest-upsampled), eager, {c['label']}, error. "
                      f"The error panel and the heat map below show per pixel |{c['label']} - eager| averaged over "
                      f"the three colour channels, scaled to its largest value on this frame: black 0, white "
                      f"{number(pictures['heatmap_full_scale'])} (of the [0, 1] range). The table's frames max abs "
                      f"is the largest single channel's difference over all frames, so it can exceed that white.",
                  "", f"![crop]({pictures['crop']})", "",
                  f"Error over the whole frame, same scale: ![heat map]({pictures['heatmap']})"]
    t = report["tolerances"]
    lines += ["", "## Tolerances", "",
              f"- per stage, float32: max abs <= {t['stage_float32_max_abs']:g}; float16: max abs <= "
              f"{t['stage_float16_max_abs_relative_to_peak']:g} x max(1, reference peak);",
              f"- restored frames, float32: max abs <= {t['end_to_end_float32_max_abs']:g}; float16: PSNR against "
              f"eager >= {t['end_to_end_float16_min_psnr_db']:g} dB (every frame).", ""]
    return "\n".join(lines)
