"""One prepared run of the whole GPU path on the project's GPU machine, in at most 7 minutes.

That machine (one H100 or H200, Python 3.12, nvcc 13, PyTorch 2.11 with CUDA 13; no network, no
PyAV, array-api-compat, Polygraphy or TensorRT) is lent to a session for minutes only, so every
step here was rehearsed on a CPU machine first and each one has its own time limit: one hang
cannot eat the run.

Where pip has a network, first stage the wheels (``bash benchmarks/gpu_stage.sh``: fills the
ignored ``.whl/``). Then make this one device call from the repository root:

    run(command='PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py "$OUT"', timeout_s=420, carry=[".whl"])

A session has 15 minutes of device time in all, the machine's start (a minute or more) counted:
one full run leaves room for one shorter rerun after a fix made on the CPU side, e.g.
``python3 benchmarks/gpu_check.py "$OUT" --steps tests,gda --budget 150`` with timeout_s=180
(installs and versions always run; a machine idle for 30 s is given back and restarts bare).

Steps (each one's output goes to the log and to standard output as it comes):

1. wheels   the carried ``.whl/*.whl`` into /tmp/site (``pip --target``; on PYTHONPATH after)
2. project  ``pip install --no-deps --no-build-isolation -e .``; where that fails, the packages
            are linked into /tmp/site instead (the tests and benchmarks need no entry points)
3. versions nvidia-smi, nvcc, cmake, Python, torch and the GPU it sees. No GPU: stops here, status 1
4. build    the kernel-only CUDA library (``python -m rvrt_plugins.gda_cuda``) for this GPU
5. tests    ``pytest -m gpu`` on every test file holding GPU tests, each test limited
            (pytest-timeout); the TensorRT ones skip with the reason
6. gda      ``benchmarks/gpu.py --skip-model``: GDA alone at full size, float32 and float16
7. sr       ``benchmarks/gpu.py --skip-gda --tasks sr``: the network on 320x180, float32 and float16
8. denoise  ``benchmarks/gpu.py --skip-gda --tasks denoise``: the network on 854x480

Writes into OUTPUT (default $OUT), rewritten after every step so that a run stopped from outside
keeps what it did: ``gpu_check.log`` (every command and its output), ``gpu_check.json`` (the
machine, each step's status, time and message, the test results with failure messages, every
figure of benchmarks/gpu.py and the issue's goals judged on them), ``pytest.xml`` (JUnit).

Exit status: 0 every step passed; 1 a step failed or this machine lacks something (no GPU, no
carried wheels); 2 bad usage (no output folder).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

NAME = "benchmarks/gpu_check.py"
REPOSITORY = Path(__file__).resolve().parents[1]
WHEELS = REPOSITORY / ".whl"
SITE = Path("/tmp/site")
BUDGET_S = 390
# Seconds per step; every step also stops at the run's budget.
LIMITS = {"wheels": 60, "project": 90, "versions": 60, "build": 120, "tests": 150, "gda": 75, "sr": 100,
          "denoise": 100}
MEASURING_STEPS = ("build", "tests", "gda", "sr", "denoise")
TEST_TIMEOUT_S = 90
STOP_GRACE_S = 5


@dataclass
class Step:
    name: str
    command: list[str]
    limit_s: float
    status: str = "not run"
    returncode: int | None = None
    seconds: float | None = None
    message: str | None = None
    output: list[str] = field(default_factory=list, repr=False)

    def record(self) -> dict:
        return dict(name=self.name, command=shlex.join(self.command), limit_s=self.limit_s, status=self.status,
                    returncode=self.returncode, seconds=None if self.seconds is None else round(self.seconds, 1),
                    message=self.message)


class Run:
    """The log, the report and the clock of one run."""

    def __init__(self, output: Path, budget_s: float):
        self.output = output
        self.deadline = time.monotonic() + budget_s
        self.started = time.monotonic()
        self.log = open(output / "gpu_check.log", "w", buffering=1)
        self.report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "budget_s": budget_s,
                       "machine": None, "steps": [], "tests": None, "figures": {"gda": [], "model": []},
                       "kernel_max_abs_vs_float64": None, "goals": None, "failures": [], "seconds": None}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")

    def save(self) -> None:
        self.report["seconds"] = round(time.monotonic() - self.started, 1)
        judge(self.report)
        partial = self.output / "gpu_check.json.partial"
        partial.write_text(json.dumps(self.report, indent=1) + "\n")
        os.replace(partial, self.output / "gpu_check.json")

    def fail(self, step: str, message: str) -> None:
        self.report["failures"].append(dict(step=step, message=message))

    def run(self, step: Step) -> Step:
        """Runs ``step`` in its own process group, teeing its output, within its limit and the budget."""
        left = self.deadline - time.monotonic()
        limit = min(step.limit_s, left)
        self.say(f"\n=== {step.name}: {shlex.join(step.command)}  (limit {limit:.0f} s)")
        if left < 5:
            step.status, step.message = "skipped", "no time left in the run's budget"
        else:
            self._execute(step, limit)
        self.say(f"=== {step.name}: {step.status} in {step.seconds or 0:.1f} s"
                 + (f": {step.message}" if step.message and step.status != "passed" else ""))
        self.report["steps"].append(step.record())
        if step.status != "passed":
            self.fail(step.name, step.message or step.status)
        self.save()
        return step

    def _execute(self, step: Step, limit: float) -> None:
        started = time.monotonic()
        try:
            process = subprocess.Popen(step.command, cwd=REPOSITORY, env=self.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, errors="replace", process_group=0)
        except OSError as error:
            step.status, step.message, step.seconds = "failed", f"could not start: {error}", 0.0
            return
        reader = threading.Thread(target=self._tee, args=(process, step), daemon=True)
        reader.start()
        try:
            step.returncode = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            stop(process)
            step.returncode = process.returncode
            step.status, step.message = "timed out", f"stopped after {limit:.0f} s (its time limit)"
        reader.join(timeout=STOP_GRACE_S)
        step.seconds = time.monotonic() - started
        if step.status != "timed out":
            step.status = "passed" if step.returncode == 0 else "failed"
            if step.returncode != 0:
                last = [line for line in step.output if line.strip()][-1:] or ["(no output)"]
                step.message = f"exit status {step.returncode}: {last[0].strip()}"

    def _tee(self, process: subprocess.Popen, step: Step) -> None:
        for line in process.stdout:
            line = line.rstrip("\n")
            step.output.append(line)
            self.say(line)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the step's process group; once its leader is gone or the grace period is over,
    SIGKILL to whatever is left of the group (children that outlive their parent, or ignore SIGTERM)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# -- the steps ------------------------------------------------------------------------------------

def install(run: Run, wheel_dir: Path) -> bool:
    """Steps 1-2: the carried wheels into SITE, then the project. False where the run cannot go on."""
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        message = (f"no wheels in {wheel_dir}: stage them with `bash benchmarks/gpu_stage.sh` where pip has a "
                   f"network, and name \".whl\" in the device call's carry")
        run.say(f"{NAME}: {message}")
        run.report["steps"].append(Step("wheels", [], LIMITS["wheels"], status="failed", message=message).record())
        run.fail("wheels", message)
        return False
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(SITE)]
    if run.run(Step("wheels", [*pip, *map(str, wheels)], LIMITS["wheels"])).status != "passed":
        return False
    run.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")]))
    project = run.run(Step("project", [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                                       "--no-build-isolation", "-e", str(REPOSITORY)], LIMITS["project"]))
    if project.status == "passed":
        return True
    linked = link_packages(SITE)
    run.say(f"pip could not install the project; linked its packages into {SITE} instead: {', '.join(linked)}")
    run.report["failures"][-1]["message"] += f" (went on with the packages linked into {SITE})"
    return True


def link_packages(site: Path) -> list[str]:
    """The project's import packages as symbolic links in ``site`` (pyproject's package-dir map)."""
    config = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["setuptools"]
    linked = []
    for package, folder in config["package-dir"].items():
        link = site / package
        if not link.exists():
            link.symlink_to(REPOSITORY / folder, target_is_directory=True)
        linked.append(package)
    return linked


def probe() -> int:
    """Step 3, run as a child with the installed packages: versions as one JSON line after
    ``MACHINE``, then status 1 and one line where torch sees no CUDA GPU."""
    machine = {"python": platform.python_version(), "platform": platform.platform()}
    smi = shutil.which("nvidia-smi")
    if smi:
        query = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm",
                                "--format=csv,noheader"], capture_output=True, text=True)
        machine["nvidia_smi"] = (query.stdout or query.stderr).strip()
    else:
        machine["nvidia_smi"] = None
    for tool in ("cmake", "ninja"):
        found = shutil.which(tool)
        machine[tool] = found and subprocess.run([found, "--version"], capture_output=True,
                                                 text=True).stdout.splitlines()[0]
    machine["pytest_timeout"] = importlib.util.find_spec("pytest_timeout") is not None
    # Imported here, in the child: the orchestrating process runs before the project is installed.
    try:
        import torch
    except ImportError as error:
        print(f"{NAME}: PyTorch cannot be imported ({error}): run this with the Python that holds the CUDA "
              f"build of torch", flush=True)
        return 1
    from rvrt_plugins.build import PluginBuildError
    from rvrt_plugins.gda_cuda import find_nvcc

    try:
        nvcc = find_nvcc()
        machine["nvcc"] = f"{nvcc}: " + subprocess.run([nvcc, "--version"], capture_output=True,
                                                       text=True).stdout.strip().splitlines()[-1]
    except PluginBuildError as error:
        machine["nvcc"] = f"missing: {error}"
    machine.update(torch=torch.__version__, torch_cuda=torch.version.cuda, gpu=None,
                   project=str(Path(importlib.util.find_spec("rvrt").origin).parent.parent))
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        machine.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                       compute_capability=f"{properties.major}.{properties.minor}",
                       multiprocessors=properties.multi_processor_count,
                       cudnn=torch.backends.cudnn.version())
    print("MACHINE " + json.dumps(machine))
    for key, value in machine.items():
        print(f"{key:16} {value}")
    if machine["gpu"] is None:
        build = "a build without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        print(f"{NAME}: no CUDA GPU: torch {torch.__version__} ({build}) sees none, so nothing here can be "
              f"measured; run this on the GPU machine", flush=True)
        return 1
    return 0


def gpu_test_files() -> list[str]:
    """The test files holding tests marked gpu."""
    return [str(path.relative_to(REPOSITORY)) for path in sorted((REPOSITORY / "tests").glob("test_*.py"))
            if "mark.gpu" in path.read_text()]


def read_junit(path: Path) -> dict | None:
    """Counts, failures (with their messages) and skip reasons from pytest's JUnit XML."""
    if not path.exists():
        return None
    counts = dict(passed=0, failed=0, errors=0, skipped=0)
    failures, skipped = [], {}
    for case in ElementTree.parse(path).iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        outcome = next(iter(case), None)
        if outcome is None or outcome.tag in ("system-out", "system-err", "properties"):
            counts["passed"] += 1
        elif outcome.tag == "skipped":
            counts["skipped"] += 1
            reason = outcome.get("message", "")
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            counts["failed" if outcome.tag == "failure" else "errors"] += 1
            failures.append(dict(test=test, kind=outcome.tag, message=(outcome.get("message") or "")[:2000]))
    return dict(counts, failures=failures, skip_reasons=[dict(reason=r, tests=n) for r, n in skipped.items()])


def benchmark(run: Run, name: str, arguments: list[str], scratch: Path) -> None:
    figures = scratch / f"{name}.json"
    run.run(Step(name, [sys.executable, "benchmarks/gpu.py", *arguments, "--json", str(figures)], LIMITS[name]))
    if figures.exists():
        found = json.loads(figures.read_text())
        run.report["figures"]["gda"] += found["gda"]
        run.report["figures"]["model"] += found["model"]
        run.report["figures"].setdefault("device", found["device"])
        run.save()


def measure(run: Run, scratch: Path, steps: list[str]) -> None:
    """Step 3, then those of steps 4-8 named in ``steps``; stops after step 3 where there is no GPU."""
    versions = run.run(Step("versions", [sys.executable, str(Path(__file__).resolve()), "--probe"],
                            LIMITS["versions"]))
    machine = next((line.removeprefix("MACHINE ") for line in versions.output if line.startswith("MACHINE ")), None)
    run.report["machine"] = machine and json.loads(machine)
    run.save()
    if versions.status != "passed":
        return
    if "build" in steps:
        run.run(Step("build", [sys.executable, "-m", "rvrt_plugins.gda_cuda"], LIMITS["build"]))
    if "tests" in steps:
        run_tests(run)
    for name, arguments in (("gda", ["--skip-model"]), ("sr", ["--skip-gda", "--tasks", "sr"]),
                            ("denoise", ["--skip-gda", "--tasks", "denoise"])):
        if name in steps:
            benchmark(run, name, arguments, scratch)


def run_tests(run: Run) -> None:
    junit = run.output / "pytest.xml"
    limit_each = [f"--timeout={TEST_TIMEOUT_S}"] if run.report["machine"]["pytest_timeout"] else []
    if not limit_each:
        run.say(f"pytest-timeout is missing: tests are limited only as a whole ({LIMITS['tests']} s)")
    run.run(Step("tests", [sys.executable, "-m", "pytest", "-m", "gpu", "-rfEs", "-v", "--tb=short",
                           "-p", "no:cacheprovider", "--continue-on-collection-errors", *limit_each,
                           f"--junitxml={junit}", *gpu_test_files()], LIMITS["tests"]))
    run.report["tests"] = read_junit(junit)
    run.report["failures"] += [dict(step="tests", message=f"{f['test']}: {f['message'][:500]}")
                               for f in (run.report["tests"] or {}).get("failures", [])]
    run.save()


def judge(report: dict) -> None:
    """The kernel's largest error per dtype, and the issue's goals, each with the figure it is
    judged on (value None: not measured), into ``report``."""
    gda = report["figures"]["gda"]
    float32 = [row for row in gda if row["dtype"] == "float32" and row["speed_up"] is not None]

    def largest(dtype):
        values = [row["fused_max_abs_vs_float64"] for row in gda
                  if row["dtype"] == dtype and row["fused_max_abs_vs_float64"] is not None]
        return max(values) if values else None

    def run_of(task, precision, gda_kind="native"):
        return next((run for entry in report["figures"]["model"] if entry["task"] == task
                     for run in entry["runs"] if run["precision"] == precision and run["gda"] == gda_kind), None)

    kernel = largest("float32")
    finished = any(step["name"] == "denoise" for step in report["steps"])
    slowest = min(float32, key=lambda row: row["speed_up"], default=None)
    thinnest = min(float32, key=lambda row: row["memory_ratio"], default=None)
    sr_half = run_of("sr", "float16")
    levels = [run.get("uint8_levels_vs_float32") for task in ("sr", "denoise") for run in [run_of(task, "float16")]
              if run and run.get("uint8_levels_vs_float32") is not None]

    def goal(value, met, on):
        return dict(value=value, met=None if value is None else met, on=on)

    report["kernel_max_abs_vs_float64"] = dict(float32=kernel, float16=largest("float16"))
    report["goals"] = {
        "fused GDA within 1e-5 of the reference, float32": goal(kernel, kernel is not None and kernel <= 1e-5,
                                                                 "largest difference from float64, every size"),
        "fused GDA >= 10x faster than the reference": goal(
            slowest and slowest["speed_up"], slowest is not None and slowest["speed_up"] >= 10,
            f"smallest float32 speed-up ({slowest['size'] if slowest else 'none'})"),
        "fused GDA >= 5x less peak memory": goal(
            thinnest and thinnest["memory_ratio"], thinnest is not None and thinnest["memory_ratio"] >= 5,
            f"smallest float32 memory ratio ({thinnest['size'] if thinnest else 'none'})"),
        "SR 320x180 float16 <= 60 ms per frame": goal(sr_half and sr_half["ms_per_frame"],
                                                      sr_half is not None and sr_half["ms_per_frame"] <= 60,
                                                      "eager float16, fused GDA"),
        "eager float16 within 1 uint8 level of float32": goal(max(levels) if levels else None,
                                                              bool(levels) and max(levels) <= 1,
                                                              "largest over SR and denoising"),
        "whole run within 7 minutes": goal(report["seconds"] if finished else None,
                                           (report["seconds"] or 0) <= 420, "seconds, once the last step ran"),
    }


def summary(run: Run) -> None:
    run.say("\n=== summary")
    for step in run.report["steps"]:
        run.say(f"{step['name']:9} {step['status']:9} {step['seconds'] or 0:6.1f} s  {step['message'] or ''}")
    tests = run.report["tests"]
    if tests:
        run.say(f"tests: {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                f"{tests['skipped']} skipped")
        for failure in tests["failures"]:
            run.say(f"  {failure['kind']}: {failure['test']}: {failure['message'].splitlines()[0][:300]}")
    for name, goal in run.report["goals"].items():
        met = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
        value = "-" if goal["value"] is None else f"{goal['value']:.3g}"
        run.say(f"goal: {name}: {value} ({goal['on']}): {met}")
    run.say(f"{run.report['seconds']:.0f} s in all; figures in {run.output / 'gpu_check.json'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=NAME, description=__doc__.split("\n")[0],
                                     epilog="See the module docstring for the device call and the steps.")
    parser.add_argument("output", nargs="?", default=os.environ.get("OUT"),
                        help="folder for gpu_check.log, gpu_check.json and pytest.xml (default $OUT)")
    parser.add_argument("--wheels", type=Path, default=WHEELS, help=f"the carried wheels ({WHEELS})")
    parser.add_argument("--no-install", action="store_true",
                        help="the project and its packages are installed already: skip steps 1-2")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole run ({BUDGET_S})")
    parser.add_argument("--steps", default=",".join(MEASURING_STEPS),
                        help="the steps after install and versions to run, comma-separated, e.g. 'tests,gda' for "
                             f"a shorter rerun (default {','.join(MEASURING_STEPS)})")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return probe()
    steps = args.steps.split(",")
    unknown = [step for step in steps if step not in MEASURING_STEPS]
    if unknown:
        parser.exit(2, f"{NAME}: --steps {args.steps}: unknown step {unknown[0]!r}: expected some of "
                       f"{','.join(MEASURING_STEPS)}\n")
    if not args.output:
        parser.exit(2, f"{NAME}: no output folder: pass one, or set OUT\n")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        parser.exit(2, f"{NAME}: the output {output} is not a folder\n")
    output.mkdir(parents=True, exist_ok=True)

    run = Run(output, args.budget)
    run.say(f"{NAME}: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {REPOSITORY}, Python "
            f"{platform.python_version()} ({sys.executable}), budget {args.budget:.0f} s")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        scratch = Path(scratch)
        # One kernel library for the build step, the tests and the benchmarks, never a stale one.
        run.env["RVRT_PLUGINS_CACHE"] = str(scratch / "plugins")
        run.env.pop("RVRT_GDA_CUDA_LIBRARY", None)
        run.env.pop("RVRT_GDA", None)
        if args.no_install or install(run, args.wheels):
            measure(run, scratch, steps)
    run.save()
    summary(run)
    return 0 if not run.report["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
