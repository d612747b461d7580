"""The VapourSynth filter against rvrt-run on the same frames, process against process, in one run.

    python benchmarks/vapoursynth.py                      # tiny SR export, 64x48 LR, ~15 min on 2 quiet cores
    python benchmarks/vapoursynth.py --export DIR --size 64x64 --window 8

Both sides read the same H.264 file (made here with PyAV) and write YUV4MPEG2 to a pipe that this
process reads and drops: ``rvrt-run EXPORT VIDEO -o -`` against ``vspipe -c y4m SCRIPT -``, where the
script loads the file with ``core.bs.VideoSource`` and restores it with
``rvrt_engines.vapoursynth.restore(clip, EXPORT, format=clip.format)``. Same export, window, overlap
and ONNX Runtime threads on both sides. Each process is timed from before its start to its end, its
peak RSS read by ``/usr/bin/time -f %M`` (its own, not this process's), for clips of 40 and 160 frames,
alternating the two sides, ``--repeats`` times (the fastest run of each kept: the machine's load
only ever slows a run down). It prints frames per second and the filter's share of rvrt-run's (goal:
>= 95 %), and the filter's peak RSS at 160 frames over that at 40 (goal: within 10 %). Within each
filter process, the seconds spent restoring windows (from the filter's debug log) against the rest:
measured in one process at one time, it tells the frameserver's own cost even where the load of a
shared machine moves two processes' times apart.

VapourSynth R81 runs on Python >= 3.12: the filter runs in a venv under ``--work-dir`` with
vapoursynth==81, vapoursynth-bestsource and the checkout's dependencies without extras (made on first
use; no PyTorch), the checkout itself on PYTHONPATH. rvrt-run is this interpreter's. One unmeasured
run of each side comes first (the GDA kernel's build, file caches). The export's weights are what it
was exported with (the default tiny one: random, so its frames are no restoration).
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LENGTHS = (40, 160)
VPY = """
import re
import vapoursynth as vs
from rvrt_engines.vapoursynth import restore

vs.core.num_threads = {threads}
restorations = open({log!r}, "w")


def restored(kind, message):
    found = re.search(r"restored in ([0-9.]+) s", message)
    if found:
        print(found.group(1), file=restorations, flush=True)


vs.core.add_log_handler(restored)
clip = vs.core.bs.VideoSource({video!r})
restore(clip, {export!r}, window={window}, window_overlap={overlap}, threads={threads},
        format=clip.format).set_output()
"""


def python_312(given: str | None) -> str:
    """An interpreter of Python >= 3.12: ``given``, or pyenv's newest 3.12+, or python3.12 on PATH."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [given] if given else [*sorted(glob.glob(str(root / "versions" / "3.1[2-9]*" / "bin" / "python3"))),
                                        "python3.12", "python3.13"]
    for candidate in candidates:
        try:
            if subprocess.run([candidate, "-c", "import sys; sys.exit(sys.version_info < (3, 12))"],
                              capture_output=True).returncode == 0:
                return candidate
        except OSError:
            continue
    raise SystemExit("VapourSynth R81 needs Python >= 3.12: none found; pass --python")


def vapoursynth_venv(work: Path, python: str, log) -> Path:
    """A venv with VapourSynth and the checkout's dependencies (no extras), made on first use."""
    venv = work / "vapoursynth-venv"
    if not (venv / "bin" / "vspipe").exists():
        log(f"making {venv} (vapoursynth==81, vapoursynth-bestsource, the checkout's dependencies) ...")
        dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "vapoursynth==81",
                        "vapoursynth-bestsource", *dependencies], check=True)
    return venv


def checkout_on_path(work: Path) -> Path:
    """A folder of links that imports the checkout's packages as installed (pyproject's package-dir),
    for PYTHONPATH: the checkout as an editable install would serve it, without writing into it."""
    site = work / "site"
    site.mkdir(exist_ok=True)
    for package, folder in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
            "package-dir"].items():
        link = site / package
        if not link.is_symlink():
            link.symlink_to(REPO / folder)
    return site


def tiny_export(work: Path, log) -> Path:
    out = work / "onnx-sr-tiny-tile48"
    if not (out / "manifest.json").exists():
        log(f"exporting a tiny SR model (random weights, tile 48) to {out} once ...")
        subprocess.run([str(Path(sys.executable).parent / "rvrt-export"), "onnx", "--task", "sr", "--tiny",
                        "--random-weights", "--tile", "48", "-o", str(out)], check=True, capture_output=True)
    return out


def input_video(work: Path, frames: int, height: int, width: int) -> Path:
    from rvrt_engines.synthetic import degrade, moving_photo_frames, write_video

    path = work / f"lr-{frames}x{width}x{height}.mp4"
    if not path.exists():
        write_video(path, degrade(moving_photo_frames(frames, 4 * height, 4 * width, image="coffee", seed=3), "sr"),
                    frame_rate=24)
    return path


def measured(command: list[str], env: dict) -> tuple[float, float, int]:
    """(seconds from before the start to the end, peak RSS in GB, frames read from the pipe) of one process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        start = time.perf_counter()
        process = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", report.name, *command], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        frames, tail = 0, b""
        while chunk := process.stdout.read1(1 << 16):
            frames += (tail + chunk).count(b"FRAME") - tail.count(b"FRAME")
            tail = chunk[-4:]
        errors = process.stderr.read().decode(errors="replace")
        if process.wait() != 0:
            raise SystemExit(f"failed: {' '.join(command)}\n{errors[-3000:]}")
        seconds = time.perf_counter() - start
        peak = int(report.read().strip().splitlines()[-1]) / 1e6
    return seconds, peak, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, help="ONNX export directory [a tiny SR export made once]")
    parser.add_argument("--size", default="64x48", help="LR frame size WIDTHxHEIGHT [64x48]")
    parser.add_argument("--window", type=int, default=8, help="frames per temporal window, both sides [8]")
    parser.add_argument("--window-overlap", type=int, default=2, help="[2]")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (and VapourSynth's) [2]")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each side and length, alternating; the fastest is kept (peak RSS: the "
                             "largest) [3]")
    parser.add_argument("--python", help="Python >= 3.12 for VapourSynth [pyenv's or python3.12]")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "vapoursynth-bench")
    args = parser.parse_args()
    if not Path("/usr/bin/time").exists():
        parser.error("needs /usr/bin/time (Debian package 'time') to read each process's peak memory")
    width, height = map(int, args.size.split("x"))
    args.work_dir.mkdir(parents=True, exist_ok=True)

    def log(line: str = "") -> None:
        print(line, flush=True)

    venv = vapoursynth_venv(args.work_dir, python_312(args.python), log)
    export = args.export or tiny_export(args.work_dir, log)
    env = {**os.environ, "XDG_CONFIG_HOME": str(args.work_dir / "config"),
           "PYTHONPATH": str(checkout_on_path(args.work_dir))}
    subprocess.run([str(venv / "bin" / "vapoursynth"), "config"], env=env, check=True, capture_output=True)
    rvrt_run = str(Path(sys.executable).parent / "rvrt-run")
    options = ["--window", str(args.window), "--window-overlap", str(args.window_overlap), "--threads",
               str(args.threads), "--quiet"]

    def restorations(video: Path) -> Path:
        return args.work_dir / f"{video.stem}.restorations"

    def commands(video: Path) -> dict[str, list[str]]:
        script = args.work_dir / f"{video.stem}.vpy"
        script.write_text(VPY.format(threads=args.threads, video=str(video), export=str(export), window=args.window,
                                     overlap=args.window_overlap, log=str(restorations(video))))
        return {"rvrt-run": [rvrt_run, str(export), str(video), "-o", "-", *options],
                "vapoursynth": [str(venv / "bin" / "vspipe"), "-c", "y4m", str(script), "-"]}

    log(f"export {export}; LR {width}x{height}; window {args.window}, overlap {args.window_overlap}; "
        f"{args.threads} threads; machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    warm = commands(input_video(args.work_dir, args.window, height, width))
    for side, command in warm.items():
        measured(command, env)                       # unmeasured: kernel build, file caches
    results = {}
    for repeat in range(args.repeats):
        for length in LENGTHS:
            video = input_video(args.work_dir, length, height, width)
            for side, command in commands(video).items():
                seconds, peak, frames = measured(command, env)
                if frames != length:
                    raise SystemExit(f"{side}: {frames} frames on the pipe, expected {length}")
                best, highest = results.get((side, length), (seconds, peak))
                results[side, length] = (min(best, seconds), max(highest, peak))
                log(f"run {repeat + 1}: {side:12s} {length:4d} frames: {seconds:7.1f} s ({length / seconds:.2f} fps), "
                    f"peak RSS {peak:.3f} GB")
                if side == "vapoursynth":
                    windows = [float(line) for line in restorations(video).read_text().split()]
                    log(f"       in that process: {len(windows)} windows restored in {sum(windows):.1f} s (the "
                        f"computation rvrt-run does too); everything else {seconds - sum(windows):.1f} s "
                        f"({1 - sum(windows) / seconds:.1%}: start-up, decoding, conversions, the frameserver)")
    log()
    for (side, length), (seconds, peak) in results.items():
        log(f"fastest of {args.repeats}: {side:12s} {length:4d} frames: {seconds:7.1f} s ({length / seconds:.2f} fps), "
            f"peak RSS {peak:.3f} GB")
    log()
    for length in LENGTHS:
        share = results["rvrt-run", length][0] / results["vapoursynth", length][0]
        log(f"{length} frames: filter throughput {share:.1%} of rvrt-run's (goal >= 95 %)")
    steady = ((results["rvrt-run", 160][0] - results["rvrt-run", 40][0])
              / (results["vapoursynth", 160][0] - results["vapoursynth", 40][0]))
    log(f"the 120 frames past the first 40: filter throughput {steady:.1%} of rvrt-run's")
    for side in ("vapoursynth", "rvrt-run"):
        growth = results[side, 160][1] / results[side, 40][1] - 1
        log(f"{side}: peak RSS at 160 frames {growth:+.1%} of that at 40 (goal for the filter: within 10 %)")
    log(f"load average at the end {os.getloadavg()[0]:.1f}: figures from a shared machine are noisy")


if __name__ == "__main__":
    main()
