"""benchmarks/gpu_check.py, the prepared GPU run, on a machine without a GPU: it stops where the
machine lacks something with status 1 and one line, and still leaves its log and its JSON with the
failure recorded; a step that hangs is stopped at its own limit, its children with it."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
SCRIPT = REPOSITORY / "benchmarks" / "gpu_check.py"


def gpu_check(*args, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPOSITORY,
                          env=env or os.environ)


def report_of(folder: Path) -> dict:
    assert sorted(path.name for path in folder.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    return json.loads((folder / "gpu_check.json").read_text())


def test_without_carried_wheels_it_says_how_to_stage_them(tmp_path):
    empty = tmp_path / "wheels"
    empty.mkdir()
    result = gpu_check(str(tmp_path / "out"), "--wheels", str(empty))
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    line = f"benchmarks/gpu_check.py: no wheels in {empty}: stage them with `bash benchmarks/gpu_stage.sh`"
    assert line in result.stdout
    report = report_of(tmp_path / "out")
    assert [(step["name"], step["status"]) for step in report["steps"]] == [("wheels", "failed")]
    assert report["failures"][0]["step"] == "wheels" and "carry" in report["failures"][0]["message"]
    assert line in (tmp_path / "out" / "gpu_check.log").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_without_a_gpu_it_stops_at_the_first_gpu_call(tmp_path):
    started = time.monotonic()
    result = gpu_check(str(tmp_path), "--no-install")
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert "benchmarks/gpu_check.py: no CUDA GPU: torch" in result.stdout
    report = report_of(tmp_path)
    # The versions are read and recorded; nothing after them ran, nothing was built or measured.
    assert [(step["name"], step["status"]) for step in report["steps"]] == [("versions", "failed")]
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["gpu"] is None
    assert "no CUDA GPU" in report["failures"][0]["message"] and report["tests"] is None
    assert all(goal["value"] is None for goal in report["goals"].values())
    assert time.monotonic() - started < 60


def test_without_an_output_folder_it_says_so(tmp_path):
    env = {name: value for name, value in os.environ.items() if name != "OUT"}
    result = gpu_check(env=env)
    assert result.returncode == 2
    assert result.stderr == "benchmarks/gpu_check.py: no output folder: pass one, or set OUT\n"


def test_a_hanging_step_is_stopped_at_its_limit_with_its_children(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)   # dataclasses look their module up
    spec.loader.exec_module(module)
    run = module.Run(tmp_path, budget_s=60)
    hang = ("import subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print('child', child.pid, flush=True); time.sleep(60)")
    started = time.monotonic()
    step = run.run(module.Step("hang", [sys.executable, "-c", hang], limit_s=2))
    assert step.status == "timed out" and step.message == "stopped after 2 s (its time limit)"
    assert time.monotonic() - started < 2 + 2 * module.STOP_GRACE_S
    child = int(next(line for line in step.output if line.startswith("child")).split()[1])
    status = Path(f"/proc/{child}/status")
    for _ in range(50):   # a killed process takes a moment to exit
        if not status.exists() or "\nState:\tZ" in status.read_text():   # gone, or a zombie
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the step's child {child} still runs")
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["steps"][0]["status"] == "timed out" and report["failures"][0]["step"] == "hang"
