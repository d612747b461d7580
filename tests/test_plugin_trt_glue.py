"""The TensorRT glue of the GDA plugin, where TensorRT headers exist (no GPU, no TensorRT libraries
needed): it compiles warning-free, the CMake build links a library exporting only the loader
entry points, and the IPluginV3 calls made before any GPU work behave (plugin_interface_check.cpp).

Headers: $TENSORRT_INCLUDE_DIR, $TENSORRT_ROOT/include or the system include directories (see
rvrt_plugins.build.find_tensorrt). CI has none, so these tests skip there; to run them, export the
include/ directory of github.com/NVIDIA/TensorRT somewhere and set TENSORRT_INCLUDE_DIR to it."""

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from rvrt_plugins import build

TENSORRT = build.find_tensorrt()
CUDA_INCLUDE = next((path for path in [Path("/usr/local/cuda/include"), *sorted(Path("/usr/local").glob("cuda-*/include"))]
                     if (path / "cuda_runtime_api.h").exists()), None)

needs_headers = pytest.mark.skipif(
    TENSORRT is None or CUDA_INCLUDE is None or shutil.which("g++") is None,
    reason="needs TensorRT headers (set TENSORRT_INCLUDE_DIR or TENSORRT_ROOT), CUDA headers and g++")


def compile_flags():
    return ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-isystem", str(TENSORRT.include_dir), "-isystem",
            str(CUDA_INCLUDE), "-I", str(build.GDA_SOURCE_DIR)]


@needs_headers
@pytest.mark.parametrize("source", ["gda_plugin.cpp", "gda_library_entry.cpp", "gda_autoregister.cpp"])
def test_glue_compiles_without_warnings(source):
    command = ["g++", *compile_flags(), "-fsyntax-only", str(build.GDA_SOURCE_DIR / source)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"TensorRT {TENSORRT.version}: {' '.join(command)}\n{result.stderr}"


@needs_headers
@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("nvcc") is None, reason="needs cmake and nvcc")
def test_plugin_library_builds_and_passes_interface_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("RVRT_PLUGINS_CACHE", str(tmp_path))
    monkeypatch.delenv("RVRT_GDA_PLUGIN", raising=False)
    library = build.plugin_library(cuda_architectures="80")
    assert library.name == build.PLUGIN_LIBRARY_NAME

    # Loadable without libnvinfer or a GPU, and lists one creator.
    count = ctypes.c_int32(0)
    get_creators = ctypes.CDLL(str(library)).getCreators
    get_creators.restype = ctypes.c_void_p
    assert get_creators(ctypes.byref(count)) and count.value == 1

    checker = tmp_path / "plugin_interface_check"
    command = ["g++", *compile_flags(), str(build.GDA_SOURCE_DIR / "plugin_interface_check.cpp"), "-o", str(checker),
               "-ldl"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([str(checker), str(library)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "OK", result.stdout + result.stderr
    # Failures are reported through the logger (stderr without TensorRT), naming the node.
    assert "rvrt::GuidedDeformAttention createPlugin: missing attribute clip" in result.stderr


def test_missing_tensorrt_is_reported_with_what_to_install(monkeypatch):
    monkeypatch.delenv("RVRT_GDA_PLUGIN", raising=False)
    monkeypatch.setattr(build, "find_tensorrt", lambda: None)
    with pytest.raises(build.TensorRTNotFoundError, match="TENSORRT_ROOT"):
        build.plugin_library()
