"""Bad input to rvrt-export and rvrt-validate: one line in the user's terms, exit status 2, no traceback;
and the exit statuses all commands share (README, "Exit status"): 1 where the machine lacks
something, 128 + N when signal N stops the work, which then leaves nothing behind."""

import dataclasses
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import stage_workers, tiny_model
from rvrt import get_task
from rvrt_engines.cli import main as run_cli
from rvrt_engines.synthetic import write_video
from rvrt_export.cli import main as export_cli
from rvrt_engines.manifest import FORMAT_VERSION, write_manifest
from rvrt_validate.cli import main as validate_cli

SR = get_task("sr")


def refused(cli, args, expected):
    """Run ``cli args``; it must refuse with one line containing ``expected`` and exit status 2."""
    name = "rvrt-export" if cli is export_cli else "rvrt-validate"
    result = CliRunner().invoke(cli, [str(arg) for arg in args], prog_name=name)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    return lines[0]


@pytest.fixture
def fake_export(tmp_path):
    """A directory with the manifest of a validated float32 SR export (what the checks read)."""

    def make(name="export", **changes):
        directory = tmp_path / name
        directory.mkdir()
        manifest = {"format_version": FORMAT_VERSION, "task": SR.id, "config": dataclasses.asdict(SR.config),
                    "dtype": "float32", "stages": {},
                    "checkpoint": {"random_weights": True, "seed": 0}, "validation": {"passed": True}, **changes}
        write_manifest(directory, manifest)
        return directory

    return make


def test_export_names_the_task_and_tile_expected(tmp_path):
    refused(export_cli, ["onnx", "--task", "foo", "--random-weights"],
            "--task 'foo' is not a task: expected one of sr, sr-vimeo, sr-bd, deblur-dvd, deblur-gopro, denoise")
    refused(export_cli, ["onnx", "--task", "sr", "--tile", "44", "--random-weights"],
            "--tile 44: expected the tile in input px, one number for a square (64) or HEIGHTxWIDTH (144x176), "
            "each side a positive multiple of 8")
    refused(export_cli, ["onnx", "--task", "sr", "--tile", "32", "--random-weights"],
            "--tile 32: each side must be at least 40 input px for task 'sr'")
    refused(export_cli, ["onnx", "--task", "denoise", "--tile", "128", "--random-weights"],
            "at least 136 input px for task 'denoise' (SpyNet's smallest input; multiples of 8); its official tile "
            "is 256")
    refused(export_cli, ["onnx", "--task", "sr", "--tile", "x"], "--tile x: expected the tile in input px")
    refused(export_cli, ["onnx", "--random-weights"], "Missing option '--task'. (see 'rvrt-export onnx --help')")
    refused(export_cli, ["onnx", "--task", "sr", "--random-weights", "--batch", "0"], "Invalid value for '--batch'")
    refused(export_cli, ["onnx", "--task", "sr", "--random-weights", "--colour"], "No such option '--colour'")
    refused(export_cli, ["export", "--task", "sr"], "No such command 'export'")
    assert not list(tmp_path.iterdir())


def test_export_asks_for_weights_by_flag(tmp_path):
    refused(export_cli, ["onnx", "--task", "sr"],
            "no weights: pass --checkpoint 001_RVRT_videosr_bi_REDS_30frames.pth, or --random-weights")
    refused(export_cli, ["onnx", "--task", "sr", "--random-weights", "--checkpoint", tmp_path / "a.pth"],
            "give either --checkpoint or --random-weights, not both")
    refused(export_cli, ["onnx", "--task", "sr", "--tiny"], "--tiny only goes with --random-weights")


def test_export_refuses_missing_damaged_and_foreign_checkpoints(tmp_path):
    out = tmp_path / "out"
    refused(export_cli, ["onnx", "--task", "sr", "--checkpoint", tmp_path / "missing.pth", "-o", out],
            "checkpoint '" + str(tmp_path / "missing.pth") + "' does not exist")
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    refused(export_cli, ["onnx", "--task", "sr", "--checkpoint", damaged, "-o", out],
            "is not a readable PyTorch weights file (damaged, truncated or not a checkpoint)")
    official_deblur = tmp_path / "004_RVRT_videodeblurring_DVD_16frames.pth"
    official_deblur.write_bytes(b"")
    refused(export_cli, ["onnx", "--task", "sr", "--checkpoint", official_deblur, "-o", out],
            "is the official 004_RVRT_videodeblurring_DVD_16frames model, but task 'sr'")
    deblur_weights = tmp_path / "weights.pth"
    torch.save({"params": tiny_model("deblur").state_dict()}, deblur_weights)
    refused(export_cli, ["onnx", "--task", "sr", "--checkpoint", deblur_weights, "-o", out],
            "does not fit task 'sr'")
    assert not out.exists()


def test_export_output_must_be_a_new_folder_it_can_create(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("the user's")
    refused(export_cli, ["onnx", "--task", "sr", "--random-weights", "-o", taken],
            f"-o {taken} exists and is not empty: choose a new folder (nothing is overwritten)")
    assert (taken / "notes.txt").read_text() == "the user's"
    refused(export_cli, ["onnx", "--task", "sr", "--random-weights", "-o", taken / "notes.txt" / "x"],
            f"cannot be created: {taken / 'notes.txt'} is a file")
    refused(export_cli, ["onnx", "--task", "sr", "--random-weights", "-o", taken / "notes.txt"], "is a file")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.txt", "taken"]


def test_default_output_is_named_from_task_tile_and_precision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sr-tile128-fp32").mkdir()
    (tmp_path / "sr-tile128-fp32" / "extract.onnx").write_bytes(b"earlier")
    refused(export_cli, ["onnx", "--task", "sr", "--random-weights"], "-o sr-tile128-fp32 exists and is not empty")
    (tmp_path / "sr-tiny-tile40-fp32").mkdir()
    (tmp_path / "sr-tiny-tile40-fp32" / "x").write_bytes(b"")
    refused(export_cli, ["onnx", "--task", "sr", "--random-weights", "--tiny", "--tile", "40"],
            "-o sr-tiny-tile40-fp32 exists")


def test_fp16_and_trt_need_a_validated_onnx_export(tmp_path, fake_export):
    for command in (["fp16"], ["trt"]):
        refused(export_cli, [*command, tmp_path / "none", "--random-weights", "-o", tmp_path / "o"],
                "Directory '" + str(tmp_path / "none") + "' does not exist")
        refused(export_cli, [*command, tmp_path, "--random-weights", "-o", tmp_path / "o"],
                "is not an export directory: no manifest.json (create one with 'rvrt-export onnx')")
        refused(export_cli, [*command, fake_export(f"e{command[0]}", engine={}), "--random-weights", "-o",
                             tmp_path / "o"], "holds TensorRT engines: pass the ONNX export")
        refused(export_cli, [*command, fake_export(f"u{command[0]}", validation={}), "--random-weights", "-o",
                             tmp_path / "o"], "has no passing validation record")
    refused(export_cli, ["fp16", fake_export("half", dtype="float16"), "--random-weights", "-o", tmp_path / "o"],
            "holds float16 graphs: pass the float32 export")
    assert not (tmp_path / "o").exists()


def test_fp16_and_trt_ask_for_the_weights_the_export_was_made_from(tmp_path, fake_export):
    from rvrt_engines.runtimes.tensorrt import tensorrt_unavailable

    random = fake_export("random")
    checkpoint = tmp_path / "weights.pth"
    checkpoint.write_bytes(b"weights")
    official = fake_export("official", checkpoint={"file": "001.pth", "sha256": "0" * 64})
    refused(export_cli, ["fp16", random, "-o", tmp_path / "o"], "exported from random weights: pass --random-weights")
    refused(export_cli, ["fp16", official, "--random-weights", "-o", tmp_path / "o"],
            "exported from 001.pth: pass --checkpoint")
    refused(export_cli, ["fp16", official, "--checkpoint", checkpoint, "-o", tmp_path / "o"],
            f"checkpoint '{checkpoint}' (sha256 ")
    refused(export_cli, ["fp16", official, "-o", tmp_path / "o"], "pass it with --checkpoint")
    refused(export_cli, ["fp16", random, "--random-weights", "--checkpoint", checkpoint, "-o", tmp_path / "o"],
            "give either --checkpoint or --random-weights, not both")
    refused(export_cli, ["trt", random, "--random-weights", "-o", random], f"-o {random} exists and is not empty")
    if tensorrt_unavailable():
        # An engine folder may carry the .plan name: the input is fine, only TensorRT is missing.
        plan = tmp_path / "sr.plan"
        result = CliRunner().invoke(export_cli, ["trt", str(random), "--random-weights", "-o", str(plan)])
        assert result.exit_code == 1 and "cannot build TensorRT engines here" in result.output
        assert len(result.output.strip().splitlines()) == 1 and not plan.exists()


def test_validate_refuses_bad_input_in_one_line(tmp_path, fake_export):
    random = fake_export("random")
    official = fake_export("official", checkpoint={"file": "001.pth", "sha256": "0" * 64})
    refused(validate_cli, ["-o", tmp_path / "r"], "Missing argument 'MODEL_DIR'. (see 'rvrt-validate --help')")
    refused(validate_cli, [tmp_path / "none", "-o", tmp_path / "r"], "does not exist")
    refused(validate_cli, [tmp_path, "-o", tmp_path / "r"], "is not an export directory")
    refused(validate_cli, [random, "--random-weights", "--frames", "1", "-o", tmp_path / "r"],
            "Invalid value for '--frames': 1 is not in the range x>=2")
    refused(validate_cli, [random, "-o", tmp_path / "r"], "pass --random-weights")
    refused(validate_cli, [official, "--random-weights", "-o", tmp_path / "r"], "pass --checkpoint")
    refused(validate_cli, [official, "-o", tmp_path / "r"], "pass it with --checkpoint")
    refused(validate_cli, [random, "--random-weights", "-o", official], f"-o {official} exists and is not empty")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command, expected", [
    (["rvrt-export", "onnx", "--task", "foo"], "--task 'foo' is not a task"),
    (["rvrt-export", "onnx", "--task", "sr", "--tile", "50", "--random-weights"], "--tile 50: expected"),
    (["rvrt-validate", "nowhere", "-o", "report"], "Directory 'nowhere' does not exist"),
    (["rvrt-demo", "--task", "foo"], "--task: unknown task 'foo'"),
])
def test_real_commands_exit_2_with_one_line_on_stderr(command, expected, tmp_path):
    program = shutil.which(command[0])
    if program is None:
        pytest.skip(f"{command[0]} is not installed as a command (pip install -e .)")
    done = subprocess.run([program, *command[1:]], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and expected in done.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_no_cuda_gpu_is_exit_status_1_for_eager_and_export_alike(tiny_export, tmp_path):
    """The request is fine, the machine lacks the GPU: status 1 whichever runtime was asked for;
    what the options themselves rule out stays status 2."""
    _, _, export_dir = tiny_export("sr")
    video = tmp_path / "in.mkv"
    write_video(video, np.zeros((2, 48, 48, 3), np.uint8))
    for model, expected in ((["sr", "--random-weights"], "no CUDA GPU"),
                            ([str(export_dir)], "this onnxruntime has no CUDA execution provider")):
        result = CliRunner().invoke(run_cli, [*model, str(video), "-o", str(tmp_path / "out.mp4"), "--device", "cuda"])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and expected in lines[0], result.output
    result = CliRunner().invoke(run_cli, ["sr", "--random-weights", str(video), "-o", str(tmp_path / "out.mp4"),
                                          "--runtime", "pytorch", "--fp16"])
    assert result.exit_code == 2 and "needs --device cuda" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv"]


def default_ctrl_c():
    """In the child: Ctrl-C as a terminal delivers it, whatever the test runner's own setting."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum, status, message", [
    (signal.SIGINT, 130, "rvrt-export onnx: interrupted (Ctrl-C); nothing was written"),
    (signal.SIGTERM, 143, "rvrt-export onnx: stopped by SIGTERM; nothing was written"),
])
def test_a_stopped_export_leaves_no_folder_and_exits_128_plus_the_signal(tmp_path, signum, status, message):
    """The signal goes to the whole process group, as a terminal sends it, while two export workers are mid-stage:
    they leave with the command, silently, and nothing is written."""
    program = shutil.which("rvrt-export")
    if program is None:
        pytest.skip("rvrt-export is not installed as a command (pip install -e .)")
    process = subprocess.Popen([program, "onnx", "--task", "sr", "--tiny", "--random-weights", "--tile", "40",
                                "--jobs", "2", "-o", "export"], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_ctrl_c, start_new_session=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "(1/11 done)" in line:      # the export says each stage it finished
            break
    assert any(line.startswith("exporting 11 stages in 2 processes") for line in seen) and "(1/11 done)" in seen[-1]
    workers = stage_workers(process.pid)
    # The folder being assembled and, beside it, the workers' copy of the model.
    assert len(workers) == 2 and all(p.name.startswith(".export.partial-") for p in tmp_path.iterdir())
    os.killpg(process.pid, signum)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == status and message in rest, rest
    assert "Aborted!" not in rest and "Traceback" not in rest, rest
    assert not list(tmp_path.iterdir())
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
