"""OpenVINO on a tiny SR export: real OpenVINO sessions in float32 and bfloat16 against eager PyTorch, the
validation that refuses, the entry's compiled graphs imported by every run, and bfloat16's fallback on a CPU
without it."""

import json
import logging
import os
import re
import shutil

import pytest
import torch

from conftest import random_clip
from test_serving import MODULES_AFTER
from rvrt import get_task
from rvrt_engines.backends import load_backend
from rvrt_engines.cache import ArtefactCache
from rvrt_engines.manifest import ArtifactError
from rvrt_engines import precision
from rvrt_engines.runtimes import openvino_build
from rvrt_engines.runtimes.openvino import NO_BF16_ENV, OpenVino, bf16_capable

pytest.importorskip("openvino")

TASK = get_task("sr")


@pytest.fixture(scope="module")
def sr_export(tiny_export):
    model, _, out = tiny_export("sr")
    return model, out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ArtefactCache(tmp_path_factory.mktemp("openvino-cache"))


def restore(record, target, model, lq, **options):
    with record.stages(target, task=TASK, config=model.config, **options) as stages:
        return torch.from_numpy(record.run(stages, lq.numpy()))


def compiled_models(runner):
    """The OpenVINO compiled models of an active stage runner (both parts of a step cut around GDA), compiled
    as its stage's start compiles them."""
    session = runner.session
    parts = [session.before, session.after] if hasattr(session, "before") else [session]
    return [part.compiled_model() for part in parts]


def clip(frames):
    """Two tiles' worth of frames: the SR export computes two tiles a call."""
    return torch.cat([random_clip("sr", frames, seed=1), random_clip("sr", frames, seed=2)])


def ran_as(compiled):
    """(layer type, runtime precision) of every node OpenVINO runs in ``compiled`` (compiled models)."""
    return {(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
            for model in compiled for op in model.get_runtime_model().get_ops()}


def psnr(reference, got):
    peak = max(1.0, reference.abs().max().item())
    return 10 * torch.log10(peak ** 2 / ((got - reference) ** 2).mean()).item()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_frames_come_within_tolerance_of_eager(sr_export, cache, precision):
    if precision == "bfloat16" and not bf16_capable():
        pytest.skip("this CPU has neither AVX512_BF16 nor AMX")
    model, export = sr_export
    record = OpenVino(precision=precision, threads=2)
    entry = record.entry(export, cache)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["validation"]["passed"] and manifest["openvino"]["precision"] == precision
    lq = clip(4)
    with torch.no_grad():
        eager = model(lq)
    restored = restore(record, entry, model, lq)
    frames = [psnr(eager[:, t], restored[:, t]) for t in range(lq.shape[1])]
    if precision == "float32":
        assert (restored - eager).abs().max().item() < 1e-3
    else:
        assert min(frames) >= openvino_build.MIN_PSNR_DB
        # bfloat16 runs: its frames differ from float32's more than float32's reordered sums do.
        assert (restored - eager).abs().max().item() > 1e-4


def test_bfloat16_keeps_the_flow_path_and_the_flow_stage_float32(sr_export, cache):
    if not bf16_capable():
        pytest.skip("this CPU has neither AVX512_BF16 nor AMX")
    model, export = sr_export
    record = OpenVino(precision="bfloat16", threads=2)
    entry = record.entry(export, cache)
    with record.stages(entry, task=TASK, config=model.config) as stages:
        ran = {name: ran_as(compiled_models(runner)) for name, runner in stages.runners.items()}
        before_gda = ran_as([stages.runners["forward_1"].session.before.compiled])
    assert not any(precision == "bf16" for _, precision in ran["flow"])
    # Before GDA, a step computes the offsets from the flows (its convolutions: float32) and projects the
    # features for attention (bfloat16); after GDA its convolutions compute features (bfloat16).
    assert ("Convolution", "f32") in before_gda and ("Convolution", "bf16") not in before_gda
    assert ("FullyConnected", "bf16") in before_gda
    assert ("Convolution", "bf16") in ran["forward_1"] and ("Convolution", "bf16") in ran["extract"]


def test_a_stage_over_tolerance_is_refused_by_name(sr_export, tmp_path, monkeypatch):
    model, export = sr_export
    monkeypatch.setattr(precision, "FLOAT32_TOLERANCE", 0.0)
    record = OpenVino(precision="float32", threads=2)
    entry = record.entry(export, ArtefactCache(tmp_path))
    validation = json.loads((entry / "manifest.json").read_text())["validation"]
    assert not validation["passed"]
    lq = clip(2)
    with pytest.raises(ArtifactError, match=r"refusing OpenVINO float32 on this CPU.*stage 'extract' \(max error "
                                            r".*, tolerance 0\).*--allow-unvalidated"):
        restore(record, entry, model, lq)
    assert restore(record, entry, model, lq, allow_unvalidated=True).shape == (2, 2, 3, 192, 192)


def test_a_run_compiles_nothing_it_imports_the_graphs_the_entry_was_validated_with(sr_export, cache, monkeypatch):
    """Served from the export directory: the entry is found in the user's cache ($RVRT_CACHE) and holds the
    compiled graphs alone (no IR, no compiled-model cache), which each run imports without reading or compiling
    a graph, and without writing to the entry."""
    import openvino

    model, export = sr_export
    monkeypatch.setenv("RVRT_CACHE", str(cache.root))
    record = OpenVino(precision="float32", threads=2)
    entry = record.entry(export, cache)
    files = {path: path.stat().st_mtime_ns for path in entry.rglob("*")}
    assert {path.suffix for path in files} == {".blob", ".json"}

    def refuse(*args, **kwargs):
        raise AssertionError("a run read or compiled a graph")

    monkeypatch.setattr(openvino.Core, "read_model", refuse)
    monkeypatch.setattr(openvino.Core, "compile_model", refuse)
    for _ in range(2):
        with record.stages(export, task=TASK, config=model.config) as stages:
            assert all(compiled_models(runner) for runner in stages.runners.values())
    assert {path: path.stat().st_mtime_ns for path in entry.rglob("*")} == files


def test_an_entry_of_the_earlier_layout_is_refused_naming_its_export(sr_export, cache, tmp_path):
    model, export = sr_export
    record = OpenVino(precision="float32", threads=2)
    earlier = shutil.copytree(record.entry(export, cache), tmp_path / "entry")
    manifest = json.loads((earlier / "manifest.json").read_text())
    del manifest["openvino"]["layout"]
    (earlier / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"an OpenVINO entry of an earlier rvrt-deploy.*serve the export it was "
                                            rf"made from \({re.escape(str(export.resolve()))}\)"):
        restore(record, earlier, model, clip(2))


def test_without_bfloat16_it_runs_float32_saying_so_once(sr_export, cache, monkeypatch, caplog):
    model, export = sr_export
    monkeypatch.setenv(NO_BF16_ENV, "1")
    from rvrt_engines.runtimes import openvino

    openvino._say_no_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="rvrt_engines.runtimes.openvino"):
        assert OpenVino().resolved().precision == "float32"
        record = OpenVino(precision="bfloat16", threads=2)
        entry = record.entry(export, cache)
        assert json.loads((entry / "manifest.json").read_text())["openvino"]["precision"] == "float32"
        assert restore(record, entry, model, clip(2)).shape == (2, 2, 3, 192, 192)
    lines = [r.getMessage() for r in caplog.records if r.name == "rvrt_engines.runtimes.openvino"]
    assert lines == ["this CPU has neither AVX512_BF16 nor AMX: OpenVINO runs float32 instead of bfloat16"]


def test_a_directory_without_precision_runs_in_this_cpus_default_and_an_entry_in_its_own(sr_export, cache,
                                                                                        monkeypatch):
    _, export = sr_export
    assert load_backend(export, runtime="openvino").runtime.precision == OpenVino().resolved().precision
    entry = OpenVino(precision="float32").entry(export, cache)
    assert load_backend(entry, runtime="openvino").runtime.precision == "float32"
    monkeypatch.setenv(NO_BF16_ENV, "1")
    assert load_backend(export, runtime="openvino").runtime.precision == "float32"


def test_the_precision_is_named_from_python_as_on_the_command_line():
    assert OpenVino(precision="bf16") == OpenVino(precision="bfloat16")
    assert OpenVino(precision="f32").precision == "float32"
    with pytest.raises(ValueError, match="--runtime openvino --precision f16: OpenVINO serves bf16, f32"):
        OpenVino(precision="float16")


def test_a_cached_run_imports_neither_onnx_onnxruntime_nor_pytorch(sr_export, cache, tmp_path):
    """rvrt-run on the export directory finds its entry in the cache and serves it without importing onnx
    (0.75 s of start-up: only making an entry needs it), ONNX Runtime (only validating an entry runs it) or
    PyTorch."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    _, export = sr_export
    OpenVino(precision="float32").entry(export, cache)
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)):
        Image.fromarray(frame).save(frames / f"{index:03d}.png")
    watched = ("onnx", "onnxruntime", "torch", "onnxscript")
    done = subprocess.run([sys.executable, "-c", MODULES_AFTER % (watched,), str(export), str(frames), "-o",
                           str(tmp_path / "out"), "--runtime", "openvino", "--precision", "f32", "--threads", "2",
                           "--quiet"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RVRT_CACHE": str(cache.root)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] in (None, 0) and result["loaded"] == [], done.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_verify_checks_an_entrys_compiled_graphs_and_none_may_lead_out_of_it(sr_export, cache, tmp_path):
    """``rvrt-run ENTRY --verify`` checks the compiled graphs an entry's manifest names (the graph of a stage, or
    its two parts around GDA), and a manifest naming one outside the entry is refused like an export's graph."""
    import numpy as np
    from click.testing import CliRunner

    from rvrt_engines.cli import main as run_cli
    from rvrt_engines.manifest import read_manifest
    from rvrt_engines.synthetic import write_video

    _, export = sr_export
    entry = shutil.copytree(OpenVino(precision="float32").entry(export, cache), tmp_path / "entry")
    video = tmp_path / "in.mkv"
    write_video(video, np.zeros((2, 48, 48, 3), np.uint8))
    result = CliRunner().invoke(run_cli, [str(entry), str(video), "-o", str(tmp_path / "out.mkv"), "--verify",
                                          "--quiet"])
    assert result.exit_code == 0, result.output
    stages = read_manifest(entry)["stages"]
    part = next(name for name, stage in stages.items() if "before" in stage)
    (entry / stages[part]["before"]["file"]).unlink()
    result = CliRunner().invoke(run_cli, [str(entry), str(video), "-o", str(tmp_path / "again.mkv"), "--verify"])
    assert result.exit_code == 2 and f"(the compiled part 'before' of stage '{part}') is missing" in result.output
    assert f"serve the export it was made from ({export.resolve()}) with the same --runtime" in result.output
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["stages"]["extract"]["graph"]["file"] = "../elsewhere.blob"
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="the compiled graph of stage 'extract' is '../elsewhere.blob', a path "
                                            "leading out of"):
        read_manifest(entry)
