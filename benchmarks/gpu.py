"""The CUDA runtime on one GPU, measured side by side in one run:

1. GDA alone: the fused CUDA kernel (rvrt_plugins.gda_cuda) against the pure-PyTorch reference,
   float32 and float16: milliseconds per call, peak GPU memory and each one's largest difference
   from the reference computed in float64 on the same inputs, at RVRT's widths on 64x64
   features and at the feature sizes of whole frames (SR: 320x180 LR, the paper's setting;
   denoising: 854x480, features at a quarter).
2. The whole network, restoring a generated clip through the recurrent driver with the task's
   official tiling: frames per second and peak GPU memory of eager float32 with the reference
   GDA (RVRT_GDA=reference), eager float32 with the fused kernel, and eager float16 (the float16
   export's precision policy, rvrt_engines.runtimes.pytorch_cuda), with how far each is from float32.

    python benchmarks/gpu.py                       # everything
    python benchmarks/gpu.py --skip-model          # GDA only
    python benchmarks/gpu.py --skip-gda            # the whole network only
    python benchmarks/gpu.py --frames 10 --batch 4 --tasks sr
    python benchmarks/gpu.py --skip-gda --tasks denoise --json denoise.json

Random weights (seeded): this measures speed and memory, not restoration quality. ``--json``
also writes every figure printed, rewritten after each row (so a run stopped half-way keeps the
rows it finished). Exit status 1 with a message where there is no CUDA GPU or the kernel cannot be
built (the machine lacks something), 2 for bad options. benchmarks/gpu_check.py runs it on the
project's GPU machine, a part at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

NAME = "benchmarks/gpu.py"
# (label, task, C (projected channels), feature height, feature width)
GDA_SIZES = [
    ("SR, 64x64 features", "sr", 288, 64, 64),
    ("denoise, 64x64 features", "denoise", 384, 64, 64),
    ("SR, 320x180 LR frame", "sr", 288, 180, 320),
    ("denoise, 854x480 frame (features 214x120)", "denoise", 384, 120, 214),
]
# task -> (width, height) of the input frames of the whole-network runs.
MODEL_SIZES = {"sr": (320, 180), "denoise": (854, 480)}


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    return (frames.clamp(0, 1) * 255).round()


def fail(message: str, status: int) -> None:
    """One line on standard error, then exit: 1 where this machine lacks something, 2 for bad options."""
    print(f"{NAME}: {message}", file=sys.stderr)
    sys.exit(status)


class Figures:
    """Every figure printed, as JSON at ``path`` (None: nowhere), rewritten whole after each row
    through a temporary name, so the file is always complete."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data = {"device": None, "gda": [], "model": []}

    def save(self) -> None:
        if self.path is None:
            return
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(partial, self.path)


def mib(size: int | None) -> float | None:
    return None if size is None else round(size / 2**20, 1)


def measure(fn, repeats: int, warm_up=None):
    """(result, seconds per call (median), peak GPU bytes allocated while timing: everything
    allocated then counts, inputs and weights included). ``warm_up`` (default ``fn``) runs first,
    untimed: library loading, kernel selection, allocator growth."""
    (warm_up or fn)()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / 1000)
    return result, sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated()


@contextlib.contextmanager
def gda_implementation(name: str):
    """RVRT_GDA for the op inside (rvrt.gda reads it at every call)."""
    saved = os.environ.get("RVRT_GDA")
    os.environ["RVRT_GDA"] = name
    try:
        yield
    finally:
        if saved is None:
            del os.environ["RVRT_GDA"]
        else:
            os.environ["RVRT_GDA"] = saved


def cell(value: float | None, spec: str) -> str:
    """``value`` formatted, or OOM in its width where the reference ran out of memory."""
    return "OOM".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)


def largest_difference(computed: torch.Tensor, exact: torch.Tensor) -> float:
    return (computed.double() - exact).abs().max().item()


def gda_benchmark(repeats: int, figures: Figures) -> None:
    from rvrt import get_task
    from rvrt.gda import guided_deform_attn_reference
    from rvrt_plugins.gda_cuda import guided_deform_attn_cuda

    print("\nGDA alone, one clip of 2 frames (ms per call; peak MiB allocated, inputs included)")
    print("(fused err, ref err: largest difference from the reference computed in float64 on the same inputs)")
    print(f"{'size':44} {'dtype':8} {'fused ms':>9} {'ref ms':>9} {'speed-up':>8} {'fused MiB':>10} "
          f"{'ref MiB':>9} {'fused err':>9} {'ref err':>9}")
    for label, task_name, channels, height, width in GDA_SIZES:
        config = get_task(task_name).config
        kh, kw = config.attention_window
        heads, groups, clip = config.attention_heads, config.deformable_groups, config.clip_size
        gen = torch.Generator(device="cuda").manual_seed(0)
        for dtype in (torch.float32, torch.float16):
            q = torch.randn(clip, 1, channels, height, width, generator=gen, device="cuda", dtype=dtype)
            kv = torch.randn(1, clip, 2 * channels, height, width, generator=gen, device="cuda", dtype=dtype)
            offset = 3 * torch.randn(clip, clip * groups * kh * kw * 2, height, width, generator=gen, device="cuda",
                                     dtype=dtype)
            args = (q, kv, offset, kh, kw, kh // 2, heads, groups, clip)
            fused, fused_s, fused_bytes = measure(lambda: guided_deform_attn_cuda(*args), repeats)
            row = dict(size=label, task=task_name, channels=channels, height=height, width=width,
                       dtype=str(dtype).removeprefix("torch."), fused_ms=fused_s * 1e3, fused_peak_mib=mib(fused_bytes),
                       reference_ms=None, reference_peak_mib=None, speed_up=None, memory_ratio=None,
                       fused_max_abs_vs_float64=None, reference_max_abs_vs_float64=None)
            reference = None
            try:
                reference, ref_s, ref_bytes = measure(lambda: guided_deform_attn_reference(*args), repeats)
                row.update(reference_ms=ref_s * 1e3, reference_peak_mib=mib(ref_bytes), speed_up=ref_s / fused_s,
                           memory_ratio=ref_bytes / fused_bytes)
                exact = guided_deform_attn_reference(*(t.double() for t in args[:3]), *args[3:])
                row.update(fused_max_abs_vs_float64=largest_difference(fused, exact),
                           reference_max_abs_vs_float64=largest_difference(reference, exact))
                del exact
            except torch.cuda.OutOfMemoryError:
                pass   # the columns left out say so: OOM
            figures.data["gda"].append(row)
            figures.save()
            print(f"{label:44} {row['dtype']:8} {fused_s * 1e3:9.2f} {cell(row['reference_ms'], '9.2f')} "
                  f"{cell(row['speed_up'], '7.1f')}x {row['fused_peak_mib']:10.0f} "
                  f"{cell(row['reference_peak_mib'], '9.0f')} {cell(row['fused_max_abs_vs_float64'], '9.1e')} "
                  f"{cell(row['reference_max_abs_vs_float64'], '9.1e')}")
            del fused, reference
            torch.cuda.empty_cache()


def model_benchmark(tasks: list[str], frames: int, batch: int, figures: Figures) -> None:
    from rvrt import Tiling, build_model, get_task, restore_tiled, run_recurrent
    from rvrt_engines.runtimes.pytorch_cuda import cuda_stages
    from rvrt_engines.synthetic import moving_photo_frames

    for task_name in tasks:
        task = get_task(task_name)
        width, height = MODEL_SIZES[task_name]
        model = build_model(task.id, random_weights=True, seed=0)
        clip = torch.from_numpy(moving_photo_frames(frames, height, width, seed=0)).permute(0, 3, 1, 2)
        lq = clip.float().div(255).unsqueeze(0)
        if task.kind == "denoise":
            lq = torch.cat([lq, torch.full_like(lq[:, :, :1], 20 / 255)], 2)
        tiling = Tiling(window=0, tile=task.tile[1], tile_overlap=task.tile_overlap[1], batch=batch)
        print(f"\n{task.short}: {frames} frames {width}x{height}, tile {tiling.tile} (overlap {tiling.tile_overlap}), "
              f"{batch} tiles per call")
        print("(peak MiB: all GPU memory allocated during the run, weights included; differences against "
              "eager float32 with the fused GDA)")
        print(f"{'runtime':40} {'fps':>8} {'ms/frame':>9} {'peak MiB':>9} {'vs first':>9} {'max abs vs float32':>19} "
              f"{'uint8 levels':>12}")
        entry = dict(task=task_name, frames=frames, width=width, height=height, tile=tiling.tile,
                     tile_overlap=tiling.tile_overlap, batch=batch, runs=[])
        figures.data["model"].append(entry)
        runs = [("eager float32, reference GDA", "float32", "reference"),
                ("eager float32, fused GDA", "float32", "native"),
                ("eager float16, fused GDA", "float16", "native")]
        restored_by_run = []
        for label, precision, implementation in runs:
            stages = cuda_stages(copy.deepcopy(model), precision)

            def restore(windows):
                return run_recurrent(stages, windows.cuda()).cpu()

            with torch.no_grad(), gda_implementation(implementation):
                restored, seconds, peak = measure(lambda: restore_tiled(restore, lq, model.config, tiling), 1,
                                                  warm_up=lambda: restore_tiled(restore, lq[:, :2], model.config,
                                                                                tiling))
            entry["runs"].append(dict(runtime=label, precision=precision, gda=implementation, fps=frames / seconds,
                                      ms_per_frame=seconds / frames * 1e3, peak_mib=mib(peak)))
            figures.save()
            restored_by_run.append(restored)
            del stages
            torch.cuda.empty_cache()
        exact = restored_by_run[1]
        for run, restored in zip(entry["runs"], restored_by_run):
            run.update(max_abs_vs_float32=(restored - exact).abs().max().item(),
                       uint8_levels_vs_float32=(to_uint8(restored) - to_uint8(exact)).abs().max().item())
            print(f"{run['runtime']:40} {run['fps']:8.2f} {run['ms_per_frame']:9.1f} {run['peak_mib']:9.0f} "
                  f"{run['fps'] / entry['runs'][0]['fps']:8.2f}x {run['max_abs_vs_float32']:19.1e} "
                  f"{run['uint8_levels_vs_float32']:12.0f}")
        figures.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(MODEL_SIZES), choices=list(MODEL_SIZES))
    parser.add_argument("--frames", type=int, default=6, help="frames of the generated clip (whole-network runs)")
    parser.add_argument("--batch", type=int, default=4, help="tiles per call in the whole-network runs")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per GDA measurement (median)")
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--skip-model", action="store_true", help="measure GDA alone")
    parts.add_argument("--skip-gda", action="store_true", help="measure the whole network alone")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.frames < 2 or args.batch < 1 or args.repeats < 1:
        fail(f"--frames must be >= 2, --batch and --repeats >= 1 (got {args.frames}, {args.batch}, {args.repeats})", 2)
    if args.json is not None and not args.json.parent.is_dir():
        fail(f"--json {args.json}: the folder {args.json.parent} does not exist", 2)
    if not torch.cuda.is_available():
        build = ("this PyTorch has no CUDA" if torch.version.cuda is None
                 else f"PyTorch (CUDA {torch.version.cuda}) sees none")
        fail(f"no CUDA GPU ({build}): this benchmark measures the CUDA runtime; run it on a machine with an "
             f"NVIDIA GPU and the CUDA build of torch {torch.__version__.split('+')[0]}", 1)

    from rvrt_plugins.build import PluginBuildError
    from rvrt_plugins.gda_cuda import kernel_library
    try:
        started = time.perf_counter()
        library = kernel_library()
    except PluginBuildError as error:
        fail(f"the fused GDA kernel cannot be built, so there is nothing to compare: {error}", 1)
    properties = torch.cuda.get_device_properties(0)
    print(f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, compute capability "
          f"{properties.major}.{properties.minor}; torch {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"GDA kernel library {library} ({time.perf_counter() - started:.1f} s to build or find)")
    figures = Figures(args.json)
    figures.data["device"] = dict(name=properties.name, memory_gib=round(properties.total_memory / 2**30, 1),
                                  compute_capability=f"{properties.major}.{properties.minor}",
                                  torch=torch.__version__, cuda=torch.version.cuda, library=str(library))
    figures.save()
    if not args.skip_gda:
        gda_benchmark(args.repeats, figures)
    if not args.skip_model:
        model_benchmark(args.tasks, args.frames, args.batch, figures)


if __name__ == "__main__":
    main()
