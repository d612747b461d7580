"""The export cache behind ``rvrt-run TASK --runtime ...``: real tiny exports into a temporary cache."""

import dataclasses
import json
import shutil
import threading
import time

import pytest
import torch

from conftest import random_clip, tiny_model
from rvrt import build_model, get_task
from rvrt_engines.backends import load_backend
from rvrt_engines.cache import SEAL, ArtefactCache, ModelSource, cached_artefacts, default_root
from rvrt_engines.runtimes.pytorch_cuda import CudaUnavailableError
from rvrt_engines.runtimes.tensorrt import tensorrt_unavailable
from rvrt_engines.manifest import ArtifactError, read_manifest

TASK = get_task("sr")
TILE = 48


class CountingSource(ModelSource):
    """The tiny SR model as a cache source, counting how often a build needed it."""

    def __init__(self, seed: int = 0):
        self.builds = 0

        def build():
            self.builds += 1
            return tiny_model("sr", seed)

        super().__init__(TASK, seed=seed, config=TASK.config.tiny(), build=build)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """(cache, entry, source): the tiny SR model exported once through the cache."""
    cache = ArtefactCache(tmp_path_factory.mktemp("cache"))
    source = CountingSource()
    entry = cached_artefacts(source, "onnxruntime", tile=TILE, cache=cache)
    return cache, entry, source


def key_of(source: ModelSource, **changes):
    options = {"tile": TILE, "batch": 1, "precision": "float32", "runtime": "onnxruntime", **changes}
    return source.key(**options)


def copy_of(entry, cache_root):
    """The entry as another cache would hold it (same name, same files)."""
    shutil.copytree(entry, cache_root / entry.name)
    return ArtefactCache(cache_root)


def test_first_use_exports_validated_graphs_and_seals_them(cached):
    cache, entry, source = cached
    assert source.builds == 1 and entry.parent == cache.root
    assert entry.name.startswith(f"sr-tile{TILE}-b1-fp32-onnxruntime-")
    manifest = read_manifest(entry)
    assert manifest["validation"]["passed"] and manifest["tile"] == TILE and manifest["checkpoint"]["seed"] == 0
    sealed = set(json.loads((entry / SEAL).read_text())["files"])
    assert sealed == {p.name for p in entry.iterdir()} - {SEAL} and "manifest.json" in sealed
    assert not [p for p in cache.root.iterdir() if ".partial-" in p.name]


def test_second_run_reuses_the_entry_without_building(cached):
    cache, entry, _ = cached
    inode = entry.stat().st_ino, (entry / "extract.onnx").stat().st_ino
    again = CountingSource()
    assert cached_artefacts(again, "onnxruntime", tile=TILE, cache=cache) == entry
    assert again.builds == 0
    assert (entry.stat().st_ino, (entry / "extract.onnx").stat().st_ino) == inode


def test_cached_export_restores_like_its_eager_model(cached):
    _, entry, source = cached
    clip = random_clip("sr", 2)
    with load_backend(entry).open() as backend:
        assert backend.name == "onnxruntime" and backend.random_weights and backend.directory == entry
        served = backend.restore(clip)
    with torch.no_grad():
        eager = source.model(clip)
    assert (served - eager).abs().max() < 1e-3


class Interrupted(Exception):
    pass


def test_a_damaged_entry_is_never_served_but_built_again(cached, tmp_path):
    _, entry, _ = cached
    cache = copy_of(entry, tmp_path)
    source = CountingSource()
    assert cached_artefacts(source, "onnxruntime", tile=TILE, cache=cache) == tmp_path / entry.name
    graph = tmp_path / entry.name / "forward_1.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])

    def interrupted_build():
        raise Interrupted

    # The build is interrupted: what was damaged is gone and nothing half-made is left.
    with pytest.raises(Interrupted):
        cached_artefacts(ModelSource(TASK, seed=0, config=TASK.config.tiny(), build=interrupted_build),
                         "onnxruntime", tile=TILE, cache=cache)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    assert source.builds == 0


@pytest.mark.parametrize("damage, problem", [
    (lambda e: (e / "forward_1.onnx").write_bytes((e / "forward_1.onnx").read_bytes()[:1000]),
     "forward_1.onnx differs from the file it was built with"),
    (lambda e: (e / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda e: (e / SEAL).unlink(), f"no readable {SEAL} (an interrupted build)"),
    (lambda e: (e / SEAL).write_text('{"key": {"task": "x"'), f"no readable {SEAL} (an interrupted build)"),
    (lambda e: (e / "reconstruct.onnx").write_bytes(b"\0" * (e / "reconstruct.onnx").stat().st_size),
     "reconstruct.onnx differs from the file it was built with"),
])
def test_damaged_entry_is_detected_and_built_again(cached, tmp_path, damage, problem):
    _, entry, _ = cached
    cache = copy_of(entry, tmp_path)
    key = key_of(CountingSource())
    damage(tmp_path / entry.name)
    assert cache.problem(key) == problem and cache.lookup(key) is None
    builds = []
    found = cache.fetch(key, lambda out: builds.append(shutil.copytree(entry, out, dirs_exist_ok=True)))
    assert len(builds) == 1 and cache.problem(key) is None and found == tmp_path / entry.name


def test_leftovers_of_a_killed_build_are_cleared(cached, tmp_path):
    _, entry, _ = cached
    cache = ArtefactCache(tmp_path)
    key = key_of(CountingSource())
    for leftover in (tmp_path / f".{key.name}.partial-x1", tmp_path / f"..{key.name}.partial-x1.partial-y2"):
        leftover.mkdir()
        (leftover / "extract.onnx").write_bytes(b"half")
    unrelated = tmp_path / "mine.txt"
    unrelated.write_text("not the cache's")
    cache.fetch(key, lambda out: shutil.copytree(entry, out, dirs_exist_ok=True))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == sorted([key.name, "mine.txt"])


def test_concurrent_runs_build_an_entry_once(cached, tmp_path):
    _, entry, _ = cached
    cache = ArtefactCache(tmp_path)
    key = key_of(CountingSource())
    builds, found = [], []

    def make(out):
        builds.append(out)
        time.sleep(0.5)
        shutil.copytree(entry, out, dirs_exist_ok=True)

    runs = [threading.Thread(target=lambda: found.append(cache.fetch(key, make))) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert len(builds) == 1 and found == [tmp_path / key.name] * 2


def test_keys_differ_with_everything_the_artefacts_depend_on(tmp_path):
    source = CountingSource()
    base = key_of(source)
    assert key_of(CountingSource()) == base and key_of(CountingSource()).name == base.name
    checkpoints = []
    for content in (b"one", b"two"):
        path = tmp_path / f"{content.decode()}.pth"
        path.write_bytes(content)
        checkpoints.append(ModelSource(TASK, checkpoint=path, config=TASK.config.tiny()))
    variants = [key_of(source, tile=56), key_of(source, batch=2), key_of(source, precision="float16"),
                key_of(CountingSource(seed=1)), key_of(ModelSource(TASK, seed=0)), *map(key_of, checkpoints),
                dataclasses.replace(base, runtime_version="0.0"), dataclasses.replace(base, device="another CPU")]
    names = {base.name, *(key.name for key in variants)}
    assert len(names) == len(variants) + 1
    assert checkpoints[0].weights.startswith("sha256:") and base.weights == "random-seed-0"
    assert source.builds == 0


def test_a_cache_that_cannot_be_written_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ArtifactError, match=f"cannot write the export cache at {blocker / 'cache'} .*RVRT_CACHE"):
        ArtefactCache(blocker / "cache").fetch(key_of(CountingSource()), lambda out: None)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("RVRT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "rvrt-deploy"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".cache" / "rvrt-deploy"
    monkeypatch.setenv("RVRT_CACHE", str(tmp_path / "mine"))
    assert default_root() == tmp_path / "mine" and ArtefactCache().root == tmp_path / "mine"


def test_float16_graphs_are_made_from_the_cached_float32_export(cached, tmp_path):
    _, entry, _ = cached
    cache = copy_of(entry, tmp_path)
    source = CountingSource()
    fp16 = cached_artefacts(source, "onnxruntime", tile=TILE, precision="float16", cache=cache)
    manifest = read_manifest(fp16)
    assert fp16.name.startswith(f"sr-tile{TILE}-b1-fp16-onnxruntime-") and manifest["dtype"] == "float16"
    assert manifest["source"]["dir"] == str((tmp_path / entry.name).resolve()) and source.builds == 1
    assert cached_artefacts(CountingSource(), "onnxruntime", tile=TILE, precision="float16", cache=cache) == fp16
    with load_backend(fp16, fp16=True).open() as backend:
        assert backend.random_weights and backend.restore(random_clip("sr", 2)).shape == (1, 2, 3, 4 * 48, 4 * 48)
    with pytest.raises(ArtifactError, match="holds float32 ONNX graphs, not float16: drop --fp16"):
        load_backend(tmp_path / entry.name, fp16=True)


@pytest.mark.skipif(tensorrt_unavailable() is None, reason="TensorRT and a GPU are here")
def test_tensorrt_without_tensorrt_is_refused_before_any_export(tmp_path):
    from rvrt_engines.runtimes.tensorrt import TensorRTUnavailable

    with pytest.raises(TensorRTUnavailable, match="TensorRT Python bindings not importable|no CUDA GPU"):
        load_backend("sr", random_weights=True, runtime="tensorrt", cache=ArtefactCache(tmp_path))
    assert not list(tmp_path.iterdir())


def test_runtime_choices_with_a_task_or_directory(cached, tmp_path):
    _, entry, _ = cached
    eager = load_backend("sr", random_weights=True, runtime="pytorch")
    assert eager.name == "pytorch" and eager.random_weights and eager.directory is None
    reference = build_model("sr", random_weights=True, seed=0).state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in eager.stages.model.state_dict().items())
    with pytest.raises(ValueError, match="--fp16 with --runtime pytorch needs --device cuda"):
        load_backend("sr", random_weights=True, runtime="pytorch", fp16=True)
    if not torch.cuda.is_available():
        # The machine lacks the GPU: a RuntimeError (exit status 1), not bad input.
        with pytest.raises(CudaUnavailableError, match="no CUDA GPU"):
            load_backend("sr", random_weights=True, runtime="pytorch", fp16=True, device="cuda")
    with pytest.raises(ArtifactError, match="run with --runtime onnxruntime, not tensorrt"):
        load_backend(entry, runtime="tensorrt")
    with pytest.raises(ValueError, match="unknown runtime 'onnx': expected --runtime onnxruntime, tensorrt, pytorch"):
        load_backend("sr", random_weights=True, runtime="onnx")
    with pytest.raises(ValueError, match="--tile 44 is impossible for task 'sr'"):
        load_backend("sr", random_weights=True, runtime="onnxruntime", tile=44, cache=ArtefactCache(tmp_path))
    with pytest.raises(ValueError, match="no checkpoint given for task 'sr': pass --checkpoint .* or --random-weights"):
        load_backend("sr", runtime="onnxruntime", cache=ArtefactCache(tmp_path))
    with pytest.raises(ValueError, match="'sr-tile48' is neither an export or engine directory, a checkpoint"):
        load_backend("sr-tile48")
    assert not list(tmp_path.iterdir())


def test_an_engine_directory_may_carry_the_plan_name(cached, tmp_path):
    _, entry, _ = cached
    named = tmp_path / "sr.plan"
    shutil.copytree(entry, named)
    with load_backend(named).open() as backend:
        assert backend.tile == (TILE, TILE) and backend.directory == named
    with pytest.raises(ArtifactError, match="missing.plan does not exist: pass the engine directory"):
        load_backend(tmp_path / "missing.plan")


@pytest.mark.slow
def test_full_size_task_runs_from_the_cache_on_first_and_later_use(tmp_path, monkeypatch):
    monkeypatch.setenv("RVRT_CACHE", str(tmp_path))
    first = load_backend("sr", random_weights=True, runtime="onnxruntime", tile=40)
    assert first.name == "onnxruntime" and first.random_weights and first.tile == (40, 40)
    entry = first.directory
    made = entry.stat().st_ino
    again = load_backend("sr", random_weights=True, runtime="onnxruntime", tile=40)
    assert entry.parent == tmp_path and again.directory == entry and entry.stat().st_ino == made
    clip = random_clip("sr", 2, 40, 40)
    with first.open() as backend:
        served = backend.restore(clip)
    with torch.no_grad():
        eager = build_model("sr", random_weights=True, seed=0)(clip)
    assert (served - eager).abs().max() < 1e-3
