"""rvrt-cache list|prune on real cache folders: entries sealed by the cache itself
(ArtefactCache.fetch), their build locks and killed builds' staging folders, official weights,
and things the cache did not write (which must survive every prune)."""

import fcntl
import json
import os
import time

import pytest
from click.testing import CliRunner

from rvrt_engines.cache import ArtefactCache, CacheKey
from rvrt_engines.cache_cli import STALE_LOCK_S, main

DAY = 86400


def key(tile: int, runtime: str = "onnxruntime", precision: str = "float32") -> CacheKey:
    return CacheKey(task="001_RVRT_videosr_bi_REDS_30frames", task_short="sr", architecture="a" * 64,
                    weights="random-seed-0", tile=tile, batch=1, precision=precision, runtime=runtime,
                    runtime_version="1.32.0", device="a CPU")


def add_entry(root, tile: int, megabytes: float, age_days: float, **options):
    """A real entry (sealed by the cache), its seal dated ``age_days`` ago."""
    def make(folder):
        (folder / "manifest.json").write_text("{}")
        (folder / "stage.onnx").write_bytes(b"\0" * int(megabytes * 2 ** 20))

    entry = ArtefactCache(root).fetch(key(tile, **options), make)
    stamp = time.time() - age_days * DAY
    os.utime(entry / "cache.json", (stamp, stamp))
    return entry


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("RVRT_CACHE", str(root))
    return root


def run(*args):
    return CliRunner().invoke(main, list(args))


def names(root):
    return sorted(path.name for path in root.iterdir())


def test_list_says_what_each_entry_is_for(cache):
    old = add_entry(cache, 64, 2, age_days=3)
    new = add_entry(cache, 48, 1, age_days=0.01, runtime="tensorrt", precision="float16")
    weights = cache / "weights"
    weights.mkdir()
    (weights / "001_RVRT_videosr_bi_REDS_30frames.pth").write_bytes(b"w" * 1000)
    (weights / "001_RVRT_videosr_bi_REDS_30frames.json").write_text(json.dumps({"sha256": "f" * 64, "bytes": 1000}))
    (cache / "notes.txt").write_text("mine")
    done = run("list")
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0] == f"cache {cache}: 2 entries, 3M"
    newest, oldest = (next(line for line in lines if entry.name in line) for entry in (new, old))
    assert lines.index(newest) < lines.index(oldest)
    assert newest.split()[:8] == ["1M", "14", "min", "sr", "48", "1", "float16", "tensorrt"]
    assert oldest.split()[:8] == ["2M", "3", "d", "sr", "64", "1", "float32", "onnxruntime"]
    assert "random weights (seed 0)" in oldest
    assert "001_RVRT_videosr_bi_REDS_30frames.pth  sha256 " + "f" * 64 in done.output
    assert "never touched): notes.txt" in done.output and "builds' leftovers: 2 lock files" in done.output


def test_prune_by_age_and_size_keeps_the_newest(cache):
    entries = [add_entry(cache, tile, 1, age_days=age) for tile, age in ((40, 0.1), (48, 1), (56, 2), (64, 10))]
    done = run("prune", "--older-than", "5")
    assert done.exit_code == 0 and entries[3].name in done.output and not entries[3].exists(), done.output
    dry = run("prune", "--max-size", "2.5M", "--dry-run")
    assert "would remove" in dry.output and all(entry.exists() for entry in entries[:3])
    done = run("prune", "--max-size", "2.5M")
    assert done.exit_code == 0, done.output
    assert [entry.exists() for entry in entries[:3]] == [True, True, False]
    assert "2 entries kept (2M)" in done.output


def test_prune_removes_leftovers_no_build_uses_and_nothing_else(cache, tmp_path):
    entry = add_entry(cache, 64, 0.1, age_days=100)
    old = time.time() - 2 * STALE_LOCK_S
    stale, fresh = cache / ".gone-entry.lock", cache / ".new-entry.lock"
    for lock, stamp in ((stale, old), (fresh, time.time())):
        lock.touch()
        os.utime(lock, (stamp, stamp))
    killed = cache / ".gone-entry.partial-0123abcd"
    (killed / "sub").mkdir(parents=True)
    (killed / "sub" / "stage.onnx").write_bytes(b"x" * 100)
    building = cache / ".busy-entry.partial-89abcdef"
    building.mkdir()
    busy_lock = open(cache / ".busy-entry.lock", "w")
    fcntl.flock(busy_lock, fcntl.LOCK_EX)
    held_entry_lock = open(cache / f".{entry.name}.lock", "w")
    fcntl.flock(held_entry_lock, fcntl.LOCK_EX)
    # Not the cache's: a non-empty file named like a lock, a folder without a seal, a link to a
    # sealed entry outside the root.
    (cache / ".mine.lock").write_text("pid 12")
    (cache / "unsealed").mkdir()
    outside = tmp_path / "outside"
    (outside / "entry").mkdir(parents=True)
    (outside / "entry" / "cache.json").write_text(json.dumps({"key": {"task": "sr"}, "files": {}}))
    (cache / "link").symlink_to(outside / "entry")
    os.utime(cache / ".mine.lock", (old, old))
    try:
        done = run("prune", "--older-than", "1")
    finally:
        busy_lock.close()
        held_entry_lock.close()
    assert done.exit_code == 0, done.output
    assert f"kept {entry.name}: a build holds its lock" in done.output
    assert names(cache) == sorted([entry.name, f".{entry.name}.lock", ".new-entry.lock", ".busy-entry.lock",
                                   ".busy-entry.partial-89abcdef", ".mine.lock", "unsealed", "link"])
    assert (outside / "entry" / "cache.json").exists()
    done = run("prune", "--older-than", "1")
    assert not entry.exists() and ".busy-entry.partial-89abcdef" not in names(cache)


def test_bad_options_are_one_line_exit_2(cache):
    for args, expected in ((["prune", "--older-than", "-1"], "expected a number of days"),
                           (["prune", "--max-size", "lots"], "--max-size lots: expected a size")):
        done = run(*args)
        assert done.exit_code == 2 and expected in done.output and len(done.output.strip().splitlines()) == 1
