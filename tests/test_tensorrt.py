"""TensorRT build and backend: clean refusals where TensorRT or a GPU is missing (everywhere),
and real engines against eager PyTorch where they exist (marked gpu, skipped with the reason)."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import engine_directory, random_clip
from rvrt import Tiling, restore_tiled
from rvrt_engines.backends import load_backend
from rvrt_engines.cli import main as run_cli
from rvrt_engines.synthetic import write_video
from rvrt_engines.runtimes.tensorrt import TensorRTUnavailable, tensorrt_unavailable
from rvrt_export.cli import main as export_cli
from rvrt_engines.manifest import ArtifactError, read_manifest

REASON = tensorrt_unavailable()
without_tensorrt = pytest.mark.skipif(REASON is None, reason="TensorRT and a GPU are present here")


def on_gpu(test):
    """Marked gpu, and skipped with the reason where TensorRT engines cannot run."""
    skip = pytest.mark.skipif(REASON is not None, reason=f"TensorRT engines cannot run here: {REASON}")
    return pytest.mark.gpu(skip(test))


@without_tensorrt
def test_trt_export_says_what_is_missing_and_writes_nothing(tiny_export, tmp_path):
    _, checkpoint, export_dir = tiny_export("sr")
    for extra in ([], ["--fp16"]):
        result = CliRunner().invoke(export_cli, ["trt", str(export_dir), *extra, "--checkpoint", str(checkpoint),
                                                 "-o", str(tmp_path / "engines")])
        assert result.exit_code == 1
        assert "cannot build TensorRT engines here" in result.output and REASON in result.output
        assert "ONNX Runtime" in result.output
        assert not (tmp_path / "engines").exists() and not list(tmp_path.iterdir())


@without_tensorrt
def test_engine_directory_is_refused_with_the_reason(tiny_export, tmp_path):
    """An intact engine directory passes every check made before TensorRT is loaded; then the
    missing TensorRT (or GPU) is the reason given, with exit status 1: the machine lacks it."""
    _, _, export_dir = tiny_export("sr")
    engines = engine_directory(export_dir, tmp_path / "engines")
    with pytest.raises(TensorRTUnavailable, match="TensorRT Python bindings not importable|no CUDA GPU"):
        with load_backend(engines).open():
            pass
    video = tmp_path / "in.mkv"
    write_video(video, np.zeros((2, 48, 48, 3), np.uint8))
    result = CliRunner().invoke(run_cli, [str(engines), str(video), "-o", str(tmp_path / "out.mp4")])
    assert result.exit_code == 1 and REASON in result.output and not (tmp_path / "out.mp4").exists()
    assert ">= 10.10" in REASON or "no CUDA GPU" in REASON
    with pytest.raises(ArtifactError, match="pass the engine directory"):
        load_backend(tmp_path / "stage.plan")


@pytest.fixture(scope="module", params=["float32", "float16"])
def engines(request, tiny_export, tmp_path_factory):
    from rvrt_export.trt_build import build_engines

    model, _, export_dir = tiny_export("sr")
    out = tmp_path_factory.mktemp("engines") / request.param
    build_engines(model, export_dir, out, fp16=request.param == "float16")
    return model, out


@on_gpu
def test_engines_are_validated_and_described(engines):
    _, out = engines
    manifest = read_manifest(out)
    assert manifest["validation"]["passed"] and manifest["validation"]["backend"] == "tensorrt"
    assert set(manifest["engine"]) >= {"tensorrt", "gpu", "compute_capability", "precision", "plugin", "plugin_sha256"}
    assert all((out / stage["plan"]).stat().st_size == stage["plan_bytes"] and len(stage["plan_sha256"]) == 64
               for stage in manifest["stages"].values())


@on_gpu
def test_engines_serve_the_runner_like_eager(engines):
    model, out = engines
    manifest = read_manifest(out)
    tile = manifest["tile"]
    lq = random_clip("sr", 6, height=tile + 16, width=tile + 8)
    tiling = Tiling(window=4, tile=tile, window_overlap=2, tile_overlap=16, batch=manifest["batch"])
    with torch.no_grad():
        eager = restore_tiled(model, lq, model.config, tiling)
    with load_backend(out).open() as backend:
        served = restore_tiled(backend.restore, lq, backend.config, tiling)
    error = (served.clamp(0, 1) - eager.clamp(0, 1)).abs().max().item()
    assert error < (1e-3 if manifest["dtype"] == "float32" else 2e-2)


@on_gpu
def test_parity_report_measures_engines(engines, tmp_path):
    from rvrt_validate.report import validate

    model, out = engines
    report = validate(model, out, tmp_path / "report", frames=2)
    labels = {c["label"]: c["status"] for c in report["candidates"]}
    precision = read_manifest(out)["dtype"]
    assert labels == {f"onnxruntime {precision}": "pass", f"tensorrt {precision}": "pass"}


class ReusedOutputBuffers:
    """A runner on torch tensors whose outputs live in one buffer per name, overwritten by the next
    call: what Polygraphy's TrtRunner returns (its output allocator keeps the buffers). It runs an
    ONNX Runtime runner (numpy) underneath."""

    def __init__(self, runner):
        self.runner = runner
        self.buffers = {}

    def __enter__(self):
        self.runner.__enter__()
        return self

    def __exit__(self, *exc):
        self.runner.__exit__(*exc)

    def infer(self, feed, **options):
        for name, value in self.runner.infer({n: v.numpy() for n, v in feed.items()}, **options).items():
            value = torch.from_numpy(value)
            self.buffers.setdefault(name, torch.empty_like(value)).copy_(value)
        return dict(self.buffers)


@pytest.mark.parametrize("clone_outputs", [False, True])
def test_outputs_of_buffer_reusing_runners_are_kept(tiny_export, clone_outputs):
    """The driver holds a step's outputs while it runs the same stage on the next clip."""
    from rvrt import run_recurrent
    from rvrt_engines.runtimes.onnxruntime import onnxruntime_stages
    from rvrt_engines.runtimes.runner_stages import RunnerStages

    model, _, export_dir = tiny_export("sr")
    served = onnxruntime_stages(export_dir)
    stages = RunnerStages({name: ReusedOutputBuffers(runner) for name, runner in served.runners.items()},
                          served.stages, served.clip_size, clone_outputs=clone_outputs)
    lq = random_clip("sr", 6, height=48, width=48).expand(2, -1, -1, -1, -1)
    with torch.no_grad():
        eager = model(lq)
    with stages:
        got = run_recurrent(stages, lq)
    error = (got - eager).abs().max().item()
    assert (error < 1e-4) if clone_outputs else (error > 1e-2), error
