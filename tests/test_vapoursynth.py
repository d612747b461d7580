"""The VapourSynth filter (``rvrt_engines.vapoursynth.restore``) in a real VapourSynth R81 core.

VapourSynth R81 has wheels for Python >= 3.12 only and this suite runs on 3.11: the tests make a
Python >= 3.12 venv with vapoursynth==81, vapoursynth-bestsource, the [openvino] extra and the
checkout's own dependencies (no PyTorch), cached across runs under
``$XDG_CACHE_HOME/rvrt-deploy/vapoursynth-venv/<key>`` (the key covers the interpreter, those
requirements and pyproject's dependencies), and install the checkout into a per-module folder with
that venv's pip, without extras. VapourSynth scripts and ``vspipe`` then run as real subprocesses on
the small ONNX export that this environment makes (``conftest.tiny_export``), and on its OpenVINO
entry with runtime="openvino", and their frames are compared with this environment's ``rvrt-run`` on
the same input.
"""

import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from rvrt.tiling import Tiling, blend_frame, blend_windows, covering_windows, iter_restored, window_spans
from rvrt_engines.backends import load_backend
from rvrt_engines.cli import main as run_cli
from rvrt_engines.restore import frame_to_array, resolve_tiling, to_uint8
from rvrt_engines.synthetic import moving_photo_frames
from rvrt_engines.video import open_frames
from rvrt_engines.video.colour import Colour, frame_to_rgb
from test_serving import caches, checked, run, source_copy, venv_env  # noqa: F401 (caches: a fixture)

ROOT = Path(__file__).resolve().parents[1]
# The [vapoursynth] extra, the [openvino] extra (the filter on runtime="openvino"), a source filter for the vspipe
# test, and what installs the checkout without build isolation.
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VS_REQUIREMENTS = (*PROJECT["optional-dependencies"]["vapoursynth"], *PROJECT["optional-dependencies"]["openvino"],
                   "vapoursynth-bestsource==22", "setuptools>=68")
FRAMES, HEIGHT, WIDTH = 8, 48, 64        # LR: one tile high, two 48 px tiles wide (tiny SR export, batch 2)
WINDOW = ["--window", "4", "--window-overlap", "2", "--threads", "2"]   # windows (0, 4), (2, 6), (4, 8)


def python_312() -> str | None:
    """An interpreter of Python >= 3.12 with venv and ensurepip: this one, pyenv's versions (not its
    shims, which need PYENV_VERSION), or python3.1x on PATH."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [sys.executable, *sorted(glob.glob(str(root / "versions" / "3.1[2-9]*" / "bin" / "python3"))),
                  *filter(None, (shutil.which(f"python3.{minor}") for minor in (12, 13, 14)))]
    probe = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 12))"
    for candidate in candidates:
        try:
            if subprocess.run([candidate, "-c", probe], capture_output=True, timeout=60).returncode == 0:
                return candidate
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def cached_venv(python: str) -> Path:
    """The venv of ``python`` with VapourSynth and the checkout's dependencies, made once per key
    (under a lock, so that concurrent sessions wait for one build) and reused."""
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                             check=True).stdout.strip()
    key = hashlib.sha256(json.dumps([version, VS_REQUIREMENTS, PROJECT["dependencies"]]).encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rvrt-deploy" / "vapoursynth-venv"
    base.mkdir(parents=True, exist_ok=True)
    venv, done = base / key, base / f"{key}.done"
    with open(base / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)
            checked(run([python, "-m", "venv", venv], os.environ, cwd=base))
            checked(run([venv / "bin" / "python", "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                         *VS_REQUIREMENTS, *PROJECT["dependencies"]], os.environ, cwd=base, timeout=1200))
            done.write_text(version)
    return venv


@pytest.fixture(scope="module")
def vs_env(tmp_path_factory, caches):  # noqa: F811
    """(venv, env): the cached VapourSynth venv and the environment to run its programs in,
    with this checkout installed (no extras, no dependencies: the venv holds them) on PYTHONPATH and
    vspipe configured in a temporary XDG_CONFIG_HOME."""
    python = python_312()
    if python is None:
        pytest.skip("VapourSynth R81 needs Python >= 3.12 and none was found (this Python, pyenv's versions, "
                    "python3.12-3.14 on PATH)")
    venv = cached_venv(python)
    base = tmp_path_factory.mktemp("vapoursynth")
    site = base / "site"
    checked(run([venv / "bin" / "python", "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                 "--no-deps", "--no-build-isolation", "--no-index", "--target", site, source_copy(base / "source")],
                venv_env(venv, caches), cwd=base, timeout=600))
    env = venv_env(venv, caches, PYTHONPATH=str(site), XDG_CONFIG_HOME=str(base / "config"))
    checked(run([venv / "bin" / "vapoursynth", "config"], env, cwd=base))
    return venv, env


HARNESS = textwrap.dedent('''
    """Runs one case of tests/test_vapoursynth.py in VapourSynth: python harness.py CASE EXPORT INPUT OUTPUT."""
    import json, sys
    import numpy as np
    import vapoursynth as vs
    from rvrt_engines.vapoursynth import WindowCache, restore

    core = vs.core
    messages = []
    core.add_log_handler(lambda kind, message: messages.append(message))
    case, export, source, output = sys.argv[1:5]
    data = np.load(source) if source.endswith(".npy") else None      # else a video file
    PROPS = dict(_Matrix=vs.MATRIX_RGB, _Primaries=vs.PRIMARIES_BT709, _Transfer=vs.TRANSFER_BT709,
                 _Range=vs.RANGE_FULL, _SARNum=4, _SARDen=3, _FieldBased=vs.FIELD_PROGRESSIVE, Custom="kept")

    def clip_of(frames):
        """(T, H, W, 3) uint8 -> an RGB24 clip at 24000/1001 fps, each frame with PROPS, its own duration
        and scene-change marks."""
        base = core.std.BlankClip(format=vs.RGB24, width=frames.shape[2], height=frames.shape[1],
                                  length=len(frames), fpsnum=24000, fpsden=1001)

        def fill(n, f):
            out = f.copy()
            for plane in range(3):
                np.copyto(np.asarray(out[plane]), frames[n, ..., plane])
            out.props.update(PROPS, _DurationNum=1001 + n, _DurationDen=24000, _SceneChangePrev=int(n == 4),
                             _SceneChangeNext=int(n == 3))
            return out
        return core.std.ModifyFrame(base, base, fill)

    def planes(frame):
        return [np.array(frame[plane]) for plane in range(frame.format.num_planes)]

    def props(frame):
        return {key: value.decode() if isinstance(value, bytes) else int(value) if isinstance(value, int) else value
                for key, value in frame.props.items()}

    def restored():
        return [message for message in messages if "restored in" in message]

    def info(clip):
        return dict(format=clip.format.name, width=clip.width, height=clip.height, num_frames=clip.num_frames,
                    fps=[clip.fps.numerator, clip.fps.denominator])

    result = {}
    if case == "frames":
        clip = clip_of(data)
        # Compared with a plain rvrt-run, which is given no cut: the marks at frame 4 are kept, not used.
        sequential = restore(clip, export, window=4, window_overlap=2, threads=2, scene_cuts="off")
        # frames() keeps several requests in flight, as vspipe does.
        frames = [planes(frame) for frame in sequential.frames(prefetch=4)]
        result.update(sequential_restored=restored(), info=info(sequential), input_props=props(clip.get_frame(4)),
                      output_props=props(sequential.get_frame(4)))
        messages.clear()
        seeking = restore(clip, export, window=4, window_overlap=2, threads=2, format=vs.RGB24, scene_cuts="off")
        order = [7, 6, 0, 1, 3, 2, 5, 4]
        sought = {n: planes(seeking.get_frame(n)) for n in order}
        result.update(order=order, seeking_restored=restored(), seeking_info=info(seeking))
        np.savez(output + ".npz", sequential=np.array(frames), seeking=np.array([sought[n] for n in range(len(data))]))
        result["torch_loaded"] = "torch" in sys.modules
        # The order a late request meets, made deterministic: frame 3 (windows 0, 1) and frame 4 (1, 2) are
        # asked for, and frame 4 is done first.
        cache = WindowCache(2)
        cache.pin(range(0, 2))
        cache.pin(range(1, 3))
        for w in range(3):
            cache.put(w, np.zeros(1))
        cache.unpin(range(1, 3))
        held_for_frame_3 = list(cache.windows)
        cache.unpin(range(0, 2))
        result.update(held_for_frame_3=held_for_frame_3, after_frame_3=list(cache.windows))
        # A request whose frame never comes (its input failed) keeps its window, not the cache from dropping.
        cache = WindowCache(2)
        cache.pin([0])
        for w in range(6):
            cache.put(w, np.zeros(1))
        result["pinned_for_good"] = list(cache.windows)
    elif case == "yuv":
        clip = clip_of(data)
        checks = {}
        for depth, fmt, rgb in ((8, vs.YUV420P8, vs.RGB24), (10, vs.YUV420P10, vs.RGB48)):
            yuv = core.resize.Bicubic(clip, format=fmt, matrix=vs.MATRIX_BT709, range=vs.RANGE_LIMITED)
            yuv = core.std.SetFrameProps(yuv, _ChromaLocation=vs.CHROMA_TOP_LEFT)
            as_rgb = core.resize.Bicubic(yuv, format=rgb, range=vs.RANGE_FULL)
            through_rgb = restore(as_rgb, export, window=4, threads=2)
            if depth == 8:
                direct = restore(yuv, export, window=4, threads=2)
            else:
                direct = restore(yuv, export, window=4, threads=2, format=yuv.format)
                through_rgb = core.resize.Bicubic(through_rgb, format=fmt, matrix=vs.MATRIX_BT709,
                                                  range=vs.RANGE_LIMITED, chromaloc=vs.CHROMA_TOP_LEFT)
            a, b = direct.get_frame(1), through_rgb.get_frame(1)
            equal = all(np.array_equal(x, y) for x, y in zip(planes(a), planes(b)))
            checks[depth] = dict(info=info(direct), equal=equal, spread=float(np.std(planes(a)[0])), props=props(a),
                                 input_props=props(yuv.get_frame(1)))
        result.update(checks=checks, restored=restored())
    elif case == "errors":
        clip = clip_of(data)
        bad = {
            "unknown option": lambda: restore(clip, export, windw=4),
            "window type": lambda: restore(clip, export, window="4"),
            "flag type": lambda: restore(clip, export, fp16=1),
            "tile type": lambda: restore(clip, export, tile="48"),
            "cache size": lambda: restore(clip, export, cache_windows=0),
            "sigma range": lambda: restore(clip, export, sigma=300),
            "not a clip": lambda: restore(data, export),
            "gray clip": lambda: restore(core.std.BlankClip(format=vs.GRAY8), export),
            "half floats": lambda: restore(core.std.BlankClip(format=vs.RGBH), export),
            "variable format": lambda: restore(core.std.BlankClip(varformat=True), export),
            "variable size": lambda: restore(core.std.BlankClip(varsize=True), export),
            "bad format": lambda: restore(clip, export, format=vs.GRAY16),
            "yuv format of rgb": lambda: restore(clip, export, format=vs.YUV420P8),
            "sigma for sr": lambda: restore(clip, export, sigma=20),
            "another task": lambda: restore(clip, export, task="denoise"),
            "another tile": lambda: restore(clip, export, tile=64),
            "bad window": lambda: restore(clip, export, window=3),
            "missing model": lambda: restore(clip, export + "-missing"),
            "bad memory": lambda: restore(clip, export, memory="lots"),
            "memory too small": lambda: restore(clip, "sr", random_weights=True, memory=2 ** 20),
        }
        errors = {}
        for name, call in bad.items():
            try:
                call()
                errors[name] = None
            except vs.Error as error:
                errors[name] = str(error)
        result.update(errors=errors, restored=restored())
    elif case == "colour":
        clip = clip_of(data[:4])         # one window
        yuv = core.resize.Bicubic(clip, format=vs.YUV420P8, matrix=vs.MATRIX_ST170_M, range=vs.RANGE_LIMITED)
        outputs, frames = {}, {}
        # 64x48 untagged: rvrt-run's guess is BT.601 (smpte170m); without _Range, limited. A _Matrix of RGB on a
        # YUV frame says nothing about it either. "tagged" comes last: the others are compared with it.
        for name, untagged in (("no matrix", core.std.RemoveFrameProps(yuv, ["_Matrix", "_Range"])),
                               ("unspecified", core.std.SetFrameProps(yuv, _Matrix=vs.MATRIX_UNSPECIFIED)),
                               ("rgb matrix", core.std.SetFrameProps(yuv, _Matrix=vs.MATRIX_RGB)),
                               ("tagged", yuv)):
            messages.clear()
            out = restore(untagged, export, window=4, threads=2, format=vs.YUV420P8, scene_cuts="off")
            frames[name] = [planes(frame) for frame in out.frames()]
            outputs[name] = dict(matrix=props(out.get_frame(0))["_Matrix"], spread=float(np.std(frames[name][0][0])),
                                 notes=[message for message in messages if "untagged" in message])
        for name in outputs:
            outputs[name]["equal"] = all(np.array_equal(x, y) for a, b in zip(frames[name], frames["tagged"])
                                         for x, y in zip(a, b))
        # RGB with a stale YUV _Matrix (as ShufflePlanes or copied props leave) is read as the RGB it is.
        stale = core.std.SetFrameProps(clip, _Matrix=vs.MATRIX_BT709)
        clean = restore(clip, export, window=4, threads=2, scene_cuts="off")
        read = restore(stale, export, window=4, threads=2, scene_cuts="off")
        result.update(outputs=outputs, stale_rgb_equal=all(
            all(np.array_equal(x, y) for x, y in zip(planes(clean.get_frame(n)), planes(read.get_frame(n))))
            for n in range(clip.num_frames)), stale_rgb_props=props(read.get_frame(0)))
    elif case == "openvino":
        # The registry's OpenVINO on an entry, as RGB48 for rvrt-run's 16-bit PNGs (given no cut, as in "frames").
        clip = restore(clip_of(data), export, runtime="openvino", window=4, threads=2, format=vs.RGB48,
                       scene_cuts="off")
        np.savez(output + ".npz", restored=np.array([planes(frame) for frame in clip.frames()]))
        result["tiling"] = [message for message in messages if "tiling:" in message]
    elif case == "video":
        # The README's script on an untagged H.264 file, as RGB24 to compare with rvrt-run's PNGs, and the
        # RGB both read from the same YUV (the filter's zimg conversion with the matrix it guesses).
        clip = core.bs.VideoSource(source)
        rgb24 = restore(clip, export, window=4, threads=2, format=vs.RGB24)
        read = core.resize.Bicubic(core.std.SetFrameProps(clip, _Matrix=vs.MATRIX_ST170_M), format=vs.RGB24,
                                   range=vs.RANGE_FULL)
        np.savez(output + ".npz", restored=np.array([planes(frame) for frame in rgb24.frames()]),
                 read=np.array([planes(frame) for frame in read.frames()]))
        result.update(input_props=props(clip.get_frame(0)), output_props=props(rgb24.get_frame(0)),
                      notes=[message for message in messages if "untagged" in message])
    with open(output + ".json", "w") as out:
        json.dump(result, out)
''')


@pytest.mark.parametrize("frames, window, overlap", [(8, 4, 2), (11, 6, 2), (25, 8, 5), (7, 0, 2)])
def test_one_frame_blended_from_its_windows_equals_the_streamed_blend(frames, window, overlap):
    """What the filter does per request (covering_windows, blend_frame) against what rvrt-run streams
    (blend_windows), also where the last window, flush with the end, makes a frame's third window."""
    spans = window_spans(frames, Tiling(window=window, window_overlap=overlap))
    rng = np.random.default_rng(frames)
    windows = [rng.standard_normal((1, stop - start, 3, 4, 5)).astype(np.float32) for start, stop in spans]
    streamed = list(blend_windows(spans, windows, frames))
    for index in range(frames):
        covering = covering_windows(spans, index)
        assert list(covering) == [k for k, (start, stop) in enumerate(spans) if start <= index < stop]
        single = blend_frame([windows[k][:, index - spans[k][0]] for k in covering])
        assert single.dtype == np.float32 and np.array_equal(single, streamed[index])


@pytest.fixture(scope="module")
def lr_frames(tmp_path_factory):
    """(frames.npy, PNG folder of the same frames): FRAMES of WIDTHxHEIGHT, a pan over a photograph."""
    base = tmp_path_factory.mktemp("lr")
    frames = moving_photo_frames(FRAMES, HEIGHT, WIDTH, image="coffee", seed=5)
    np.save(base / "frames.npy", frames)
    folder = base / "png"
    folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:06d}.png")
    return base / "frames.npy", folder


def harness(vs_env, case, export, source, tmp_path):
    venv, env = vs_env
    script = tmp_path / "harness.py"
    script.write_text(HARNESS)
    checked(run([venv / "bin" / "python", script, case, export, source, tmp_path / case], env, cwd=tmp_path,
                timeout=900))
    result = json.loads((tmp_path / f"{case}.json").read_text())
    arrays = np.load(tmp_path / f"{case}.npz") if (tmp_path / f"{case}.npz").exists() else None
    return result, arrays


@pytest.fixture(scope="module")
def frames_case(vs_env, tiny_export, lr_frames, tmp_path_factory):
    return harness(vs_env, "frames", tiny_export("sr")[2], lr_frames[0], tmp_path_factory.mktemp("frames"))


@pytest.fixture(scope="module")
def rvrt_run_frames(tiny_export, lr_frames, tmp_path_factory):
    """rvrt-run's 8-bit frames of the PNG folder, and the float32 frames its driver computes (the same
    windows, tiles and blending, in this process)."""
    export = tiny_export("sr")[2]
    out = tmp_path_factory.mktemp("rvrt-run") / "out"
    done = CliRunner().invoke(run_cli, [str(export), str(lr_frames[1]), "-o", str(out), "--quiet", *WINDOW])
    assert done.exit_code == 0, done.output
    png = np.stack([np.asarray(Image.open(path)) for path in sorted(out.glob("*.png"))])
    backend = load_backend(export, threads=2)
    tiling = resolve_tiling(backend, window=4, window_overlap=2)
    frames = np.load(lr_frames[0])
    to_array = frame_to_array(None)
    with backend.open() as opened:
        floats = [frame[0] for frame in iter_restored(
            opened.restore, lambda start, stop: np.stack([to_array(f) for f in frames[start:stop]])[None],
            FRAMES, backend.config.upscale, tiling, backend.config.min_tile)]
    return png, np.stack(floats)


def test_frames_equal_rvrt_runs_bit_for_bit(frames_case, rvrt_run_frames):
    result, arrays = frames_case
    png, floats = rvrt_run_frames
    assert result["info"] == dict(format="RGBS", width=4 * WIDTH, height=4 * HEIGHT, num_frames=FRAMES,
                                  fps=[24000, 1001])
    sequential = arrays["sequential"]
    assert sequential.dtype == np.float32 and sequential.shape == floats.shape == (FRAMES, 3, 4 * HEIGHT, 4 * WIDTH)
    assert np.array_equal(sequential, floats)                   # float32, bit for bit
    assert np.array_equal(np.stack([to_uint8(frame) for frame in sequential]), png)
    assert png.std() > 1
    assert not result["torch_loaded"]                           # the serving install (and OpenVINO): no PyTorch


def test_random_access_gives_the_sequential_frames(frames_case, rvrt_run_frames):
    """Frames asked for out of order (format=vs.RGB24) equal the sequential ones, quantised as rvrt-run's PNGs."""
    result, arrays = frames_case
    assert result["seeking_info"]["format"] == "RGB24"
    seeking = arrays["seeking"].transpose(0, 2, 3, 1)
    assert np.array_equal(seeking, rvrt_run_frames[0])


def restored_windows(messages):
    """(window, cached windows after it) of each restoration the filter logged, in order."""
    return [(int(message.split()[3]), message.rsplit(" ", 1)[1]) for message in messages]


def test_the_window_cache_is_bounded_and_playback_restores_each_window_once(frames_case):
    result, _ = frames_case
    sequential = restored_windows(result["sequential_restored"])
    assert [window for window, _ in sequential] == [0, 1, 2]
    # Window 0 stays while a request in flight (frame 3) still needs it, however late its turn comes.
    assert [cached for _, cached in sequential] in (["0", "0,1", "1,2"], ["0", "0,1", "0,1,2"])
    assert result["held_for_frame_3"] == [0, 1, 2] and result["after_frame_3"] == [1, 2]
    assert result["pinned_for_good"] == [0, 4, 5]
    # Seeking 7 6 0 1 3 2 5 4 with two windows kept: window 2 is dropped for 0 and 1 and restored again for 5.
    assert restored_windows(result["seeking_restored"]) == [(2, "2"), (0, "2,0"), (1, "0,1"), (2, "1,2")]
    assert result["sequential_restored"][0].startswith("rvrt restore: window 0 (frames 0-3) restored in ")


def test_frame_properties_frame_rate_and_length_are_kept(frames_case):
    result, _ = frames_case
    expected = {**result["input_props"], "_Matrix": 0, "_Range": 1}
    assert result["output_props"] == expected
    assert expected["_SceneChangePrev"] == 1 and expected["_SceneChangeNext"] == 0
    assert expected["_DurationNum"] == 1005 and expected["_SARNum"] == 4 and expected["Custom"] == "kept"
    assert expected["_Primaries"] == 1 and expected["_Transfer"] == 1 and expected["_FieldBased"] == 0


def test_yuv_8_and_10_bit_inputs_are_read_with_their_own_matrix_and_range(vs_env, tiny_export, lr_frames, tmp_path):
    frames = np.load(lr_frames[0])[:4, :, :48]
    np.save(tmp_path / "small.npy", frames)
    result, _ = harness(vs_env, "yuv", tiny_export("sr")[2], tmp_path / "small.npy", tmp_path)
    eight, ten = result["checks"]["8"], result["checks"]["10"]
    assert eight["info"] == dict(format="RGBS", width=192, height=192, num_frames=4, fps=[24000, 1001])
    assert ten["info"] == dict(format="YUV420P10", width=192, height=192, num_frames=4, fps=[24000, 1001])
    assert eight["equal"] and ten["equal"] and eight["spread"] > 0.01 and ten["spread"] > 10
    assert eight["props"]["_Matrix"] == 0 and eight["props"]["_Range"] == 1 and "_ChromaLocation" not in eight["props"]
    for name in ("_Matrix", "_Range", "_ChromaLocation", "_Primaries", "_Transfer", "_SARNum", "_DurationNum"):
        assert ten["props"][name] == ten["input_props"][name], name
    assert ten["props"]["_Range"] == 0 and ten["props"]["_Matrix"] == 1       # limited, BT.709


def test_bad_arguments_fail_in_one_line_naming_the_argument_before_any_frame(vs_env, tiny_export, lr_frames,
                                                                            tmp_path):
    result, _ = harness(vs_env, "errors", tiny_export("sr")[2], lr_frames[0], tmp_path)
    errors = result["errors"]
    expected = {
        "unknown option": "unknown option 'windw' (did you mean 'window'?)",
        "window type": "window='4': expected an integer",
        "flag type": "fp16=1: expected True or False",
        "tile type": "tile='48': expected an int",
        "cache size": "cache_windows=0: expected at least 1",
        "sigma range": "sigma=300: expected a noise level from 0 to 255",
        "not a clip": "clip: expected a video clip",
        "gray clip": "clip is Gray8: expected an RGB or YUV format",
        "half floats": "clip is RGBH: expected 8-16 bit integer or 32-bit float",
        "variable format": "clip has a variable format",
        "variable size": "clip has a variable frame size",
        "bad format": "format=Gray16: expected an RGB or YUV format",
        "yuv format of rgb": "format=YUV420P8 for an RGB clip",
        "sigma for sr": "--sigma only applies to denoising",
        "another task": "was exported for task 'sr'",
        "another tile": "exported for 48 px tiles, not 64",
        "bad window": "temporal window must be 0 (whole video) or a positive multiple of the clip size 2, got 3",
        "missing model": "onnx-missing' does not exist",
        "bad memory": "memory='lots': expected a size with its unit, e.g. 1.5G",
        "memory too small": "memory=1M is too little for task 'sr' at 64x48",
    }
    assert set(errors) == set(expected)
    for name, part in expected.items():
        assert errors[name] is not None, f"{name}: no error"
        assert part in errors[name], f"{name}: {errors[name]}"
        assert errors[name].startswith("rvrt restore: ") and "\n" not in errors[name], errors[name]
    assert result["restored"] == []


def test_untagged_yuv_gets_rvrt_runs_guess_and_rgb_ignores_a_stale_matrix(vs_env, tiny_export, lr_frames, tmp_path):
    result, _ = harness(vs_env, "colour", tiny_export("sr")[2], lr_frames[0], tmp_path)
    outputs = result["outputs"]
    for name in ("no matrix", "unspecified", "rgb matrix"):
        assert outputs[name]["equal"], name                         # read (and written) as BT.601, limited
        assert outputs[name]["matrix"] == 6, name                   # the output says which matrix was used
        assert len(outputs[name]["notes"]) == 1, (name, outputs[name]["notes"])   # once, not once a frame
        assert " is untagged 64x48 YUV420P8 (no _Matrix)" in outputs[name]["notes"][0]
        assert "read as matrix smpte170m" in outputs[name]["notes"][0]
    assert outputs["no matrix"]["notes"][0].endswith(" read as matrix smpte170m, limited range, rvrt-run's guess "
                                                     "by size; if that is wrong, set it with "
                                                     "core.std.SetFrameProps(clip, _Matrix=...)")
    assert ", limited range" not in outputs["unspecified"]["notes"][0]      # its _Range says limited
    assert outputs["tagged"]["notes"] == [] and outputs["tagged"]["spread"] > 10
    assert result["stale_rgb_equal"]
    assert result["stale_rgb_props"]["_Matrix"] == 0 and result["stale_rgb_props"]["_Range"] == 1


def untagged_h264(path, frames):
    """(T, H, W, 3) uint8 as an H.264 file without colour tags, as many encoders leave one (swscale's
    default conversion: BT.601, limited range)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        first = next(container.decode(video=0))
        assert int(first.colorspace) == 2 and int(first.color_range) == 0      # unspecified


def rvrt_run_pngs(model, source, out, *options):
    """rvrt-run's frames of SOURCE as a PNG folder, read back: (T, H, W, 3) uint8, or uint16 with --bit-depth 16."""
    result = CliRunner().invoke(run_cli, [str(model), str(source), "-o", str(out), "--quiet", *options])
    assert result.exit_code == 0, result.output
    return np.stack(list(open_frames(out)))


def test_an_untagged_h264_file_against_rvrt_run(vs_env, tiny_export, lr_frames, tmp_path):
    """The filter's RGB24 output against rvrt-run's PNGs on the same untagged H.264 file: both guess BT.601
    (limited) for it; they differ by how YUV becomes RGB, zimg against swscale, which upsample the 4:2:0
    chroma differently (luma recovered from either RGB agrees). The figures in docs/vapoursynth.md."""
    export = tiny_export("sr")[2]
    video = tmp_path / "lr.mp4"
    untagged_h264(video, np.load(lr_frames[0]))
    result, arrays = harness(vs_env, "video", export, video, tmp_path)
    assert result["input_props"]["_Matrix"] == 2 and "_Range" not in result["input_props"]   # as bestsource reads it
    assert len(result["notes"]) == 1 and "read as matrix smpte170m, limited range" in result["notes"][0]
    assert result["output_props"]["_Matrix"] == 0 and result["output_props"]["_Range"] == 1
    png = rvrt_run_pngs(export, video, tmp_path / "rvrt-run", *WINDOW)
    with av.open(str(video)) as container:
        decoded = np.stack([frame_to_rgb(frame, Colour.of_frame(frame).resolved(frame.format.name, frame.width,
                                                                               frame.height), 8)
                            for frame in container.decode(video=0)]).astype(float)
    read = arrays["read"].transpose(0, 2, 3, 1).astype(float)
    restored = arrays["restored"].transpose(0, 2, 3, 1).astype(float)
    assert read.shape == decoded.shape == (FRAMES, HEIGHT, WIDTH, 3) and restored.shape == png.shape
    read_gap, out_gap = np.abs(read - decoded), np.abs(restored - png)
    # Luma recomputed from each RGB, where neither clipped a channel (clipping moves luma too).
    unclipped = ((read > 0) & (read < 255) & (decoded > 0) & (decoded < 255)).all(-1)
    luma_gap = np.abs((read - decoded) @ np.array([0.299, 0.587, 0.114]))[unclipped]
    print(f"untagged H.264 {WIDTH}x{HEIGHT}: input RGB max {read_gap.max():.0f} mean {read_gap.mean():.3f}; "
          f"unclipped luma max {luma_gap.max():.2f}; output RGB24 max {out_gap.max():.0f} mean {out_gap.mean():.3f} "
          f"(8-bit levels)")
    assert read_gap.max() > 8 and luma_gap.max() < 4      # they differ, and in chroma
    assert out_gap.mean() < 4 and out_gap.max() < 64 and png.std() > 10


def test_openvino_frames_equal_rvrt_runs_bit_for_bit(vs_env, openvino_entry, lr_frames, tmp_path):
    """The filter with runtime="openvino" against rvrt-run --runtime openvino on the first 4 frames (one window),
    both 16-bit: a difference in the network's float32 values shows there sooner than in 8 bits."""
    np.save(tmp_path / "first.npy", np.load(lr_frames[0])[:4])
    result, arrays = harness(vs_env, "openvino", openvino_entry, tmp_path / "first.npy", tmp_path)
    assert len(result["tiling"]) == 1 and result["tiling"][0].endswith("; openvino float32"), result["tiling"]
    png = rvrt_run_pngs(openvino_entry, lr_frames[1], tmp_path / "rvrt-run", "--runtime", "openvino", "--frames", "4",
                        "--bit-depth", "16", *WINDOW)
    restored = arrays["restored"].transpose(0, 2, 3, 1)
    assert restored.dtype == png.dtype == np.uint16 and restored.shape == png.shape == (4, 4 * HEIGHT, 4 * WIDTH, 3)
    assert np.array_equal(restored, png) and png.std() > 256


VPY = textwrap.dedent("""
    import vapoursynth as vs
    from rvrt_engines.vapoursynth import WindowCache, restore

    clip = vs.core.bs.VideoSource({video!r})
    restore(clip, {export!r}, window=4, threads=2, format=clip.format).set_output()
""")


def test_vspipe_restores_a_video_file_end_to_end(vs_env, tiny_export, lr_frames, tmp_path):
    """vspipe -c y4m on the README's script, loading an untagged H.264 file (made with PyAV) with
    core.bs.VideoSource."""
    venv, env = vs_env
    export = tiny_export("sr")[2]
    frames = np.load(lr_frames[0])[:4, :, :48]
    video = tmp_path / "lr.mp4"
    untagged_h264(video, frames)
    script = tmp_path / "restore.vpy"
    script.write_text(VPY.format(video=str(video), export=str(export)))
    out = tmp_path / "out.y4m"
    with open(out, "wb") as sink:
        done = subprocess.run([venv / "bin" / "vspipe", "-c", "y4m", script, "-"], stdout=sink, stderr=subprocess.PIPE,
                              env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    header = out.read_bytes().split(b"\n", 1)[0].split()
    assert header[0] == b"YUV4MPEG2" and {b"W192", b"H192", b"F24:1", b"C420"} <= set(header), header
    with av.open(str(out)) as container:
        luma = np.stack([frame.to_ndarray()[:192] for frame in container.decode(video=0)]).astype(float)
    rgb = rvrt_run_pngs(export, video, tmp_path / "rvrt-run", "--window", "4", "--threads", "2").astype(float)
    assert luma.shape == rgb.shape[:3] == (4, 192, 192)
    # The same network on the same decoded frames, rvrt-run's output taken to BT.601 limited-range luma (the
    # matrix both guess for the untagged file, which the filter's YUV output is made with). zimg and swscale
    # resample chroma differently: luma only.
    reference = 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255
    assert np.abs(luma - reference).mean() < 2 and luma.std() > 10
