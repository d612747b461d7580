"""Start-up of ``rvrt-run`` on an ONNX export: the full install against a serving-only one, in one run.

    python benchmarks/startup.py                   # ~4 min on 2 quiet cores (plus a first export, ~2 min)
    python benchmarks/startup.py --repeats 3       # fastest of 3 runs of each measurement

For the full install (this interpreter, every extra) and for a serving-only install (a venv
under ``--work-dir`` holding ``pip install -e .`` without extras, made on first use: no PyTorch,
no Ray), it prints:

- the import time of the CLI module (``python -X importtime -c "import rvrt_engines.cli"``),
  total and the largest top-level imports;
- ``rvrt-run --help``, wall time of the whole process;
- ``rvrt-run EXPORT FRAMES -o -`` (YUV4MPEG2 on standard output, read here) on 8 and 32 frames
  of 64x64, full-size SR, tile 64: the time from before the process starts to the first
  restored frame arriving on the pipe, to the end of the process, and its peak RSS
  (``/usr/bin/time -f %M``: its own, not this process's);
- the compute of that 8-frame window in a running process (the second restore of the same
  window): the first frame's time less this is what start-up, loading and I/O cost;
- the installed size of each install (the files of every distribution it pulls in, from their
  metadata; ``du`` of the serving venv as a check), and whether ``import torch`` fails there.

Every ``rvrt-run`` uses 2 threads (``--threads``) and the export made by ``benchmarks/cpu.py``
(shared work dir: seeded random weights, outputs are not restorations). One unmeasured run in
each install comes first, so that building the GDA kernel (once per machine) and cold file
caches are not counted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu import CASES, REPO, console_script, export_for, input_frames  # noqa: E402

FRAME_MARKER = b"FRAME"


def serving_venv(work: Path, log) -> Path:
    """A venv with the checkout installed (editable) without extras; made on first use."""
    venv = work / "serving-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"making the serving-only venv {venv} (pip install -e . without extras) ...")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", str(REPO)], check=True)
    return venv


def import_profile(python: str) -> tuple[float, list[tuple[str, float]]]:
    """(total seconds, [(top-level module, cumulative seconds)] largest first) of importing the CLI."""
    result = subprocess.run([python, "-X", "importtime", "-c", "import rvrt_engines.cli"], capture_output=True,
                            text=True, check=True)
    total, children = None, []
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)$", line)
        if not match:
            continue
        seconds, depth, name = int(match.group(1)) / 1e6, len(match.group(2)) // 2, match.group(3)
        if name == "rvrt_engines.cli":
            total = seconds
        elif depth == 1 and total is None:
            # Children are listed before their parent: these are what the CLI module imports directly.
            children.append((name, seconds))
    return total, sorted(children, key=lambda item: -item[1])[:5]


def help_seconds(rvrt_run: str) -> float:
    start = time.perf_counter()
    subprocess.run([rvrt_run, "--help"], capture_output=True, check=True)
    return time.perf_counter() - start


def stream_run(rvrt_run: str, export: Path, frames: Path, threads: int) -> tuple[float, float, float, int]:
    """(seconds to the first restored frame on the pipe, seconds to the process's end, peak RSS in GB,
    frames received) of one ``rvrt-run ... -o -`` process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        command = ["/usr/bin/time", "-f", "%M", "-o", report.name, rvrt_run, str(export), str(frames), "-o", "-",
                   "--threads", str(threads), "--quiet"]
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = None
        received = b""
        count = 0
        while chunk := process.stdout.read1(1 << 16):
            if first is None and FRAME_MARKER in received[-len(FRAME_MARKER):] + chunk:
                first = time.perf_counter() - start
            count += chunk.count(FRAME_MARKER)
            received = chunk
        errors = process.stderr.read().decode()
        if process.wait() != 0:
            raise SystemExit(f"failed: {' '.join(command)}\n{errors[-3000:]}")
        end = time.perf_counter() - start
        peak_gb = int(report.read().strip().splitlines()[-1]) / 1e6
    return first, end, peak_gb, count


WINDOW_SCRIPT = """
import sys, time
import numpy as np
from rvrt import Tiling, restore_window
from rvrt_engines.backends import load_backend
from rvrt_engines.restore import frame_to_array
from rvrt_engines.video import open_frames
backend = load_backend(sys.argv[1], threads=int(sys.argv[3]))
to_array = frame_to_array(None)
lq = np.stack([to_array(frame) for frame in open_frames(sys.argv[2])])[None]
tiling = Tiling(window=lq.shape[1], tile=backend.tile, batch=backend.batch)
with backend:
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        restore_window(backend.restore, lq, backend.config.upscale, tiling, backend.config.min_tile)
        seconds.append(time.perf_counter() - start)
print(*seconds)
"""


def window_compute(python: str, export: Path, frames: Path, threads: int) -> tuple[float, float]:
    """(first, second) restore of the whole window in one running process."""
    result = subprocess.run([python, "-c", WINDOW_SCRIPT, str(export), str(frames), str(threads)],
                            capture_output=True, text=True, check=True)
    first, second = map(float, result.stdout.split())
    return first, second


def installed_bytes(requirement: str) -> tuple[int, list[str]]:
    """Bytes on disk of the files of ``requirement``'s distribution and of everything it pulls in
    (extras followed), as this environment's package metadata lists them; and their names."""
    sizes: dict[str, int] = {}
    done = set()
    pending = [Requirement(requirement)]
    while pending:
        req = pending.pop()
        name = req.name.lower().replace("_", "-")
        if (name, frozenset(req.extras)) in done:
            continue
        done.add((name, frozenset(req.extras)))
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        if name not in sizes:
            sizes[name] = sum(path.stat().st_size for path in map(Path, (f.locate() for f in dist.files or []))
                              if path.is_file())
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": extra}) for extra in ("", *req.extras)):
                pending.append(sub)
    return sum(sizes.values()), sorted(sizes)


def du_bytes(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="rvrt-run --threads [2]")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each measurement; the fastest is kept [1]")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "cpu-bench",
                        help="shared with benchmarks/cpu.py: its export and frames are reused")
    args = parser.parse_args()
    if not Path("/usr/bin/time").exists():
        parser.error("needs /usr/bin/time (Debian package 'time') to read each run's peak memory")
    args.work_dir.mkdir(parents=True, exist_ok=True)

    def log(line: str = "") -> None:
        print(line, flush=True)

    began = time.perf_counter()
    export = export_for(CASES["sr-8"], args.work_dir, log)
    frames = {count: input_frames(CASES[f"sr-{count}"], args.work_dir) for count in (8, 32)}
    venv = serving_venv(args.work_dir / "startup", log)
    installs = {
        "full": (sys.executable, console_script("rvrt-run")),
        "serving-only": (str(venv / "bin" / "python"), str(venv / "bin" / "rvrt-run")),
    }
    torch_there = subprocess.run([installs["serving-only"][0], "-c", "import torch"], capture_output=True, text=True)
    log(f"serving-only venv: 'import torch' {'succeeds (!)' if torch_there.returncode == 0 else 'fails: ' + torch_there.stderr.strip().splitlines()[-1]}")

    def best(fn, key=lambda value: value):
        return min((fn() for _ in range(args.repeats)), key=key)

    results = {}
    for label, (python, rvrt_run) in installs.items():
        log(f"\n{label}: {python}")
        stream_run(rvrt_run, export, frames[8], args.threads)   # unmeasured: kernel build, file caches
        total, top = best(lambda: import_profile(python), key=lambda value: value[0])
        log(f"  import rvrt_engines.cli: {total:.3f} s; largest top-level imports: "
            + ", ".join(f"{name} {seconds:.3f}" for name, seconds in top))
        help_time = best(lambda: help_seconds(rvrt_run))
        log(f"  rvrt-run --help: {help_time:.3f} s")
        runs = {}
        for count in (8, 32):
            runs[count] = best(lambda: stream_run(rvrt_run, export, frames[count], args.threads),
                               key=lambda value: value[1])
            first, end, peak, received = runs[count]
            log(f"  {count} frames: first frame {first:.2f} s, end {end:.2f} s, peak RSS {peak:.2f} GB "
                f"({received} frames received)")
        results[label] = (total, help_time, runs)

    python = installs["full"][0]
    first_window, warm_window = best(lambda: window_compute(python, export, frames[8], args.threads),
                                     key=lambda value: value[1])
    log(f"\n8-frame window restored in a running process: first {first_window:.2f} s, again {warm_window:.2f} s")

    serving_size, serving_names = installed_bytes("rvrt-deploy")
    full_size, full_names = installed_bytes("rvrt-deploy[all,test]")
    site = next((venv / "lib").glob("python*/site-packages"))
    log(f"installed size: serving-only {serving_size / 1e6:.0f} MB ({len(serving_names)} distributions; du of the "
        f"venv's site-packages {du_bytes(site) / 1e6:.0f} MB), full {full_size / 1e6:.0f} MB "
        f"({len(full_names)} distributions): {serving_size / full_size:.2f} of the full install")

    log(f"\n{'install':14s} {'import CLI':>10s} {'--help':>7s} {'8f first':>9s} {'8f end':>7s} {'8f RSS':>7s} "
        f"{'32f end':>8s} {'32f RSS':>8s} {'24f past 8':>10s} {'first - window':>15s}")
    for label, (total, help_time, runs) in results.items():
        steady = runs[32][1] - runs[8][1]
        log(f"{label:14s} {total:9.2f}s {help_time:6.2f}s {runs[8][0]:8.2f}s {runs[8][1]:6.2f}s "
            f"{runs[8][2]:6.2f}G {runs[32][1]:7.2f}s {runs[32][2]:7.2f}G {steady:9.2f}s "
            f"{runs[8][0] - warm_window:14.2f}s")
    log(f"\nbenchmark took {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
