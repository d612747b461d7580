"""The export cache behind ``rvrt-run TASK --runtime ...``: real tiny exports into a temporary cache."""

import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CACHED_TILE, FULL_SIZE_TILE, CountingSource, random_clip
from rvrt import build_model, get_task
from rvrt_engines.backends import load_backend
from rvrt_engines.cache import SEAL, ArtefactCache, ModelSource, default_root
from rvrt_engines.runtimes import OnnxRuntime
from rvrt_engines.runtimes.pytorch_cuda import CudaUnavailableError
from rvrt_engines.runtimes.tensorrt import tensorrt_unavailable
from rvrt_engines.manifest import ArtifactError, read_manifest

TASK = get_task("sr")
TILE = CACHED_TILE


@pytest.fixture
def cached(cached_tiny_sr):
    """(cache, entry, source): the tiny SR model exported once through the cache (shared, see conftest)."""
    return cached_tiny_sr


def key_of(source: ModelSource, runtime=OnnxRuntime(), **changes):
    options = {"tile": TILE, "batch": 1, "precision": "float32", **changes}
    return source.key(runtime, **options)


def copy_of(entry, cache_root):
    """The entry as another cache would hold it (same name, same files)."""
    shutil.copytree(entry, cache_root / entry.name)
    return ArtefactCache(cache_root)


def test_first_use_exports_validated_graphs_and_seals_them(cached):
    cache, entry, source = cached
    assert source.builds == 1 and entry.parent == cache.root
    assert entry.name.startswith("sr-tile48x64-b1-fp32-onnxruntime-")
    manifest = read_manifest(entry)
    assert manifest["validation"]["passed"] and manifest["tile"] == list(TILE) and manifest["checkpoint"]["seed"] == 0
    sealed = set(json.loads((entry / SEAL).read_text())["files"])
    assert sealed == {p.name for p in entry.iterdir()} - {SEAL} and "manifest.json" in sealed
    assert not [p for p in cache.root.iterdir() if ".partial-" in p.name]


def test_second_run_reuses_the_entry_without_building(cached):
    cache, entry, _ = cached
    inode = entry.stat().st_ino, (entry / "extract.onnx").stat().st_ino
    again = CountingSource()
    assert OnnxRuntime().artefacts(again, tile=TILE, batch=1, cache=cache) == entry
    assert again.builds == 0
    assert (entry.stat().st_ino, (entry / "extract.onnx").stat().st_ino) == inode


def test_cached_export_restores_like_its_eager_model(cached):
    _, entry, source = cached
    clip = random_clip("sr", 2, *TILE)
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
    assert OnnxRuntime().artefacts(source, tile=TILE, batch=1, cache=cache) == tmp_path / entry.name
    graph = tmp_path / entry.name / "forward_1.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])

    def interrupted_build():
        raise Interrupted

    # The build is interrupted: what was damaged is gone and nothing half-made is left.
    with pytest.raises(Interrupted):
        OnnxRuntime().artefacts(ModelSource(TASK, seed=0, config=TASK.config.tiny(), build=interrupted_build),
                                tile=TILE, batch=1, cache=cache)
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


def test_a_truncated_file_is_found_before_any_file_is_hashed(cached, tmp_path, monkeypatch):
    _, entry, _ = cached
    cache = copy_of(entry, tmp_path)
    last = sorted(path.name for path in entry.iterdir() if path.suffix == ".onnx")[-1]
    (tmp_path / entry.name / last).write_bytes(b"cut")
    hashed = []
    monkeypatch.setattr("rvrt_engines.cache.sha256_of", lambda path: hashed.append(path))
    assert cache.problem(key_of(CountingSource())) == f"{last} differs from the file it was built with"
    assert hashed == []


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


# One of two processes fetching the same key: its build (if it gets to build) logs its start and end, and
# copies the entry only once the other process is seen blocked on the entry's lock in /proc/locks, or seen
# building too (a lock that does not hold): so the two always contend, whatever the timing.
RACE = r"""
import json, os, pickle, shutil, sys, time
from pathlib import Path

from rvrt_engines.cache import ArtefactCache

root, key_file, entry, race = map(Path, sys.argv[1:])
key = pickle.loads(key_file.read_bytes())
log = race / "builds.log"
seen = []


def other_waits_on_the_lock():
    inodes = {f":{p.stat().st_ino} " for p in root.iterdir() if p.name.endswith(".lock")}
    return any("->" in line and any(i in line for i in inodes) for line in open("/proc/locks"))


def make(out):
    with log.open("a") as f:
        f.write(f"start {os.getpid()} {time.time()}\n")
    deadline = time.time() + 60
    while not seen and time.time() < deadline:
        if other_waits_on_the_lock():
            seen.append("the other process waiting on the lock")
        elif log.read_text().count("start") > 1:
            seen.append("the other process building too")
        time.sleep(0.01)
    shutil.copytree(entry, out, dirs_exist_ok=True)
    with log.open("a") as f:
        f.write(f"end {os.getpid()} {time.time()}\n")


(race / f"ready-{os.getpid()}").touch()
while not (race / "go").exists():
    time.sleep(0.005)
called = time.time()
found = ArtefactCache(root).fetch(key, make)
print(json.dumps({"pid": os.getpid(), "called": called, "returned": time.time(), "found": str(found),
                  "saw": seen}))
"""


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="sees a process wait on a lock in Linux's /proc/locks")
def test_concurrent_processes_build_an_entry_once(cached, tmp_path):
    _, entry, _ = cached
    root, race = tmp_path / "cache", tmp_path / "race"
    root.mkdir()
    race.mkdir()
    key = key_of(CountingSource())
    (race / "key.pickle").write_bytes(pickle.dumps(key))
    runs = [subprocess.Popen([sys.executable, "-c", RACE, str(root), str(race / "key.pickle"), str(entry), str(race)],
                             stdout=subprocess.PIPE, text=True) for _ in range(2)]
    # Both are started (imports done) before either fetches.
    deadline = time.monotonic() + 120
    while len(list(race.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    (race / "go").touch()
    outputs = [run.communicate(timeout=180)[0] for run in runs]
    builds = [line.split() for line in (race / "builds.log").read_text().splitlines()]
    # One build: a second one, overlapping it or after it, would log a second start.
    pid = int(builds[0][1])
    assert [(event, int(by)) for event, by, _ in builds] == [("start", pid), ("end", pid)], (builds, outputs)
    assert [run.returncode for run in runs] == [0, 0], outputs
    results = {r["pid"]: r for r in map(json.loads, outputs)}
    builder = results.pop(pid)
    (other,) = results.values()
    assert builder["saw"] == ["the other process waiting on the lock"]
    # The other one asked during the build, waited for it to end and took what it made.
    assert other["called"] < float(builds[1][2]) <= other["returned"] and other["saw"] == []
    assert builder["found"] == other["found"] == str(root / key.name) and ArtefactCache(root).problem(key) is None


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
    fp16 = OnnxRuntime(precision="float16").artefacts(source, tile=TILE, batch=1, cache=cache)
    manifest = read_manifest(fp16)
    assert fp16.name.startswith("sr-tile48x64-b1-fp16-onnxruntime-") and manifest["dtype"] == "float16"
    assert manifest["source"]["dir"] == str((tmp_path / entry.name).resolve()) and source.builds == 1
    assert OnnxRuntime(precision="float16").artefacts(CountingSource(), tile=TILE, batch=1, cache=cache) == fp16
    with load_backend(fp16, fp16=True).open() as backend:
        assert backend.random_weights and backend.restore(random_clip("sr", 2, *TILE)).shape == (1, 2, 3, 4 * 48, 4 * 64)
    with pytest.raises(ArtifactError, match="holds float32 ONNX graphs, not float16: drop --fp16 or --precision"):
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
    with eager.open() as backend:
        assert all(torch.equal(value, reference[name]) for name, value in backend.stages.model.state_dict().items())
    with pytest.raises(ValueError, match="--precision f16 with --runtime pytorch needs --device cuda"):
        load_backend("sr", random_weights=True, runtime="pytorch", fp16=True)
    if not torch.cuda.is_available():
        # The machine lacks the GPU: a RuntimeError (exit status 1), not bad input.
        with pytest.raises(CudaUnavailableError, match="no CUDA GPU"):
            load_backend("sr", random_weights=True, runtime="pytorch", fp16=True, device="cuda")
    with pytest.raises(ArtifactError, match="they run with --runtime onnxruntime or openvino; for --runtime tensorrt, "
                                            "build engines"):
        load_backend(entry, runtime="tensorrt")
    with pytest.raises(ValueError, match="unknown runtime 'onnx': expected --runtime onnxruntime, openvino, tensorrt, pytorch"):
        load_backend("sr", random_weights=True, runtime="onnx")
    with pytest.raises(ValueError, match="--tile 44 is impossible for task 'sr'"):
        load_backend("sr", random_weights=True, runtime="onnxruntime", tile=44, cache=ArtefactCache(tmp_path))
    with pytest.raises(ValueError, match="no checkpoint given for task 'sr': pass --checkpoint .* or --random-weights"):
        load_backend("sr", runtime="onnxruntime", cache=ArtefactCache(tmp_path))
    with pytest.raises(ValueError, match="MODEL 'sr-tile48' does not exist: expected an export or engine directory"):
        load_backend("sr-tile48")
    assert not list(tmp_path.iterdir())


def test_an_engine_directory_may_carry_the_plan_name(cached, tmp_path):
    _, entry, _ = cached
    named = tmp_path / "sr.plan"
    shutil.copytree(entry, named)
    with load_backend(named).open() as backend:
        assert backend.tile == TILE and backend.directory == named
    with pytest.raises(ArtifactError, match="missing.plan does not exist: pass the engine directory"):
        load_backend(tmp_path / "missing.plan")


@pytest.mark.slow
def test_full_size_task_runs_from_the_cache_on_first_and_later_use(full_size_sr):
    root, first = full_size_sr
    assert first.name == "onnxruntime" and first.random_weights and first.tile == (FULL_SIZE_TILE, FULL_SIZE_TILE)
    entry = first.directory
    made = entry.stat().st_ino
    again = load_backend("sr", random_weights=True, runtime="onnxruntime", tile=FULL_SIZE_TILE,
                         cache=ArtefactCache(root))
    assert entry.parent == root and again.directory == entry and entry.stat().st_ino == made
    clip = random_clip("sr", 2, FULL_SIZE_TILE, FULL_SIZE_TILE)
    with first.open() as backend:
        served = backend.restore(clip)
    with torch.no_grad():
        eager = build_model("sr", random_weights=True, seed=0)(clip)
    assert (served - eager).abs().max() < 1e-3
