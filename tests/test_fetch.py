"""rvrt-fetch against a real HTTP server on loopback serving generated official-format
checkpoints (``{'params': state_dict}``) of the tiny architecture: a clean fetch, a transfer
cut off then resumed with a Range request, a truncated file, another task's weights, a 404.
Each failure is one line with the README's exit status and leaves nothing but a resumable
partial (only for a cut transfer)."""

import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_model
from rvrt import CheckpointError, get_task
from rvrt_engines import weights
from rvrt_engines.weights_cli import main

SR = get_task("sr")


def checkpoint_bytes(kind: str) -> bytes:
    buffer = io.BytesIO()
    torch.save({"params": tiny_model(kind).state_dict()}, buffer)
    return buffer.getvalue()


class Release(BaseHTTPRequestHandler):
    """Serves ``files`` (URL path -> bytes) with Range support; the first ``cut`` GETs of a file
    send only ``cut_at`` bytes of what they announce, then drop the connection."""

    files: dict[str, bytes] = {}
    cut = 0
    cut_at = 0
    ranges: list = []

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        requested = self.headers.get("Range")
        Release.ranges.append(requested)
        start = int(requested.removeprefix("bytes=").split("-")[0]) if requested else 0
        self.send_response(206 if requested else 200)
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if Release.cut:
            Release.cut -= 1
            self.wfile.write(body[start:start + self.cut_at])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def sr_file():
    return checkpoint_bytes("sr")


@pytest.fixture
def release(sr_file):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Release)
    Release.files, Release.cut, Release.ranges = {f"/v0.0/{SR.id}.pth": sr_file}, 0, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v0.0"
    server.shutdown()
    server.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache root; the CLI checks downloads against the tiny architecture."""
    root = tmp_path / "cache"
    monkeypatch.setenv("RVRT_CACHE", str(root))
    monkeypatch.delenv(weights.MIRROR_ENV, raising=False)
    monkeypatch.setattr(weights, "architecture", lambda task: task.config.tiny())
    return root


def fetch(*args):
    return CliRunner().invoke(main, [*map(str, args), "--quiet"])


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_fetch_checks_records_and_is_found_as_official(release, cache, sr_file):
    done = fetch("sr", "--mirror", release)
    assert done.exit_code == 0, done.output
    path = cache / "weights" / f"{SR.id}.pth"
    assert path.read_bytes() == sr_file
    record = json.loads((cache / "weights" / f"{SR.id}.json").read_text())
    assert record["sha256"] == hashlib.sha256(sr_file).hexdigest() and record["bytes"] == len(sr_file)
    assert record["url"] == f"{release}/{SR.id}.pth" and record["sha256"] in done.output
    assert files_under(cache) == ["weights", f"weights/{SR.id}.json", f"weights/{SR.id}.pth"]
    assert weights.official_checkpoint("sr") == path
    again = fetch("sr", "--mirror", release)
    assert again.exit_code == 0 and "already fetched" in again.output and len(Release.ranges) == 1


def test_mirror_from_the_environment(release, cache, monkeypatch):
    monkeypatch.setenv(weights.MIRROR_ENV, release)
    assert fetch("sr").exit_code == 0 and Release.ranges == [None]


def test_a_cut_transfer_keeps_its_bytes_and_the_next_run_resumes(release, cache, sr_file):
    Release.cut, Release.cut_at = 1, len(sr_file) // 3
    cut = fetch("sr", "--mirror", release)
    assert cut.exit_code == 1 and len(cut.output.strip().splitlines()) == 1, cut.output
    assert "broke off" in cut.output and "run again to resume" in cut.output and "Traceback" not in cut.output
    partial = cache / "weights" / f".{SR.id}.pth.partial"
    assert files_under(cache) == ["weights", f"weights/.{SR.id}.pth.partial"]
    assert partial.read_bytes() == sr_file[:len(sr_file) // 3]
    with pytest.raises(CheckpointError, match="run 'rvrt-fetch sr'"):
        weights.official_checkpoint("sr")
    resumed = fetch("sr", "--mirror", release)
    assert resumed.exit_code == 0, resumed.output
    assert Release.ranges == [None, f"bytes={len(sr_file) // 3}-"]
    assert (cache / "weights" / f"{SR.id}.pth").read_bytes() == sr_file
    assert files_under(cache) == ["weights", f"weights/{SR.id}.json", f"weights/{SR.id}.pth"]


@pytest.mark.parametrize("served, expected", [
    ("truncated", "not a readable PyTorch weights file"),
    ("deblur", "does not fit task 'sr'"),
    ("missing", "HTTP 404"),
])
def test_bad_files_are_refused_in_one_line_and_leave_nothing(release, cache, sr_file, served, expected):
    name = f"/v0.0/{SR.id}.pth"
    if served == "truncated":     # complete as served (its Content-Length), but cut short at the source
        Release.files[name] = sr_file[:len(sr_file) // 2]
    elif served == "deblur":
        Release.files[name] = checkpoint_bytes("deblur")
    else:
        del Release.files[name]
    done = fetch("sr", "--mirror", release)
    assert done.exit_code == 2, done.output
    assert expected in done.output and len(done.output.strip().splitlines()) == 1 and "Traceback" not in done.output
    assert files_under(cache) == []


def test_bad_input_is_refused_before_any_download(release, cache):
    for args, expected in ((["nosuchtask"], "unknown task 'nosuchtask'"),
                           (["sr", "--mirror", "ftp://example.org/x"], "expected an http:// or https://")):
        done = fetch(*args)
        assert done.exit_code == 2 and expected in done.output and len(done.output.strip().splitlines()) == 1
    assert Release.ranges == [] and files_under(cache) == []


def test_no_server_is_a_network_failure(cache):
    done = fetch("sr", "--mirror", "http://127.0.0.1:9/v0.0")   # the discard port: nothing listens
    assert done.exit_code == 1 and "cannot connect" in done.output and len(done.output.strip().splitlines()) == 1
    assert files_under(cache) == []


def test_official_release_address():
    assert weights.source_url(SR) == f"https://github.com/JingyunLiang/RVRT/releases/download/v0.0/{SR.id}.pth"
    assert weights.source_url(SR, "https://mirror.example/rvrt/") == f"https://mirror.example/rvrt/{SR.id}.pth"
