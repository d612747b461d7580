"""Calibrate the memory model of ``rvrt_engines.memory_budget``: peak RSS of real ``rvrt-run``
processes at a few tile shapes and windows, and the least-squares fit of

    peak = fixed + per_window_px * frames_in_window * tile_px + per_tile_px * tile_px

(plus the restored frames, counted: ``frame_bytes``) as an upper envelope of the points (least squares, then
``fixed`` raised until no point lies above), per runtime (eager PyTorch, ONNX Runtime, OpenVINO) and task kind (SR;
denoise, which stands for deblur too: same network at 1/4 resolution, 192 channels).

    python benchmarks/memory_model.py                       # every point, then the fit
    python benchmarks/memory_model.py --points eager:sr:64x64:2,eager:sr:144x176:8
    python benchmarks/memory_model.py --fit                 # fit what is recorded, run nothing

Each point is one ``rvrt-run`` process, as users run it: ``TASK --random-weights`` (announced on
stderr; full-size networks, seeded random weights), ``--tile`` the point's tile, ``--frames`` the
window (one window of that many frames), input an H.264 clip made here with PyAV, output PNG
frames, under ``/usr/bin/time -f %M`` (its own peak: FACTS, ``ru_maxrss`` of a child of a big
Python process reports the parent's). ONNX Runtime points use ``--runtime onnxruntime``, OpenVINO
points ``--runtime openvino --precision bf16`` (``openvino-f32``: f32; its validated, compiled entry
is made on the first run too): the export for the tile is made in ``--cache`` on a first, unmeasured
run (an export's own peak is not the serving process's), then the measured run serves it from there.

``--check`` runs real-size clips with ``--memory`` instead (the chooser picks tile and window) and
compares each measured peak with its budget: the goal of issue 21 (1.5, 3 and 6 GiB).

    python benchmarks/memory_model.py --check
    python benchmarks/memory_model.py --check --checks eager:sr:180x320:8:3G

Measurements are appended to ``--work-dir``/measurements.json (one record per point; a point run
again replaces its record), so a calibration can be done in parts on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RUNTIMES = {"eager": [], "onnxruntime": ["--runtime", "onnxruntime"],
            "openvino": ["--runtime", "openvino", "--precision", "bf16"],
            "openvino-f32": ["--runtime", "openvino", "--precision", "f32"]}
EXPORTED = ("onnxruntime", "openvino", "openvino-f32")
"""Runtimes whose first run makes an entry (an export; OpenVINO's validated entry too), unmeasured."""
DEFAULT_POINTS = (
    "eager:sr:64x64:2", "eager:sr:64x64:8", "eager:sr:128x128:4", "eager:sr:144x176:2", "eager:sr:144x176:8",
    "eager:denoise:136x136:2", "eager:denoise:256x256:2", "eager:denoise:256x256:6", "eager:denoise:272x480:4",
    "onnxruntime:sr:64x64:2", "onnxruntime:sr:64x64:8", "onnxruntime:sr:128x128:8", "onnxruntime:sr:144x176:2",
    "onnxruntime:sr:144x176:8",
    "onnxruntime:denoise:256x256:2", "onnxruntime:denoise:256x256:6",
    "openvino:sr:64x64:2", "openvino:sr:64x64:8", "openvino:sr:128x128:2", "openvino:sr:128x128:8",
    "openvino:denoise:256x256:2", "openvino:denoise:256x256:6", "openvino:denoise:136x136:2",
)

# RUNTIME:KIND:HEIGHTxWIDTH (the clip's):FRAMES:MEMORY
DEFAULT_CHECKS = ("eager:sr:144x176:4:1.5G", "eager:denoise:270x480:4:1.5G", "eager:sr:180x320:4:3G",
                  "eager:sr:180x320:4:6G")


def console_script(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name) or name


def clip_for(kind: str, height: int, width: int, frames: int, work: Path) -> Path:
    """An H.264 clip of ``frames`` frames of ``height`` x ``width`` input px (a panning photograph, degraded as the
    task's input would be), made once: one tile covers it, so a run is one window of one tile."""
    from rvrt_engines.synthetic import degrade, moving_photo_frames, write_video

    path = work / f"clip-{kind}-{height}x{width}-{frames}.mp4"
    if not path.exists():
        if kind == "sr":
            frames_hr = moving_photo_frames(frames, 4 * height, 4 * width, seed=0)
            clip = degrade(frames_hr, "sr")
        else:
            clip = degrade(moving_photo_frames(frames, height, width, seed=0), "denoise", sigma=20.0)
        partial = path.with_name(path.stem + ".partial.mp4")
        write_video(partial, clip)
        partial.replace(path)
    return path


def command_for(runtime: str, kind: str, tile: str, frames: int, clip: Path, output: Path) -> list[str]:
    command = [console_script("rvrt-run"), kind, "--random-weights", *RUNTIMES[runtime], "--tile", tile,
               "--frames", str(frames), "--window", "0", str(clip), "-o", str(output),
               "--quiet", "--overwrite"]
    if kind == "denoise":
        command += ["--sigma", "20"]
    return command


def peak_of(command: list[str], env: dict) -> tuple[float, float, str]:
    """(peak RSS in bytes, seconds, standard error) of one process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        start = time.perf_counter()
        result = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *command], env=env,
                                capture_output=True, text=True)
        seconds = time.perf_counter() - start
        lines = report.read().strip().splitlines()
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")
    return int(lines[-1]) * 1024.0, seconds, result.stderr


def measure(point: str, work: Path, cache: Path, threads: int, log) -> dict:
    runtime, kind, tile, frames = point.split(":")
    frames = int(frames)
    height, width = (int(side) for side in tile.split("x"))
    clip = clip_for(kind, height, width, frames, work)
    output = work / "out"
    env = {**os.environ, "RVRT_CACHE": str(cache), "OMP_NUM_THREADS": str(threads)}
    command = command_for(runtime, kind, tile, frames, clip, output)
    if runtime in EXPORTED:
        # The first use exports (minutes, its own peak); the measured run below serves the cached export.
        log(f"  {point}: making or finding the export ...")
        peak_of(command, env)
    peak, seconds, _ = peak_of(command, env)
    shutil.rmtree(output, ignore_errors=True)
    log(f"  {point:30s} peak {peak / 2**30:6.2f} GiB  {seconds:6.1f} s")
    return dict(point=point, runtime=runtime, kind=kind, tile=[height, width], frames=frames,
                peak_bytes=peak, seconds=round(seconds, 1), threads=threads,
                measured=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def check(spec: str, work: Path, cache: Path, threads: int, log) -> dict:
    """One rvrt-run at default settings within ``--memory``: its measured peak against the budget."""
    from rvrt_engines.memory_budget import parse_memory

    runtime, kind, size, frames, memory = spec.split(":")
    height, width = (int(side) for side in size.split("x"))
    clip = clip_for(kind, height, width, int(frames), work)
    env = {**os.environ, "RVRT_CACHE": str(cache), "OMP_NUM_THREADS": str(threads)}
    output = work / "out"
    command = [console_script("rvrt-run"), kind, "--random-weights", *RUNTIMES[runtime], "--memory", memory,
               str(clip), "-o", str(output), "--overwrite"] + (["--sigma", "20"] if kind == "denoise" else [])
    if runtime in EXPORTED:
        peak_of(command, env)       # makes or finds the export for the chosen tile, unmeasured
    peak, seconds, stderr = peak_of(command, env)
    shutil.rmtree(output, ignore_errors=True)
    plan = next((line for line in stderr.splitlines() if line.startswith("tiling: ")), "?")
    budget = parse_memory(memory)
    verdict = "under" if peak <= budget else "OVER"
    log(f"  {spec:32s} peak {peak / 2**30:5.2f} GiB, {verdict} {budget / 2**30:.2f} GiB; {seconds:6.1f} s; {plan}")
    return dict(check=spec, peak_bytes=peak, budget_bytes=budget, seconds=round(seconds, 1), plan=plan,
                measured=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def fit(records: list[dict], log) -> dict:
    """Least squares of peak = fixed + per_window_px * frames * px + per_tile_px * px per (runtime, kind)."""
    model = {}
    from rvrt import get_task
    from rvrt_engines.memory_budget import frame_bytes

    for runtime, kind in sorted({(r["runtime"], r["kind"]) for r in records}):
        group = [r for r in records if (r["runtime"], r["kind"]) == (runtime, kind)]
        pixels = np.array([r["tile"][0] * r["tile"][1] for r in group], dtype=float)
        frames = np.array([r["frames"] for r in group], dtype=float)
        # The restored window's whole-frame arrays are counted, not fitted (rvrt_engines.memory_budget.frame_bytes):
        # each point's clip is one tile, so its frame is the tile.
        config = get_task(kind).config
        peaks = np.array([r["peak_bytes"] - frame_bytes(config, r["frames"], r["tile"][0] * r["tile"][1])
                          for r in group])
        design = np.stack([np.ones_like(pixels), frames * pixels, pixels], axis=1)
        if len(group) < 3:
            log(f"{runtime} {kind}: {len(group)} points, too few to fit")
            continue
        coefficients, *_ = np.linalg.lstsq(design, peaks, rcond=None)
        # An upper envelope, not a mean: ``fixed`` is raised by the largest amount a point lies above the fit, so
        # that no measured peak exceeds the model (a budget is a bound).
        shortfall = float(np.max(peaks - design @ coefficients))
        coefficients[0] += max(shortfall, 0.0)
        predicted = design @ coefficients
        worst = float(np.max(np.abs(predicted - peaks) / peaks))
        predicted = predicted + np.array([r["peak_bytes"] for r in group]) - peaks
        model[runtime, kind] = coefficients
        log(f"{runtime} {kind}: fixed {coefficients[0] / 2**30:.3f} GiB, per window px {coefficients[1]:.0f} B, "
            f"per tile px {coefficients[2]:.0f} B (fixed raised {shortfall / 2**30:.3f} GiB to cover every point); "
            f"largest overestimate {100 * worst:.1f} % over {len(group)} points")
        log(f"    MemoryModel({coefficients[0] / 2**30:.3f} * GIB, {coefficients[1]:.0f}.0, {coefficients[2]:.0f}.0, "
            f"...)")
        for record, guess in zip(group, predicted):
            log(f"    {record['point']:30s} measured {record['peak_bytes'] / 2**30:6.2f} GiB, fit "
                f"{guess / 2**30:6.2f} GiB")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", default=",".join(DEFAULT_POINTS),
                        help="comma-separated RUNTIME:KIND:HxW:FRAMES (runtime eager, onnxruntime, openvino "
                             "(bfloat16) or openvino-f32; kind sr or denoise)")
    parser.add_argument("--fit", action="store_true", help="only fit the recorded measurements")
    parser.add_argument("--check", action="store_true", help="run the checks against their budgets instead")
    parser.add_argument("--checks", default=",".join(DEFAULT_CHECKS),
                        help="comma-separated RUNTIME:KIND:HxW:FRAMES:MEMORY, for --check")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "memory-model")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "cache",
                        help="artefact cache of the ONNX Runtime exports (shared with benchmarks/cpu.py)")
    args = parser.parse_args()
    if not Path("/usr/bin/time").exists():
        parser.error("needs /usr/bin/time (Debian package 'time') to read each run's peak memory")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    store = args.work_dir / "measurements.json"
    records = json.loads(store.read_text()) if store.exists() else []

    def log(line: str) -> None:
        print(line, flush=True)

    if args.check:
        store = args.work_dir / "checks.json"
        results = json.loads(store.read_text()) if store.exists() else []
        log(f"memory checks, {args.threads} threads: peak RSS of rvrt-run at its default settings within --memory")
        for spec in (c for c in args.checks.split(",") if c):
            result = check(spec, args.work_dir, args.cache, args.threads, log)
            results = [r for r in results if r["check"] != spec] + [result]
            store.write_text(json.dumps(results, indent=1))
        over = [r["check"] for r in results if r["peak_bytes"] > r["budget_bytes"]]
        raise SystemExit(f"over budget: {', '.join(over)}" if over else 0)
    if not args.fit:
        log(f"memory calibration, {args.threads} threads, {os.cpu_count()} CPUs; random weights (announced by "
            f"rvrt-run), full-size networks")
        for point in (p for p in args.points.split(",") if p):
            record = measure(point, args.work_dir, args.cache, args.threads, log)
            records = [r for r in records if r["point"] != point] + [record]
            store.write_text(json.dumps(records, indent=1))
    fit(records, log)


if __name__ == "__main__":
    main()
