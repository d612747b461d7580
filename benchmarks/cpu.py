"""CPU inference of RVRT: end-to-end time, steady-state speed, peak memory and achieved GFLOP/s, in one run.

    python benchmarks/cpu.py                       # every case and runtime (~10 min on 2 quiet cores)
    python benchmarks/cpu.py --cases sr-8 --runtimes onnxruntime,eager-reference

Each measurement is one ``rvrt-run`` subprocess under ``/usr/bin/time`` (process start, imports,
model or session loading, decoding and writing PNG frames all included, as a user runs it), so
its peak resident memory is its own. Runtimes:

- ``eager-reference``: eager PyTorch with the pure-PyTorch GDA (``RVRT_GDA=reference``), the
  official code's way of computing: the baseline of the speed-ups;
- ``eager-fused``: eager PyTorch with the fused CPU GDA kernel (the default);
- ``onnxruntime``: ``rvrt-run`` on an ONNX export (ONNX Runtime stage sessions, GDA steps split
  around the fused kernel);
- ``openvino-f32``, ``openvino-bf16``: ``rvrt-run`` on the same export with ``--runtime openvino`` and
  ``--precision f32`` or ``bf16`` (OpenVINO's CPU plugin; its validated entry, compiled models included, in
  ``WORK_DIR/cache``, made by a first run that is timed apart as the first-use cost); each row gives its
  speed against ONNX Runtime float32 of the same run;
- ``official``: the official RVRT code (its network and its script's tiling, GDA in pure
  PyTorch) through ``benchmarks/official_run.py``, where ``--official-dir`` or
  ``$RVRT_OFFICIAL_DIR`` names a checkout of github.com/JingyunLiang/RVRT (nothing of it is
  bundled); speed-ups are then also given against it.

Console scripts are those of this interpreter's environment (``bin/`` beside ``sys.executable``),
not a version manager's shims, which add their own start-up (0.3 s for pyenv's here).

Cases (input size, frames): ``sr-8`` and ``sr-32`` full-size SR x4 at 64x64, ``denoise-4``
non-blind denoising at 256x256.

Real-size cases (issue 21): ``sr-176x144`` (SR x4, 8 frames), ``sr-320x180`` (4 frames) and
``denoise-480x270`` (4 frames), each an H.264 clip made here with PyAV (a panning photograph, degraded as the
task's input would be; no downloaded video). Each runs ``rvrt-run TASK --random-weights --runtime onnxruntime``
as a user would, at its default settings (``auto``: the tile and window chosen from the memory budget, which rvrt-run
prints) and at the official tiling (``official``: ``--tile 128`` for SR, 256 for denoise), side by side in
one run, exports in an artefact cache under ``--work-dir`` made by an unmeasured first run. For
``sr-176x144`` the default run is also measured on first use (an empty cache: the export made for its tile,
timed apart). With ``--repeats N`` each is run N times and the fastest
run is reported (a shared machine only ever adds time). Steady-state frames per second are
(32 - 8) / (time of sr-32 - time of sr-8): what a longer video approaches once start-up and the first window are paid.

The weights are random (no checkpoint can be downloaded here; seeded, with a random offset head
so that GDA samples away from the flow): outputs are not restorations, but every runtime computes
the same network, and the benchmark prints how far apart their uint8 outputs are. The random
checkpoint, the exports (made with ``rvrt-export onnx`` on first use, ~2 min each) and the
frames are cached under ``--work-dir``, keyed by the sources of the model and exporter.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over the eager forward (run on the meta
device: shapes only) plus GDA counted analytically (a custom op the counter cannot see): per
query pixel and sampling point, 2C channels bilinearly sampled (8 FLOPs each), a C-long dot
product and a C-long weighted sum (2C each), C the query channels. The ceiling is float32
``torch.matmul`` of 2048x2048 matrices on the same number of threads, measured in this run.
``--stages`` adds a table of each ONNX Runtime stage of the SR export: time per call and GFLOP/s
as a share of that ceiling.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
RUNTIMES = ("official", "eager-reference", "eager-fused", "onnxruntime", "openvino-f32", "openvino-bf16")
OPENVINO = {"openvino-f32": "f32", "openvino-bf16": "bf16"}
"""The OpenVINO runtimes and their --precision."""


@dataclass(frozen=True)
class Case:
    name: str
    task: str
    frames: int
    size: int
    tile: int
    sigma: float | None = None


CASES = {case.name: case for case in (
    Case("sr-8", "sr", 8, 64, 64),
    Case("sr-32", "sr", 32, 64, 64),
    Case("denoise-4", "denoise", 4, 256, 256, sigma=20.0),
)}


@dataclass(frozen=True)
class RealCase:
    """A real-size clip: (height, width) input px, frames; ``official_tile`` the official script's tile."""

    name: str
    task: str
    frames: int
    height: int
    width: int
    official_tile: int
    sigma: float | None = None
    first_use: bool = False


REAL_CASES = {case.name: case for case in (
    RealCase("sr-176x144", "sr", 8, 144, 176, 128, first_use=True),
    RealCase("sr-320x180", "sr", 4, 180, 320, 128),
    RealCase("denoise-480x270", "denoise", 4, 270, 480, 256, sigma=20.0),
)}


@dataclass
class Measurement:
    seconds: float
    peak_rss_gb: float
    output: Path


# What the exported graphs are made from: a change to any of these makes the cached exports again.
GRAPH_SOURCES = ("rvrt/*.py", "export/onnx_export.py", "export/gda_onnx.py", "export/stages.py")


def source_digest() -> str:
    sha = hashlib.sha256()
    for pattern in GRAPH_SOURCES:
        for path in sorted(REPO.glob(pattern)):
            sha.update(path.name.encode() + path.read_bytes())
    return sha.hexdigest()[:10]


def matmul_ceiling_gflops(threads: int, size: int = 2048, repeats: int = 10) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = min(timed(lambda: torch.matmul(a, b))[1] for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def random_model(task_name: str):
    """Seeded random weights; the offset head random too (the official init zeroes it)."""
    from rvrt import build_model, get_task

    model = build_model(get_task(task_name).id, random_weights=True, seed=0)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        for align in model.deform_align.values():
            align.conv_offset[-1].weight.normal_(0, 0.02)
    return model.eval()


def checkpoint_for(task_name: str, work: Path) -> Path:
    path = work / f"weights-{task_name}-seed0-{source_digest()}.pth"
    if not path.exists():
        partial = path.with_suffix(".partial")
        torch.save({"params": random_model(task_name).state_dict()}, partial)
        partial.replace(path)
    return path


def export_for(case: Case, work: Path, log) -> Path:
    out = work / f"onnx-{case.task}-tile{case.tile}-{source_digest()}"
    if not out.exists():
        log(f"exporting {case.task} (tile {case.tile}) to {out} once (~2 min) ...")
        run([console_script("rvrt-export"), "onnx", "--task", case.task, "--tile", str(case.tile),
             "--checkpoint", str(checkpoint_for(case.task, work)), "-o", str(out)], check=True)
    return out


def generated_inputs(task: str, frames: int, height: int, width: int, sigma: float | None):
    """``frames`` input frames of ``height`` x ``width``: a pan over a photograph, degraded as the task's
    inputs are (SR: the pan at 4x, downscaled)."""
    from rvrt_engines.synthetic import degrade, moving_photo_frames

    if task == "sr":
        return degrade(moving_photo_frames(frames, 4 * height, 4 * width, seed=0), "sr")
    return degrade(moving_photo_frames(frames, height, width, seed=0), task, sigma=sigma)


def input_frames(case: Case, work: Path) -> Path:
    folder = work / f"frames-{case.task}-{case.frames}x{case.size}"
    if not folder.exists():
        frames = generated_inputs(case.task, case.frames, case.size, case.size, case.sigma)
        partial = Path(tempfile.mkdtemp(dir=work))
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(partial / f"{index:05d}.png")
        partial.rename(folder)
    return folder


def timed_process(command, env) -> tuple[subprocess.CompletedProcess, float, int]:
    """``command`` run as a user runs it: (its result, wall-clock seconds from before its start to its end,
    its own peak RSS in kB, read by /usr/bin/time)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        start = time.perf_counter()
        result = run(["/usr/bin/time", "-f", "%M", "-o", report.name, *command], env=env)
        seconds = time.perf_counter() - start
        return result, seconds, int(report.read().strip().splitlines()[-1])


def run(command, env=None, check=False) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, command))}\n{result.stderr[-3000:]}")
    return result


def console_script(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name) or name


def rvrt_run(runtime: str, case: Case, frames: Path, work: Path, threads: int, log,
             official_dir: Path | None = None) -> Measurement:
    """One ``rvrt-run`` process (or the official code's, for ``official``), timed from before its
    start to after its exit."""
    output = work / "outputs" / f"{case.name}-{runtime}"
    shutil.rmtree(output, ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("RVRT_GDA", None)
    if runtime == "official":
        command = [sys.executable, str(REPO / "benchmarks" / "official_run.py"), "--official-dir", str(official_dir),
                   "--task", case.task, "--checkpoint", str(checkpoint_for(case.task, work)), "--tile", str(case.tile),
                   "--threads", str(threads), str(frames), "-o", str(output)]
    else:
        if runtime == "onnxruntime":
            model = [str(export_for(case, work, log))]
        elif runtime in OPENVINO:
            model = [str(export_for(case, work, log)), "--runtime", "openvino", "--precision", OPENVINO[runtime]]
            env["RVRT_CACHE"] = str(work / "cache")
        else:
            # The export's tile: a frame smaller than the tile is mirror-padded up to it (4x the work for
            # 64x64 frames and the official 128 px tile).
            model = [case.task, "--checkpoint", str(checkpoint_for(case.task, work)), "--tile", str(case.tile)]
            if runtime == "eager-reference":
                env["RVRT_GDA"] = "reference"
        command = [console_script("rvrt-run"), *model, str(frames), "-o", str(output), "--threads", str(threads),
                   "--quiet"]
    if case.sigma is not None:
        command += ["--sigma", str(case.sigma)]
    result, seconds, peak_kb = timed_process(command, env)
    if result.returncode != 0:
        raise SystemExit(f"{runtime} on {case.name} failed:\n{' '.join(command)}\n{result.stderr[-3000:]}")
    log(f"  {case.name:10s} {runtime:16s} {seconds:7.1f} s  peak RSS {peak_kb / 1e6:5.2f} GB")
    return Measurement(seconds, peak_kb / 1e6, output)


def real_clip(case: RealCase, work: Path) -> Path:
    """The case's H.264 clip (PyAV), made once."""
    from rvrt_engines.synthetic import write_video

    path = work / f"clip-{case.name}-{case.frames}.mp4"
    if not path.exists():
        frames = generated_inputs(case.task, case.frames, case.height, case.width, case.sigma)
        partial = path.with_name(path.stem + ".partial.mp4")
        write_video(partial, frames)
        partial.replace(path)
    return path


@dataclass
class RealMeasurement:
    seconds: float
    peak_rss_gb: float
    tiling: str


def real_run(case: RealCase, mode: str, clip: Path, cache: Path, work: Path, threads: int,
             memory: str | None = None, frames: int | None = None, runtime: str = "onnxruntime") -> RealMeasurement:
    """One ``rvrt-run`` process on ``runtime`` (onnxruntime, or one of :data:`OPENVINO`): ``auto`` (default
    settings, or within ``memory``) or ``official`` (its tile)."""
    output = work / "outputs" / f"{case.name}-{mode}-{runtime}.mkv"
    output.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "RVRT_CACHE": str(cache)}
    chosen = ["--runtime", "openvino", "--precision", OPENVINO[runtime]] if runtime in OPENVINO else [
        "--runtime", "onnxruntime"]
    command = [console_script("rvrt-run"), case.task, "--random-weights", *chosen, str(clip),
               "-o", str(output), "--threads", str(threads), "--overwrite"]
    if mode == "official":
        command += ["--tile", str(case.official_tile)]
    if memory is not None:
        command += ["--memory", memory]
    if frames is not None:
        command += ["--frames", str(frames)]
    if case.sigma is not None:
        command += ["--sigma", str(case.sigma)]
    result, seconds, peak_kb = timed_process(command, env)
    if result.returncode != 0:
        raise SystemExit(f"{case.name} ({mode}) failed:\n{' '.join(command)}\n{result.stderr[-3000:]}")
    tiling = next((line.removeprefix("tiling: ") for line in result.stderr.splitlines()
                   if line.startswith("tiling: ")), "?")
    return RealMeasurement(seconds, peak_kb * 1024 / 2 ** 30, tiling)


def real_cases(cases: list[RealCase], work: Path, cache: Path, threads: int, log, first_use: bool = True,
               openvino: tuple[str, ...] = ()) -> None:
    """Default (auto) settings against the official tiling, side by side, as fps and peak RSS; exports in
    ``cache`` (an artefact cache, as ``$RVRT_CACHE``). ``openvino``: OpenVINO runtimes also run at the default
    settings, after ONNX Runtime's, against it."""
    results = {}
    for case in cases:
        clip = real_clip(case, work)
        if case.first_use and first_use:
            with tempfile.TemporaryDirectory(dir=work) as fresh:
                first = real_run(case, "auto", clip, Path(fresh), work, threads)
            log(f"  {case.name:16s} auto, first use (export made for its tile): {first.seconds:7.1f} s, peak RSS "
                f"{first.peak_rss_gb:5.2f} GiB (the export's own peak included)")
            results[case.name, "first use"] = first
        for mode in ("official", "auto"):
            # Makes or finds the export, unmeasured: two frames choose the same tile as the clip on a roomy machine.
            real_run(case, mode, clip, cache, work, threads, frames=2)
        # Alternating, so that a change of load on a shared machine falls on both settings alike.
        for mode in ("official", "auto"):
            m = real_run(case, mode, clip, cache, work, threads)
            results[case.name, mode] = m
            log(f"  {case.name:16s} {mode:8s} {m.seconds:7.1f} s  peak RSS {m.peak_rss_gb:5.2f} GiB  {m.tiling}")
        for runtime in openvino:
            # The entry (validation, compiled models) made or found, unmeasured; then the measured run.
            real_run(case, "auto", clip, cache, work, threads, frames=2, runtime=runtime)
            m = real_run(case, "auto", clip, cache, work, threads, runtime=runtime)
            results[case.name, runtime] = m
            log(f"  {case.name:16s} {runtime:13s} {m.seconds:7.1f} s  peak RSS {m.peak_rss_gb:5.2f} GiB  {m.tiling}")
        if case.first_use:
            # The chooser within the official tiling's measured peak: what --memory buys when the whole frame
            # (the default on a roomy machine) needs more than the official tiling did.
            memory = f"{results[case.name, 'official'].peak_rss_gb:.2f}G"
            real_run(case, "auto", clip, cache, work, threads, memory)
            m = real_run(case, "auto", clip, cache, work, threads, memory)
            results[case.name, f"--memory {memory}"] = m
            log(f"  {case.name:16s} auto --memory {memory} {m.seconds:7.1f} s  peak RSS {m.peak_rss_gb:5.2f} GiB  "
                f"{m.tiling}")
    log(f"\nreal-size clips, ONNX Runtime, {threads} threads (end to end per process: start-up, decoding, encoding "
        f"included; peak RSS in GiB):")
    log(f"  {'case':16s} {'frames':>6s} {'official s':>10s} {'fps':>6s} {'GiB':>5s} {'auto s':>8s} {'fps':>6s} "
        f"{'GiB':>5s} {'speed-up':>8s}  auto tiling")
    for case in cases:
        official, auto = results[case.name, "official"], results[case.name, "auto"]
        log(f"  {case.name:16s} {case.frames:6d} {official.seconds:10.1f} {case.frames / official.seconds:6.3f} "
            f"{official.peak_rss_gb:5.2f} {auto.seconds:8.1f} {case.frames / auto.seconds:6.3f} "
            f"{auto.peak_rss_gb:5.2f} {official.seconds / auto.seconds:7.2f}x  {auto.tiling}")
        for (name, mode), m in results.items():
            if name == case.name and mode.startswith("--memory"):
                log(f"  {'':16s} auto {mode}: {m.seconds:.1f} s, {case.frames / m.seconds:.3f} fps, "
                    f"{m.peak_rss_gb:.2f} GiB, {official.seconds / m.seconds:.2f}x the official tiling's speed; "
                    f"{m.tiling}")
        for runtime in openvino:
            m = results[case.name, runtime]
            log(f"  {'':16s} {runtime} auto: {m.seconds:.1f} s, {case.frames / m.seconds:.3f} fps, "
                f"{m.peak_rss_gb:.2f} GiB, {auto.seconds / m.seconds:.2f}x ONNX Runtime's default run; {m.tiling}")
        first = results.get((case.name, "first use"))
        if first is not None:
            log(f"  {'':16s} first use of the default settings (export included): {first.seconds:.1f} s, of which "
                f"the export ~{first.seconds - auto.seconds:.0f} s")


def gda_flops(q_shape, clip: int, kernel_h: int, kernel_w: int) -> int:
    frames, _, channels, height, width = q_shape
    return frames * height * width * clip * kernel_h * kernel_w * (8 * 2 * channels + 2 * channels + 2 * channels)


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` run on meta tensors: the counter's aten formulas plus GDA analytically."""
    from torch.utils.flop_counter import FlopCounterMode

    import rvrt.gda  # noqa: F401  (registers the op)

    def gda_formula(q_shape, kv_shape, offset_shape, kernel_h, kernel_w, padding, heads, groups, clip,
                    out_shape=None):
        return gda_flops(q_shape, clip, kernel_h, kernel_w)

    with FlopCounterMode(display=False, custom_mapping={torch.ops.rvrt.guided_deform_attn: gda_formula}) as counter:
        with torch.no_grad():
            fn()
    return counter.get_total_flops()


def case_flops(case: Case) -> int:
    """FLOPs of restoring the case's clip (one window, one tile: the input is the tile)."""
    from rvrt import get_task

    model = random_model(case.task).to("meta")
    channels = get_task(case.task).config.in_channels
    lq = torch.zeros(1, case.frames, channels, case.size, case.size, device="meta")
    return count_flops(lambda: model(lq))


def uint8_frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))]).astype(np.int16)


def stage_table(case: Case, work: Path, threads: int, ceiling: float, log) -> None:
    """Each ONNX Runtime stage of the case's export: seconds per call, GFLOP/s, share of the ceiling."""
    from rvrt_engines.runtimes.onnxruntime import onnxruntime_stages
    from rvrt_engines.manifest import read_manifest
    from rvrt_export.stages import stage_specs

    export = export_for(case, work, log)
    manifest = read_manifest(export)
    model = random_model(case.task)
    specs = {spec.name: spec for spec in stage_specs(model, manifest["tile"], manifest["batch"])}
    meta_model = random_model(case.task).to("meta")
    stages = onnxruntime_stages(export, threads=threads)
    log(f"\nONNX Runtime stages of {export.name} ({threads} threads; best of 3 calls after one warm-up):")
    log(f"  {'stage':18s} {'s/call':>7s} {'GFLOP':>7s} {'GFLOP/s':>8s} {'of ceiling':>10s}")
    with stages:
        for name, runner in stages.runners.items():
            spec = specs[name]
            inputs = spec.example_inputs(torch.Generator().manual_seed(0))
            feed = {n: t.numpy() for n, t in zip(spec.input_names, inputs)}
            meta_inputs = [torch.zeros(shape, device="meta") for _, shape in spec.inputs]
            flops = count_flops(lambda: spec.module(meta_model)(*meta_inputs))
            runner.infer(feed)
            seconds = min(timed(lambda: runner.infer(feed))[1] for _ in range(3))
            rate = flops / seconds / 1e9
            log(f"  {name:18s} {seconds:7.3f} {flops / 1e9:7.2f} {rate:8.1f} {100 * rate / ceiling:9.0f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join([*CASES, *REAL_CASES]),
                        help=f"comma-separated, of {', '.join([*CASES, *REAL_CASES])}")
    parser.add_argument("--runtimes", help=f"comma-separated, of {', '.join(RUNTIMES)} [all; official where a "
                                           f"checkout is named]")
    parser.add_argument("--official-dir", type=Path, default=os.environ.get("RVRT_OFFICIAL_DIR") or None,
                        help="checkout of github.com/JingyunLiang/RVRT, for the official runtime [$RVRT_OFFICIAL_DIR]")
    parser.add_argument("--threads", type=int, default=2, help="threads of every runtime and of the ceiling [2]")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each case and runtime; the fastest is reported [1]")
    parser.add_argument("--stages", action="store_true", help="also time each ONNX Runtime stage of the SR export")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "cpu-bench")
    parser.add_argument("--no-first-use", action="store_true",
                        help="skip the first-use run of sr-176x144 (an export made in an empty cache, minutes)")
    parser.add_argument("--cache", type=Path, help="artefact cache of the real-size cases' exports [WORK_DIR/cache; "
                                                   "benchmarks/memory_model.py uses runs/cache]")
    args = parser.parse_args()
    chosen = [c for c in args.cases.split(",") if c]
    cases = [c for c in chosen if c not in REAL_CASES]
    real = [REAL_CASES[c] for c in chosen if c in REAL_CASES]
    runtimes = ([r for r in args.runtimes.split(",") if r] if args.runtimes
                else [r for r in RUNTIMES if r != "official" or args.official_dir])
    unknown = [c for c in cases if c not in CASES] + [r for r in runtimes if r not in RUNTIMES]
    unknown = [c for c in unknown if c]
    if unknown:
        parser.error(f"unknown case or runtime {', '.join(unknown)}; cases: {', '.join([*CASES, *REAL_CASES])}; "
                     f"runtimes: {', '.join(RUNTIMES)}")
    if "official" in runtimes and not (args.official_dir and (args.official_dir / "main_test_rvrt.py").is_file()):
        parser.error(f"--runtimes official needs --official-dir (or $RVRT_OFFICIAL_DIR) naming a checkout of "
                     f"github.com/JingyunLiang/RVRT; got {args.official_dir or 'none'}")
    if not Path("/usr/bin/time").exists():
        parser.error("needs /usr/bin/time (Debian package 'time') to read each run's peak memory")
    args.work_dir.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, flush=True)

    began = time.perf_counter()
    log(f"CPU benchmark, {args.threads} threads, {os.cpu_count()} CPUs visible; random seeded weights (outputs are "
        f"not restorations)")
    ceiling = matmul_ceiling_gflops(args.threads)
    log(f"float32 matmul 2048^3 ceiling: {ceiling:.1f} GFLOP/s (measured again at the end; the larger is used)")
    for case in (CASES[c] for c in cases):
        if "onnxruntime" in runtimes or set(OPENVINO) & set(runtimes):
            export_for(case, args.work_dir, log)
        for runtime in (r for r in runtimes if r in OPENVINO):
            # The first run on an export makes OpenVINO's entry (IR, validation, compiled models): timed apart.
            made = not any((args.work_dir / "cache").glob(f"{case.task}-*-{OPENVINO[runtime]}-openvino-*"))
            first = rvrt_run(runtime, case, input_frames(case, args.work_dir), args.work_dir, args.threads, log)
            if made:
                log(f"  {case.name:10s} {runtime:16s} first use (OpenVINO entry made: IR, validation against ONNX "
                    f"Runtime, compiled models) {first.seconds:.1f} s, peak RSS {first.peak_rss_gb:.2f} GB")

    results: dict[tuple[str, str], Measurement] = {}
    flops = {}
    for case in (CASES[c] for c in cases):
        frames = input_frames(case, args.work_dir)
        flops[case.name] = case_flops(case)
        for runtime in runtimes:
            runs = [rvrt_run(runtime, case, frames, args.work_dir, args.threads, log, args.official_dir)
                    for _ in range(args.repeats)]
            results[case.name, runtime] = min(runs, key=lambda m: m.seconds)

    again = matmul_ceiling_gflops(args.threads)
    if again > 1.2 * ceiling or ceiling > 1.2 * again:
        log(f"warning: the matmul ceiling moved from {ceiling:.1f} to {again:.1f} GFLOP/s during the run: the "
            f"machine is not quiet, timings are noisy")
    ceiling = max(ceiling, again)
    baselines = [r for r in ("eager-reference", "official", "onnxruntime") if r in runtimes]
    short = {"eager-reference": "vs eager-ref", "official": "vs official", "onnxruntime": "vs ORT f32"}
    if cases:
        log(f"\n{'case':10s} {'runtime':16s} {'end to end':>10s} {'fps':>6s} "
            + "".join(f"{short[b]:>13s}" for b in baselines)
            + f" {'peak RSS':>8s} {'GFLOP/s':>8s} {'of ceiling':>10s} {'max |diff| vs eager-reference':>30s}")
    for case in (CASES[c] for c in cases):
        reference = results.get((case.name, "eager-reference"))
        reference_frames = uint8_frames(reference.output) if reference else None
        for runtime in runtimes:
            m = results[case.name, runtime]
            rate = flops[case.name] / m.seconds / 1e9
            speedups = "".join(f"{results[case.name, b].seconds / m.seconds:12.2f}x" for b in baselines)
            diff = (f"{int(np.abs(uint8_frames(m.output) - reference_frames).max())} uint8 levels"
                    if reference_frames is not None else "-")
            log(f"{case.name:10s} {runtime:16s} {m.seconds:9.1f}s {case.frames / m.seconds:6.2f} {speedups} "
                f"{m.peak_rss_gb:6.2f}GB {rate:8.1f} {100 * rate / ceiling:9.0f} % {diff:>30s}")
    if real:
        log("\nreal-size clips:")
        real_cases(real, args.work_dir, args.cache or args.work_dir / "cache", args.threads, log,
                   first_use=not args.no_first_use, openvino=tuple(r for r in runtimes if r in OPENVINO))
        log(f"float32 matmul ceiling after the real-size cases: {matmul_ceiling_gflops(args.threads):.1f} GFLOP/s "
            f"(before them: {ceiling:.1f}): a change means the machine's load changed during them")
    if {"sr-8", "sr-32"} <= set(cases):
        log("\nsteady state, full-size SR 64x64 ((32 - 8) frames / (time of sr-32 - time of sr-8)):")
        steady = {}
        for runtime in runtimes:
            extra = results["sr-32", runtime].seconds - results["sr-8", runtime].seconds
            steady[runtime] = 24 / extra if extra > 0 else float("inf")
        for runtime in runtimes:
            rate = (flops["sr-32"] - flops["sr-8"]) / 24 * steady[runtime] / 1e9
            ratios = "".join(f", {steady[runtime] / steady[b]:.2f}x {b}" for b in baselines)
            log(f"  {runtime:16s} {steady[runtime]:6.2f} fps, {rate:6.1f} GFLOP/s ({100 * rate / ceiling:.0f} % of "
                f"ceiling){ratios}")
    if args.stages:
        stage_table(CASES["sr-8"], args.work_dir, args.threads, ceiling, log)
    log(f"\nbenchmark took {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
