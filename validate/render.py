"""A validation report as JSON for machines and Markdown for people."""

from __future__ import annotations

import json
from pathlib import Path

STATUS = {"pass": "PASS", "fail": "**FAIL**", "skipped": "skipped"}


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")


def number(value, digits: int = 2) -> str:
    if value is None:
        return "identical"
    return f"{value:.{digits}e}" if abs(value) < 1e-2 and value else f"{value:.{digits + 1}g}"


def render_markdown(report: dict) -> str:
    clip, summary = report["clip"], report["summary"]
    weights = report["weights"]
    source = (f"random weights (seed {weights.get('seed')}): outputs are not restorations; the comparison still "
              f"holds" if weights.get("random_weights") else f"checkpoint {weights['file']}")
    lines = [
        f"# Accuracy parity: {report['task']}",
        "",
        f"Model: `{report['model_dir']}` (tile {report['tile']}, batch {report['batch']}), {source}.",
        f"Reference: {report['reference']}. Clip: {clip['frames']} frames of {clip['input_size'][0]}x"
        f"{clip['input_size'][1]} -> {clip['output_size'][0]}x{clip['output_size'][1]}, {clip['content']}.",
        "",
        f"**Verdict: {report['verdict'].upper()}** ({summary['passed']} passed, {summary['failed']} failed, "
        f"{summary['skipped']} skipped; skipped candidates did not run and are not counted as passing).",
        "",
        "| candidate | status | worst stage (max abs / tolerance) | frames max abs | mean abs | min PSNR dB | "
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
                     f"{number(e2e['psnr_db'], 1)} | {e2e['ssim']:.5f} | {e2e['tolerance']} |")
    for c in report["candidates"]:
        if c["status"] == "skipped":
            continue
        pictures = c["images"]
        lines += ["", f"## {c['label']}", "",
                  "| stage | max abs | mean abs | reference peak | tolerance | |", "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {number(s['max_abs'])} | {number(s['mean_abs'])} | {s['reference_peak']:.3g} | "
                  f"{number(s['tolerance'])} | {'ok' if s['passed'] else '**over**'} |"
                  for name, s in c["stages"].items()]
        lines += ["", f"Frame {pictures['frame']} (largest error), crop at row {pictures['crop_box'][0]}, column "
                      f"{pictures['crop_box'][1]}: input (nearest-upsampled) | eager | {c['label']} | error "
                      f"(black 0, white {number(pictures['heatmap_full_scale'])} of the [0, 1] range).", "",
                  f"![crop]({pictures['crop']})", "", f"Error over the whole frame: ![heat map]({pictures['heatmap']})"]
    t = report["tolerances"]
    lines += ["", "## Tolerances", "",
              f"- per stage, float32: max abs <= {t['stage_float32_max_abs']:g}; float16: max abs <= "
              f"{t['stage_float16_max_abs_relative_to_peak']:g} x max(1, reference peak);",
              f"- restored frames, float32: max abs <= {t['end_to_end_float32_max_abs']:g}; float16: PSNR against "
              f"eager >= {t['end_to_end_float16_min_psnr_db']:g} dB (every frame).", ""]
    return "\n".join(lines)
