"""GDA on the CPU at full size: PyTorch reference, ONNX Runtime function body, CPU twin, fused kernel.

    python benchmarks/gda_cpu.py --threads 2 --repeats 5

For each architecture (SR: C = 288, head dim 24; deblur/denoise: C = 384, head dim 32; 12 heads,
12 groups, 3x3 window, clip 2, one clip pair = 2 query frames, 64x64 features) every
implementation runs on the same inputs, alternating, --repeats times, each time once after a pause
(the first call after idling: caches cold, cores waking) and then --back-to-back calls in a row
(as in a pipeline, where the kernel follows other work at once); the median time per call of each
is printed with its ratio to the fused kernel, the same for process CPU time (all threads; on a
shared machine less disturbed by other processes than wall time), and the max abs difference to
the float32 PyTorch reference. Offsets: --offsets random (std 3 px, independent per pixel: scattered reads, the hard
case) or smooth (a smooth field plus +-1 px residue, like flow-guided offsets). --memory adds
the peak memory each implementation adds over its inputs (one call, each in a fresh process;
Linux only).
The CPU twin is single-threaded by design and slow: it runs once.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from rvrt.config import DEBLUR, SR
from rvrt.gda import guided_deform_attn_reference
from rvrt_export.gda_onnx import DOMAIN, OP_TYPE, attach_gda_function, register_gda_schema
from rvrt_plugins.gda_cpu import guided_deform_attn_cpu, guided_deform_attn_twin

ARCHITECTURES = {"sr": SR, "deblur-denoise": DEBLUR}
IMPLEMENTATIONS = ("reference", "onnxruntime", "twin", "fused")
SETTLE_SECONDS = 0.2


def gda_attributes(config) -> dict[str, int]:
    kh, kw = config.attention_window
    return dict(kernel_h=kh, kernel_w=kw, padding=kh // 2, heads=config.attention_heads,
                groups=config.deformable_groups, clip=config.clip_size)


def make_inputs(config, size: int, offsets: str, seed: int = 0):
    """q, kv, offset for one clip pair of the GDA inside ``config``'s network (C = 2 x embed)."""
    channels = 2 * config.embed_dims[1]
    attributes = gda_attributes(config)
    clip, groups = attributes["clip"], attributes["groups"]
    points = attributes["kernel_h"] * attributes["kernel_w"]
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(clip, 1, channels, size, size, generator=gen)
    kv = torch.randn(1, clip, 2 * channels, size, size, generator=gen)
    shape = (clip, clip * groups * points * 2, size, size)
    if offsets == "random":
        offset = 3.0 * torch.randn(shape, generator=gen)
    else:
        coarse = 4.0 * torch.randn(clip, 2, max(size // 16, 1), max(size // 16, 1), generator=gen)
        field = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")   # (clip, dy/dx, H, W)
        field = field[:, None].expand(clip, clip * groups * points, 2, size, size).reshape(shape)
        offset = field + torch.rand(shape, generator=gen) * 2 - 1
    return q, kv, offset, attributes


class OnnxRuntimeGda:
    """The exporter's GDA function body as a one-node model in an ONNX Runtime session."""

    def __init__(self, q, kv, offset, attributes, threads: int):
        register_gda_schema()
        node = helper.make_node(OP_TYPE, ["q", "kv", "offset"], ["out"], domain=DOMAIN, **attributes)
        inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(t.shape))
                  for name, t in zip(node.input, (q, kv, offset))]
        output = helper.make_tensor_value_info("out", TensorProto.FLOAT, list(q.shape))
        model = attach_gda_function(helper.make_model(helper.make_graph([node], "gda", inputs, [output]),
                                                      opset_imports=[helper.make_opsetid("", 20)]))
        onnx.checker.check_model(model, full_check=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.feeds = {"q": q.numpy(), "kv": kv.numpy(), "offset": offset.numpy()}

    def __call__(self):
        return torch.from_numpy(self.session.run(None, self.feeds)[0])


def timed_call(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def implementation(name: str, q, kv, offset, attributes, threads: int):
    """A no-argument callable running one GDA call with ``name``."""
    if name == "reference":
        return lambda: guided_deform_attn_reference(q, kv, offset, **attributes)
    if name == "onnxruntime":
        return OnnxRuntimeGda(q, kv, offset, attributes, threads)
    if name == "twin":
        return lambda: guided_deform_attn_twin(q, kv, offset, *attributes.values())
    return lambda: guided_deform_attn_cpu(q, kv, offset, *attributes.values(), threads=threads)


def peak_memory_mb(name: str, architecture: str, args) -> float:
    """Peak resident memory one call of ``name`` adds over its inputs, measured in a fresh process."""
    command = [sys.executable, __file__, "--measure-memory", name, "--architectures", architecture,
               "--size", str(args.size), "--offsets", args.offsets, "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS: resident now, VmHWM: resident peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure_memory(name: str, architecture: str, args) -> float:
    """Linux: the resident peak during one call minus the resident size before it. (getrusage's
    peak would not do: a child process starts with its parent's.)"""
    q, kv, offset, attributes = make_inputs(ARCHITECTURES[architecture], args.size, args.offsets)
    run = implementation(name, q, kv, offset, attributes, args.threads)
    Path("/proc/self/clear_refs").write_text("5")       # restarts VmHWM from the current size
    before = status_kb("VmRSS")
    run()
    return (status_kb("VmHWM") - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--back-to-back", type=int, default=3, help="calls in a row after each paused call [3]")
    parser.add_argument("--size", type=int, default=64, help="feature height and width")
    parser.add_argument("--offsets", choices=("random", "smooth"), default="random")
    parser.add_argument("--architectures", nargs="+", choices=sorted(ARCHITECTURES), default=list(ARCHITECTURES))
    parser.add_argument("--memory", action="store_true", help="also measure peak memory per implementation")
    parser.add_argument("--measure-memory", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure_memory:
        print(measure_memory(args.measure_memory, args.architectures[0], args))
        return

    for architecture in args.architectures:
        q, kv, offset, attributes = make_inputs(ARCHITECTURES[architecture], args.size, args.offsets)
        runs = {name: implementation(name, q, kv, offset, attributes, args.threads) for name in IMPLEMENTATIONS}
        outputs = {name: run() for name, run in runs.items()}             # warm-up: builds, first touches
        times = {name: [] for name in IMPLEMENTATIONS}
        cpu_times = {name: [] for name in IMPLEMENTATIONS}
        in_a_row = {name: [] for name in IMPLEMENTATIONS}
        for repeat in range(args.repeats):
            for name, run in runs.items():
                if name == "twin" and repeat > 0:
                    continue
                # Thread pools that spin after a call (ONNX Runtime's, OpenMP's) would otherwise eat
                # into the next implementation's time.
                time.sleep(SETTLE_SECONDS)
                start, cpu_start = time.perf_counter(), time.process_time()
                run()
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
                for _ in range(args.back_to_back if name != "twin" else 0):
                    in_a_row[name].append(timed_call(run))
        fused = statistics.median(times["fused"])
        fused_in_a_row = statistics.median(in_a_row["fused"]) if in_a_row["fused"] else float("nan")
        print(f"\n{architecture}: C={q.shape[2]}, heads {attributes['heads']}, groups {attributes['groups']}, "
              f"{args.size}x{args.size}, {q.shape[0]} query frames, {args.offsets} offsets, {args.threads} threads, "
              f"median of {args.repeats}")
        memory = {name: peak_memory_mb(name, architecture, args) if args.memory else float("nan")
                  for name in IMPLEMENTATIONS}
        fused_cpu = statistics.median(cpu_times["fused"])
        print(f"{'implementation':<14} {'s/call':>9} {'x fused':>8} {'in a row':>9} {'x fused':>8} {'CPU s/call':>11} "
              f"{'x fused':>8} {'max |diff| to reference':>24} {'peak MB added':>14}")
        for name in IMPLEMENTATIONS:
            seconds, cpu_seconds = statistics.median(times[name]), statistics.median(cpu_times[name])
            row = statistics.median(in_a_row[name]) if in_a_row[name] else float("nan")
            difference = (outputs[name].double() - outputs["reference"].double()).abs().max().item()
            print(f"{name:<14} {seconds:>9.4f} {seconds / fused:>8.2f} {row:>9.4f} {row / fused_in_a_row:>8.2f} "
                  f"{cpu_seconds:>11.4f} {cpu_seconds / fused_cpu:>8.2f} {difference:>24.2e} {memory[name]:>14.0f}")
        spread = (min(times["fused"]), max(times["fused"]))
        print(f"fused kernel: min {spread[0]:.4f} s, max {spread[1]:.4f} s over the repeats (shared machine noise)")


if __name__ == "__main__":
    main()
