"""Shared fixtures: tiny-width models of the three architectures with random weights, random inputs."""

from pathlib import Path

import pytest
import torch

from rvrt import build_model, get_task
from rvrt_engines.backends import load_backend
from rvrt_engines.cache import ArtefactCache, ModelSource
from rvrt_engines.runtimes import OnnxRuntime, OpenVino

torch.set_num_threads(2)

KIND_TASKS = {"sr": "sr", "deblur": "deblur-dvd", "denoise": "denoise"}
# Smallest valid inputs per kind: SR needs >= 40 px, deblur/denoise >= 136 px (SpyNet at 1/4).
KIND_SIZES = {"sr": 48, "deblur": 144, "denoise": 144}


def tiny_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    task = get_task(KIND_TASKS[kind])
    model = build_model(task.id, random_weights=True, config=task.config.tiny())
    # The official init zeroes the offset head; random offsets make alignment non-trivial.
    with torch.no_grad():
        for align in model.deform_align.values():
            align.conv_offset[-1].weight.normal_(0, 0.02)
    return model


@pytest.fixture(scope="session", params=list(KIND_TASKS))
def kind_model(request):
    """(kind, tiny eval model) for each architecture."""
    return request.param, tiny_model(request.param)


def random_clip(kind: str, frames: int, height: int | None = None, width: int | None = None, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    size = KIND_SIZES[kind]
    channels = 4 if kind == "denoise" else 3
    return torch.rand(1, frames, channels, height or size, width or size, generator=gen)


def gda_inputs(batch, clip, channels, height, width, groups, kernel, offset_std=3.0, seed=0, dtype=torch.float32):
    """Random GDA inputs: q (batch*clip, 1, C, H, W), kv (batch, clip, 2C, H, W), offset
    (batch*clip, clip*groups*kh*kw*2, H, W) of std ``offset_std`` px, so that on small images many
    samples fall outside."""
    gen = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    q = torch.randn(batch * clip, 1, channels, height, width, dtype=dtype, generator=gen)
    kv = torch.randn(batch, clip, 2 * channels, height, width, dtype=dtype, generator=gen)
    offset = offset_std * torch.randn(batch * clip, clip * groups * kh * kw * 2, height, width, dtype=dtype,
                                      generator=gen)
    return q, kv, offset


def stage_workers(parent: int) -> list[int]:
    """Pids of the export workers (``rvrt_export.stage_worker``) that process ``parent`` started."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line for line in status.read_text().splitlines() if line.startswith("PPid:"))
            command = (status.parent / "cmdline").read_bytes()
        except (OSError, StopIteration):
            continue
        if int(ppid.split()[1]) == parent and b"rvrt_export.stage_worker" in command:
            pids.append(int(status.parent.name))
    return pids


_EXPORTS = {}
EXPORT_TILES = {"sr": 48, "denoise": 144}


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """kind -> (eager model, checkpoint path, ONNX export dir): exported once per session."""
    from rvrt_export.onnx_export import export_onnx

    def make(kind: str):
        if kind not in _EXPORTS:
            model = tiny_model(kind)
            task = get_task(KIND_TASKS[kind])
            checkpoint = tmp_path_factory.mktemp("ckpt") / "weights.pth"
            torch.save({"params": model.state_dict()}, checkpoint)
            out = tmp_path_factory.mktemp("export") / "onnx"
            export_onnx(model, task, EXPORT_TILES[kind], out, batch=2 if kind == "sr" else 1, checkpoint=checkpoint)
            _EXPORTS[kind] = (model, checkpoint, out)
        return _EXPORTS[kind]

    return make


CACHED_TILE = (48, 64)


class CountingSource(ModelSource):
    """The tiny SR model as a cache source, counting how often a build needed it."""

    def __init__(self, seed: int = 0):
        self.builds = 0

        def build():
            self.builds += 1
            return tiny_model("sr", seed)

        task = get_task("sr")
        super().__init__(task, seed=seed, config=task.config.tiny(), build=build)


@pytest.fixture(scope="session")
def cached_tiny_sr(tmp_path_factory):
    """(cache, entry, source): the tiny SR model exported once through the cache, for 48x64 tiles (batch 1),
    by its first use. The cache, rectangular-tile and serving tests share it: none may change it."""
    cache = ArtefactCache(tmp_path_factory.mktemp("cache"))
    source = CountingSource()
    return cache, OnnxRuntime().artefacts(source, tile=CACHED_TILE, batch=1, cache=cache), source


@pytest.fixture(scope="session")
def openvino_entry(tiny_export, tmp_path_factory):
    """The tiny SR export's OpenVINO float32 entry, made once per session, served as a directory so that Ray
    workers and the VapourSynth venv need no cache of their own (its compiled models serve any number of
    threads). Float32 on any CPU: an entry given without --precision is served in the precision it was made in.
    The cluster and VapourSynth tests share it: none may change it."""
    pytest.importorskip("openvino")
    return OpenVino(precision="float32").entry(tiny_export("sr")[2], ArtefactCache(tmp_path_factory.mktemp("openvino")))


FULL_SIZE_TILE = 40


@pytest.fixture(scope="session")
def full_size_sr(tmp_path_factory):
    """(cache root, description): the official SR architecture with random weights, exported at tile 40 into
    an empty cache by its first use, as ``rvrt-run sr --random-weights --runtime onnxruntime --tile 40``
    makes it. The suite's one full-size export: the cache, serving and float16 tests share it."""
    root = tmp_path_factory.mktemp("full-size-cache")
    return root, load_backend("sr", random_weights=True, runtime="onnxruntime", tile=FULL_SIZE_TILE,
                              cache=ArtefactCache(root))


PLUGIN_NAME = "librvrt_gda_plugin_autoregister.so"


def engine_directory(export_dir, directory):
    """An engine directory as ``rvrt-export trt`` lays it out, made of real files without TensorRT:
    the export's manifest with an engine record, a plan file per stage and a plugin library (bytes
    that stand for the engines and the library; sizes and sha256 recorded as a build records them).
    What can be checked before TensorRT is loaded runs on it; TensorRT itself then refuses it."""
    import json

    from rvrt_engines.manifest import sha256_of, write_manifest

    directory.mkdir()
    manifest = json.loads((export_dir / "manifest.json").read_text())
    for index, (name, stage) in enumerate(manifest["stages"].items()):
        plan = directory / f"{name}.plan"
        plan.write_bytes(bytes([index]) * (1000 + index))
        stage.update(plan=plan.name, plan_bytes=plan.stat().st_size, plan_sha256=sha256_of(plan))
    plugin = directory / PLUGIN_NAME
    plugin.write_bytes(b"\x7fELF a stand-in for the GDA plugin library")
    manifest.update(onnx_dir=str(export_dir), engine={"tensorrt": "10.13.0", "gpu": "NVIDIA L4",
                                                      "compute_capability": "8.9", "precision": "float32",
                                                      "plugin": plugin.name, "plugin_sha256": sha256_of(plugin)})
    write_manifest(directory, manifest)
    return directory
