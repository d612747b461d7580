"""Serving an ONNX export needs no PyTorch.

A fresh virtual environment gets the checkout installed with no extras (what
``pip install rvrt-deploy`` gives a user) and must restore a video from an export made in the
full environment with the same frames, bit for bit, as the full environment's ``rvrt-run``;
whatever needs an extra stops before any work with one line naming it, exit status 2, and
leaves nothing behind. In the full environment, serving an export and ``rvrt-run --help`` must
not import PyTorch or the other export-only libraries.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from importlib.metadata import entry_points
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rvrt_engines.runtimes.openvino import bf16_capable
from rvrt_engines.synthetic import degrade, moving_photo_frames, write_video
from rvrt_plugins.build import cache_dir as plugins_cache_dir

ROOT = Path(__file__).resolve().parents[1]
EXPORT_ONLY = ("torch", "onnxscript", "polygraphy", "einops")   # modules the [export] extra brings
NOT_IN_BASE = (*EXPORT_ONLY, "skimage", "PIL", "ray")            # none of them in a serving install
# The serving venv installs from a source folder: its hints name that folder (pip install '/path[export]').
EXPORT_HINT = "[export]'"
CLUSTER_HINT = "[cluster]'"
FRAMES, HEIGHT, WIDTH = 6, 192, 256                              # HR size; the input is 64x48 (two 48 px tiles)
RUN_OPTIONS = ["--window", "4", "--threads", "2"]                # two temporal windows, same threads both sides
SUMMARY = re.compile(rf"{FRAMES} frames {WIDTH // 4}x{HEIGHT // 4} -> {WIDTH}x{HEIGHT} .*onnxruntime\) -> ")

needs_venv = pytest.mark.skipif(
    find_spec("venv") is None or find_spec("ensurepip") is None,
    reason="python -m venv is unavailable in this Python (no venv/ensurepip module): the serving-only install "
           "cannot be made")


def full_command(name: str) -> list[str]:
    """The full environment's console script ``name``: the one installed beside sys.executable (not a
    pyenv shim), else its entry point run by sys.executable."""
    script = Path(sysconfig.get_path("scripts")) / name
    try:
        shebang = script.read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        shebang = ""
    if shebang.startswith("#!") and shebang[2:].split() and \
            Path(shebang[2:].split()[0]).resolve() == Path(sys.executable).resolve():
        return [str(script)]
    (point,) = entry_points(group="console_scripts", name=name)
    module, attr = point.value.split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {attr}; sys.exit({attr}())"]


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """Environment variables for every command here: the GDA CPU kernel from the cache the rest of the
    suite builds into (its key is the sources' digest, the same in both installs), and every other
    cache in a temporary folder, so nothing here reads or writes the user's export cache."""
    base = tmp_path_factory.mktemp("caches")
    (base / "rvrt").mkdir()
    return {"RVRT_PLUGINS_CACHE": str(plugins_cache_dir()), "XDG_CACHE_HOME": str(base / "xdg"),
            "RVRT_CACHE": str(base / "rvrt")}


def full_env(caches, **more):
    return {**os.environ, **caches, **more}


def venv_env(venv, caches, **more):
    """The venv as an activated shell would have it, without anything pointing back at the checkout."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update(caches, VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", **more)
    return env


def run(command, env, cwd, timeout=300):
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def checked(done):
    assert done.returncode == 0, f"{done.args} -> {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def sr_export(cached_tiny_sr):
    """A tiny-width SR export (random weights, 48x64 tiles) made by the full environment (shared, see conftest)."""
    return cached_tiny_sr[1]


@pytest.fixture(scope="module")
def lr_video(tmp_path_factory):
    """6 frames of 64x48 (bicubic x4 down of a pan over a photograph), as mp4."""
    path = tmp_path_factory.mktemp("video") / "lr.mp4"
    write_video(path, degrade(moving_photo_frames(FRAMES, HEIGHT, WIDTH, image="coffee", seed=3), "sr"),
                frame_rate=24)
    return path


def source_copy(dest: Path) -> Path:
    """The checkout's files as a clone with the uncommitted work would hold them (tracked and
    untracked-but-not-ignored), so that the install neither writes build/ or *.egg-info into the
    shared checkout nor picks up a stale build/lib from it."""
    try:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                                  ".pytest_cache", "runs", "*.onnx", "*.so"))
        return dest
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():            # listed but deleted in the working tree: left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory, caches):
    """A fresh venv with the checkout installed as a user would: ``pip install .``, no extras, not editable."""
    base = tmp_path_factory.mktemp("serving-venv")
    venv = base / "venv"
    made = run([sys.executable, "-m", "venv", venv], venv_env(venv, caches), cwd=base, timeout=300)
    if made.returncode != 0 and "ensurepip" in made.stdout + made.stderr:
        pytest.skip(f"python -m venv is unavailable here: {(made.stdout + made.stderr).strip().splitlines()[-1]}")
    checked(made)
    source = source_copy(base / "source")
    # The serving install and the torch-free OpenVINO extra: what serves exports without the exporter.
    checked(run([venv / "bin" / "python", "-m", "pip", "install", "--no-input", f"{source}[openvino]"],
                venv_env(venv, caches),
                cwd=base, timeout=900))
    return venv


def read_frames(folder: Path) -> tuple[list[str], np.ndarray]:
    names = sorted(name for name in os.listdir(folder) if name.endswith(".png"))
    return names, np.stack([np.asarray(Image.open(folder / name)) for name in names])


@needs_venv
def test_serving_install_has_no_pytorch_nor_other_extras(serving_venv, caches, tmp_path):
    python = serving_venv / "bin" / "python"
    done = run([python, "-c", "import torch"], venv_env(serving_venv, caches), cwd=tmp_path)
    assert done.returncode == 1 and "No module named 'torch'" in done.stderr
    probe = textwrap.dedent(f"""
        import json, rvrt_engines
        from importlib.util import find_spec
        print(json.dumps({{"present": [m for m in {NOT_IN_BASE!r} if find_spec(m) is not None],
                           "package": rvrt_engines.__file__}}))
    """)
    found = json.loads(checked(run([python, "-c", probe], venv_env(serving_venv, caches), cwd=tmp_path)).stdout)
    assert found["present"] == []
    # The installed copy is served, not the checkout.
    assert Path(found["package"]).resolve().is_relative_to(serving_venv.resolve())


@needs_venv
@pytest.mark.parametrize("command", ["rvrt-run", "rvrt-export", "rvrt-batch", "rvrt-validate", "rvrt-demo"])
def test_serving_install_commands_show_their_help(serving_venv, caches, tmp_path, command):
    done = run([serving_venv / "bin" / command, "--help"], venv_env(serving_venv, caches), cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("Usage:"), done.stderr
    assert "Traceback" not in done.stderr


@needs_venv
def test_serving_install_restores_the_same_frames_as_the_full_environment(serving_venv, caches, sr_export,
                                                                          lr_video, tmp_path):
    served = run([serving_venv / "bin" / "rvrt-run", sr_export, lr_video, "-o", tmp_path / "venv", *RUN_OPTIONS],
                 venv_env(serving_venv, caches), cwd=tmp_path)
    full = run([*full_command("rvrt-run"), sr_export, lr_video, "-o", tmp_path / "full", *RUN_OPTIONS],
               full_env(caches), cwd=tmp_path)
    for done in (served, full):
        checked(done)
        assert SUMMARY.search(done.stderr), done.stderr   # "... (N fps, onnxruntime) -> OUTPUT"
    names, venv_frames = read_frames(tmp_path / "venv")
    full_names, full_frames = read_frames(tmp_path / "full")
    assert names == full_names == [f"{i:06d}.png" for i in range(FRAMES)]
    assert venv_frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and venv_frames.dtype == np.uint8
    assert np.array_equal(venv_frames, full_frames)
    assert venv_frames.std() > 1                          # not a blank output on both sides


@needs_venv
@pytest.mark.slow
def test_serving_install_serves_the_task_from_what_a_full_install_cached(serving_venv, caches, full_size_sr,
                                                                          tmp_path):
    """A full install exported and cached the task for ONNX Runtime on first use (the shared full-size entry); a
    serving-only install (no exporter, whose versions read as absent there) then finds that very entry by the
    task's name and serves it, exporting nothing, with the frames the full install gives."""
    root, first = full_size_sr
    video = tmp_path / "lr.mp4"
    write_video(video, degrade(moving_photo_frames(2, 160, 160, seed=4), "sr"), frame_rate=24)   # 40x40, one tile
    command = ["sr", video, "--random-weights", "--runtime", "onnxruntime", "--tile", str(first.tile[0]),
               "--threads", "2"]
    entries = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    env = {**caches, "RVRT_CACHE": str(root)}
    full = checked(run([*full_command("rvrt-run"), *command[:2], "-o", tmp_path / "full", *command[2:]],
                       full_env(env), cwd=tmp_path))
    served = checked(run([serving_venv / "bin" / "rvrt-run", *command[:2], "-o", tmp_path / "venv", *command[2:]],
                         venv_env(serving_venv, env), cwd=tmp_path))
    for done in (full, served):
        assert "exporting" not in done.stderr and "2 frames 40x40 -> 160x160" in done.stderr, done.stderr
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == entries
    frames = read_frames(tmp_path / "venv")[1]
    assert frames.shape == (2, 160, 160, 3) and frames.std() > 1
    assert np.array_equal(frames, read_frames(tmp_path / "full")[1])


@needs_venv
def test_serving_install_restores_with_openvino_in_bfloat16(serving_venv, caches, sr_export, lr_video, tmp_path):
    """OpenVINO needs no PyTorch either: a serving install validates its bfloat16 entry on first use (against ONNX
    Runtime float32) and restores within the float16 gate of the full environment's ONNX Runtime frames. On a CPU
    without bfloat16 (the machines of this project have been of both kinds) it says so and runs float32."""
    served = checked(run([serving_venv / "bin" / "rvrt-run", sr_export, lr_video, "-o", tmp_path / "venv", "--runtime",
                          "openvino", "--precision", "bf16", *RUN_OPTIONS], venv_env(serving_venv, caches),
                         cwd=tmp_path, timeout=900))
    if bf16_capable():
        assert "openvino bfloat16" in served.stderr, served.stderr
    else:
        assert "OpenVINO runs float32 instead of bfloat16" in served.stderr, served.stderr
        assert "openvino float32" in served.stderr, served.stderr
    checked(run([*full_command("rvrt-run"), sr_export, lr_video, "-o", tmp_path / "full", *RUN_OPTIONS],
                full_env(caches), cwd=tmp_path))
    openvino, onnxruntime = read_frames(tmp_path / "venv")[1], read_frames(tmp_path / "full")[1]
    error = (openvino.astype(np.float64) - onnxruntime) / 255
    assert 10 * np.log10(1 / max(np.mean(error ** 2), 1e-12)) >= 40


REFUSALS = {
    "export": (["rvrt-export", "onnx", "--task", "sr", "--random-weights", "-o", "X"], EXPORT_HINT),
    "eager-run": (["rvrt-run", "sr", "{video}", "-o", "out.mp4", "--random-weights"], EXPORT_HINT),
    "ray": (["rvrt-run", "{export}", "{video}", "-o", "out.mp4", "--ray", "local"], CLUSTER_HINT),
    "batch": (["rvrt-batch", "{export}", "{video}", "-o", "batch-out"], CLUSTER_HINT),
    "cached-export": (["rvrt-run", "sr", "{video}", "-o", "out.mp4", "--random-weights", "--runtime", "onnxruntime"],
                      EXPORT_HINT),
    "validate": (["rvrt-validate", "{export}", "--random-weights", "-o", "report"], EXPORT_HINT),
    "demo": (["rvrt-demo", "--tiny"], EXPORT_HINT),
}


@needs_venv
@pytest.mark.parametrize("case", list(REFUSALS))
def test_serving_install_refuses_what_needs_an_extra_in_one_line(serving_venv, caches, sr_export, lr_video,
                                                                 tmp_path, case):
    command, hint = REFUSALS[case]
    command = [part.format(video=lr_video, export=sr_export) for part in command]
    cwd, cache = tmp_path / "cwd", tmp_path / "empty-cache"
    cwd.mkdir()
    cache.mkdir()
    exported = sorted(p.name for p in sr_export.iterdir())
    done = run([serving_venv / "bin" / command[0], *command[1:]], venv_env(serving_venv, caches, RVRT_CACHE=str(cache)),
               cwd=cwd)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert hint in done.stderr and ("needs Ray" if hint == CLUSTER_HINT else "needs PyTorch") in done.stderr
    assert list(cwd.iterdir()) == [] and list(cache.iterdir()) == []   # no output, no half-made cache entry
    assert sorted(p.name for p in sr_export.iterdir()) == exported


MODULES_AFTER = textwrap.dedent("""
    import json, sys
    from rvrt_engines.cli import main
    try:
        status = main(sys.argv[1:], standalone_mode=False)
    except SystemExit as stop:
        status = stop.code
    print(json.dumps({"status": status, "loaded": sorted(m for m in %r if m in sys.modules)}))
""")


def test_serving_an_export_loads_no_pytorch(caches, sr_export, lr_video, tmp_path):
    """The full environment has PyTorch, yet serving an export on ONNX Runtime never imports it."""
    watched = (*EXPORT_ONLY, "ray", "onnxruntime")
    done = checked(run([sys.executable, "-c", MODULES_AFTER % (watched,), str(sr_export), str(lr_video), "-o",
                        str(tmp_path / "out"), *RUN_OPTIONS], full_env(caches), cwd=tmp_path))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] in (None, 0)
    assert result["loaded"] == ["onnxruntime"]          # ran on ONNX Runtime; torch, onnxscript... never loaded
    assert SUMMARY.search(done.stderr), done.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == FRAMES


def test_run_help_loads_no_pytorch(caches, tmp_path):
    watched = (*EXPORT_ONLY, "ray")
    done = checked(run([sys.executable, "-c", MODULES_AFTER % (watched,), "--help"], full_env(caches), cwd=tmp_path))
    assert "Usage:" in done.stdout and "--runtime" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"status": 0, "loaded": []}


def test_a_ray_batch_driver_loads_no_pytorch(caches, sr_export, lr_video, tmp_path):
    """rvrt-batch on a local Ray cluster: the driver (decoding, blending, encoding) never imports PyTorch."""
    script = MODULES_AFTER.replace("rvrt_engines.cli", "rvrt_cluster.cli") % ((*EXPORT_ONLY, "ray"),)
    done = checked(run([sys.executable, "-c", script, str(sr_export), str(lr_video), "-o", str(tmp_path / "out"),
                        "--ray", "local", "--workers", "1", "--threads", "1", "--window", "4", "--quiet"],
                       full_env(caches), cwd=tmp_path, timeout=600))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"status": 0, "loaded": ["ray"]}, done.stderr
    assert len(os.listdir(tmp_path / "out")) == 1
