"""Export and engine directories are served only as they were made: every path a manifest names
stays inside its directory, a truncated or edited graph is named in one line (sizes always, sha256
with --verify and in rvrt-validate), a swapped plugin library is never loaded, and folders are
made with the umask's permissions. Real exports, real files, rvrt-run as a real command."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from conftest import PLUGIN_NAME, engine_directory
from rvrt_engines.cli import main as run_cli
from rvrt_engines.runtimes.onnxruntime import onnxruntime_stages
from rvrt_engines.runtimes.tensorrt import checked_plugin
from rvrt_engines.synthetic import write_video
from rvrt_export.cli import main as export_cli
from rvrt_engines.manifest import ArtifactError, assembled, read_manifest, write_manifest
from rvrt_validate.cli import main as validate_cli


@pytest.fixture
def export_copy(tiny_export, tmp_path):
    """A copy of the tiny SR export that a test may damage."""
    _, _, export_dir = tiny_export("sr")
    return shutil.copytree(export_dir, tmp_path / "export")


@pytest.fixture
def engines(tiny_export, tmp_path):
    _, _, export_dir = tiny_export("sr")
    return engine_directory(export_dir, tmp_path / "engines")


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "in.mkv"
    write_video(path, np.zeros((2, 48, 48, 3), np.uint8))
    return path


def edit_manifest(directory, change):
    manifest = json.loads((directory / "manifest.json").read_text())
    change(manifest)
    write_manifest(directory, manifest)


def refused(args, expected):
    """rvrt-run ARGS refuses with exit status 2 and one line containing ``expected``."""
    result = CliRunner().invoke(run_cli, [str(arg) for arg in args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.output
    return lines[0]


def refused_by_process(args, expected):
    """The same with rvrt-run as a process: nothing but that line on stderr (no traceback, no
    warning of a library underneath)."""
    done = subprocess.run(["rvrt-run", *map(str, args)], capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], done.stderr
    return lines[0]


def leading_out(how: str, directory: Path, outside: Path) -> str:
    """A manifest entry for ``outside`` as an absolute path, through ``..``, or through a link
    that sits inside ``directory``."""
    if how == "absolute":
        return str(outside)
    if how == "parent":
        return os.path.relpath(outside, directory)
    (directory / "looks-inside").symlink_to(outside)
    return "looks-inside"


@pytest.mark.parametrize("how, expected", [("absolute", "a path leading out of"), ("parent", "a path leading out of"),
                                           ("symlink", "through a symbolic link")])
def test_a_graph_outside_the_export_is_refused(export_copy, video, tmp_path, how, expected):
    outside = tmp_path / "elsewhere" / "extract.onnx"
    outside.parent.mkdir()
    shutil.copy(export_copy / "extract.onnx", outside)    # a good graph: refused for where it is
    name = leading_out(how, export_copy, outside)
    edit_manifest(export_copy, lambda manifest: manifest["stages"]["extract"].update(file=name))
    line = refused([export_copy, video, "-o", tmp_path / "out.mp4"], expected)
    assert "the graph of stage 'extract'" in line and str(export_copy) in line
    assert not (tmp_path / "out.mp4").exists()
    with pytest.raises(ArtifactError, match=expected):
        read_manifest(export_copy)


@pytest.mark.parametrize("how, expected", [("absolute", "a path leading out of"), ("parent", "a path leading out of"),
                                           ("symlink", "through a symbolic link")])
def test_a_plugin_library_outside_the_engine_directory_is_refused(engines, video, tmp_path, how, expected):
    outside = tmp_path / "elsewhere" / PLUGIN_NAME
    outside.parent.mkdir()
    shutil.copy(engines / PLUGIN_NAME, outside)    # the very bytes recorded: refused for where it is
    name = leading_out(how, engines, outside)
    edit_manifest(engines, lambda manifest: manifest["engine"].update(plugin=name))
    line = refused([engines, video, "-o", tmp_path / "out.mp4"], expected)
    assert "the TensorRT plugin library" in line
    assert not (tmp_path / "out.mp4").exists()


def test_links_that_stay_inside_are_served(export_copy):
    (export_copy / "graphs").mkdir()
    (export_copy / "extract.onnx").rename(export_copy / "graphs" / "extract.onnx")
    (export_copy / "extract.onnx").symlink_to(Path("graphs") / "extract.onnx")
    with onnxruntime_stages(export_copy) as stages:
        assert stages.runners["extract"].is_active


def test_a_truncated_graph_is_named_with_both_sizes_in_one_line(export_copy, video, tmp_path):
    graph = export_copy / "forward_1.onnx"
    size = graph.stat().st_size
    with open(graph, "r+b") as stream:
        stream.truncate(size // 2)
    line = refused_by_process([export_copy, video, "-o", tmp_path / "out.mp4"], "export again ('rvrt-export onnx')")
    assert f"{graph} (the graph of stage 'forward_1') is {size // 2} bytes, its manifest records {size}" in line
    assert not (tmp_path / "out.mp4").exists()


def test_float16_conversion_refuses_a_damaged_export_before_any_work(tiny_export, export_copy, tmp_path):
    _, checkpoint, _ = tiny_export("sr")
    graph = export_copy / "flow.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    result = CliRunner().invoke(export_cli, ["fp16", str(export_copy), "--checkpoint", str(checkpoint), "-o",
                                             str(tmp_path / "fp16")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"{graph} (the graph of stage 'flow') differs from the file its manifest records" in lines[0]
    assert not (tmp_path / "fp16").exists()


def test_older_manifests_load_and_a_damaged_graph_is_still_one_line(export_copy, video, tmp_path):
    """A manifest written before sizes and hashes were recorded still serves; a damaged graph in
    such an export is found when its session is made, and named in one line all the same."""
    def without_records(manifest):
        for stage in manifest["stages"].values():
            del stage["bytes"], stage["sha256"]

    edit_manifest(export_copy, without_records)
    with onnxruntime_stages(export_copy) as stages:
        assert all(runner.is_active for runner in stages.runners.values())
    graph = export_copy / "forward_1.onnx"
    with open(graph, "r+b") as stream:
        stream.truncate(graph.stat().st_size // 2)
    line = refused_by_process([export_copy, video, "-o", tmp_path / "out.mp4"], "is not a readable ONNX graph")
    assert str(graph) in line and "export it again" in line
    assert not (tmp_path / "out.mp4").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["export", "in.mkv"]


def test_an_edited_graph_of_the_same_size_is_found_by_verify_and_by_validate(tiny_export, export_copy, video,
                                                                            tmp_path):
    _, checkpoint, _ = tiny_export("sr")
    graph_path = export_copy / "reconstruct.onnx"
    size = graph_path.stat().st_size
    graph = onnx.load(str(graph_path))
    weight = graph.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.05, weight.name))
    onnx.save(graph, str(graph_path))
    assert graph_path.stat().st_size == size
    expected = f"{graph_path} (the graph of stage 'reconstruct') differs from the file its manifest records"
    refused([export_copy, video, "-o", tmp_path / "out.mp4", "--verify"], expected)
    result = CliRunner().invoke(validate_cli, [str(export_copy), "--checkpoint", str(checkpoint), "-o",
                                               str(tmp_path / "report")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and expected in lines[0], result.output
    assert not (tmp_path / "report").exists() and not (tmp_path / "out.mp4").exists()


def test_verify_passes_an_intact_export(export_copy, video, tmp_path):
    result = CliRunner().invoke(run_cli, [str(export_copy), str(video), "-o", str(tmp_path / "out.mkv"), "--verify",
                                          "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.mkv").is_file()


def test_a_swapped_plugin_library_is_refused_before_tensorrt_is_loaded(engines, video, tmp_path):
    manifest = read_manifest(engines)
    assert checked_plugin(manifest, engines) == engines / PLUGIN_NAME
    (engines / PLUGIN_NAME).write_bytes(b"\x7fELF another library under the same name")
    with pytest.raises(ArtifactError, match="is not the plugin library these engines were built with"):
        checked_plugin(manifest, engines)
    line = refused([engines, video, "-o", tmp_path / "out.mp4"], "is not the plugin library")
    assert str(engines / PLUGIN_NAME) in line and "build the engines again ('rvrt-export trt')" in line
    # In a process of its own: refused with neither TensorRT nor Polygraphy imported.
    script = ("import sys\nfrom rvrt_engines.runtimes.tensorrt import tensorrt_stages\ntry:\n"
              "    tensorrt_stages(sys.argv[1])\nexcept Exception as error:\n"
              "    print(type(error).__name__, 'tensorrt' in sys.modules, 'polygraphy' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script, str(engines)], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["ArtifactError", "False", "False"], done.stderr


def test_a_plugin_without_a_recorded_sha256_is_not_loaded(engines, video, tmp_path):
    edit_manifest(engines, lambda manifest: manifest["engine"].pop("plugin_sha256"))
    refused([engines, video, "-o", tmp_path / "out.mp4"], "records no sha256 of the plugin library")


def test_a_truncated_engine_is_named_in_one_line(engines, video, tmp_path):
    plan = engines / "flow.plan"
    size = plan.stat().st_size
    plan.write_bytes(plan.read_bytes()[:10])
    refused([engines, video, "-o", tmp_path / "out.mp4"],
            f"{plan} (the engine of stage 'flow') is 10 bytes, its manifest records {size}")


@pytest.mark.parametrize("umask, folder, file", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_assembled_folders_and_files_take_the_umask(tmp_path, umask, folder, file):
    """Exports, engine sets, reports and cache entries are all assembled this way."""
    previous = os.umask(umask)
    try:
        with assembled(tmp_path / "report") as staging:
            assert staging.stat().st_mode & 0o777 == folder, "while it is written too"
            (staging / "report.md").write_text("# parity\n")
    finally:
        os.umask(previous)
    assert oct((tmp_path / "report").stat().st_mode & 0o777) == oct(folder)
    assert oct((tmp_path / "report" / "report.md").stat().st_mode & 0o777) == oct(file)
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
