"""Build or locate the native GDA libraries.

Two libraries come from ``plugins/gda/``:

- the CPU library (``gda_cpu.cpp``): the fast multi-threaded CPU kernel and the CPU twin of the
  plugin kernel's arithmetic, compiled with the host C++ compiler for this CPU (``-march=native``)
  and loaded through ctypes (``rvrt_plugins.gda_cpu``). Built on first use into a cache
  directory, keyed by a digest of its sources, compiler, flags and CPU, so a fresh clone needs
  only a compiler and a library built for another CPU is never loaded.
- the TensorRT plugin (``gda_kernel.cu`` + ``gda_plugin.cpp``): built with CMake, needs the
  CUDA toolkit and TensorRT headers. The exporter and the runners ask for it through
  :func:`plugin_library`.

Command line: ``python -m rvrt_plugins.build --help``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

GDA_SOURCE_DIR = Path(__file__).resolve().parent / "gda"
CPU_SOURCES = ("gda_math.h", "gda_cpu.cpp")
# -march=native: the kernel's vector code uses every vector unit of this CPU (the cache key holds
# cpu_identity(), so a library is never loaded on another CPU); threads are std::thread.
CPU_FLAGS = ("-O3", "-march=native", "-pthread", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Wextra")
PLUGIN_SOURCES = ("CMakeLists.txt", "gda_math.h", "gda_cpu.cpp", "gda_kernel.cu", "gda_kernel.h", "gda_plugin.h",
                  "gda_plugin.cpp", "gda_library_entry.cpp", "gda_autoregister.cpp", "gda_kernel_entry.cpp")
DEFAULT_CUDA_ARCHITECTURES = "75;80;86;89;90"
PLUGIN_LIBRARY_NAME = "librvrt_gda_plugin.so"
AUTOREGISTER_LIBRARY_NAME = "librvrt_gda_plugin_autoregister.so"

TENSORRT_HELP = (
    "The GDA TensorRT plugin needs the TensorRT C++ headers (NvInfer.h) and the CUDA toolkit. "
    "TensorRT's pip wheels ship no headers: install the TensorRT SDK (tar or deb packages from "
    "NVIDIA) and point TENSORRT_ROOT at it (TENSORRT_ROOT/include/NvInfer.h), or set "
    "TENSORRT_INCLUDE_DIR. Without TensorRT, use the ONNX Runtime backend; the CPU twin "
    "(rvrt_plugins.gda_cpu) needs only a C++ compiler.")


class PluginBuildError(RuntimeError):
    """A native library could not be built."""


class TensorRTNotFoundError(PluginBuildError):
    """TensorRT headers are missing, so the plugin cannot be built."""


def cache_dir() -> Path:
    """Where built libraries go: $RVRT_PLUGINS_CACHE, else the user cache directory."""
    if os.environ.get("RVRT_PLUGINS_CACHE"):
        return Path(os.environ["RVRT_PLUGINS_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rvrt-deploy" / "plugins"


def _digest(files: list[Path], settings: list[str]) -> str:
    sha = hashlib.sha256()
    for setting in settings:
        sha.update(setting.encode() + b"\0")
    for path in files:
        sha.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()[:16]


def cpu_identity() -> str:
    """What -march=native compiles for: the machine, and on Linux the CPU model and feature flags."""
    identity = [platform.machine(), platform.processor()]
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    for field in ("vendor_id", "model name", "flags", "Features", "CPU implementer", "CPU part"):
        match = re.search(rf"^{field}\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
        if match:
            identity.append(f"{field}={match.group(1).strip()}")
    return "\n".join(identity)


def host_compiler() -> str:
    """$CXX (which must then exist), else the first of g++, c++, clang++ on PATH."""
    if os.environ.get("CXX"):
        compiler = shutil.which(os.environ["CXX"])
        if compiler is None:
            raise PluginBuildError(f"The C++ compiler CXX={os.environ['CXX']} was not found.")
        return compiler
    for candidate in ("g++", "c++", "clang++"):
        if shutil.which(candidate):
            return shutil.which(candidate)
    raise PluginBuildError("No C++ compiler found (set CXX or install g++): the GDA CPU kernel is built from source.")


def cpu_library_path(compiler: str) -> Path:
    """Where the GDA CPU library built by ``compiler`` for this source version, flag set and CPU is cached."""
    sources = [GDA_SOURCE_DIR / name for name in CPU_SOURCES]
    return cache_dir() / f"librvrt_gda_cpu-{_digest(sources, [compiler, *CPU_FLAGS, cpu_identity()])}.so"


def cpu_library() -> Path:
    """Path of the GDA CPU library (fast kernel and twin), compiling it first if this source
    version, compiler, flag set and CPU have no cached build. Raises PluginBuildError naming why
    it could not be built."""
    compiler = host_compiler()
    target = cpu_library_path(compiler)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Compile beside the target, then rename: concurrent test processes never load a partial file.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        command = [compiler, *CPU_FLAGS, "-o", str(partial), str(GDA_SOURCE_DIR / "gda_cpu.cpp")]
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except OSError as error:
            raise PluginBuildError(f"Running the C++ compiler {compiler} failed: {error}") from error
        if result.returncode != 0:
            raise PluginBuildError(f"Compiling the GDA CPU library failed:\n{' '.join(command)}\n{result.stderr}")
        os.replace(partial, target)
    return target


@dataclass(frozen=True)
class TensorRTLocation:
    include_dir: Path
    library_dir: Path | None
    version: str


def tensorrt_header_version(include_dir: Path) -> str:
    """'major.minor.patch' as NvInferVersion.h states it."""
    text = (include_dir / "NvInferVersion.h").read_text(errors="replace")
    parts = []
    for field in ("MAJOR", "MINOR", "PATCH"):
        match = re.search(rf"#define\s+(?:TRT_{field}_ENTERPRISE|NV_TENSORRT_{field})\s+(\d+)", text)
        parts.append(match.group(1) if match else "?")
    return ".".join(parts)


def _pip_tensorrt_library_dir() -> Path | None:
    """Directory of libnvinfer.so.* from a TensorRT pip wheel (tensorrt_libs, tensorrt_cu1x_libs)."""
    for entry in map(Path, sys.path):
        if not entry.is_dir():
            continue
        for package in sorted(entry.glob("tensorrt*libs")):
            if any(package.glob("libnvinfer.so*")):
                return package
    return None


def find_tensorrt() -> TensorRTLocation | None:
    """TensorRT headers from $TENSORRT_INCLUDE_DIR, $TENSORRT_ROOT/include or the system include
    directories; libraries from $TENSORRT_ROOT/lib, a pip wheel or the system. None without headers."""
    root = Path(os.environ["TENSORRT_ROOT"]) if os.environ.get("TENSORRT_ROOT") else None
    include_candidates = []
    if os.environ.get("TENSORRT_INCLUDE_DIR"):
        include_candidates.append(Path(os.environ["TENSORRT_INCLUDE_DIR"]))
    if root:
        include_candidates.append(root / "include")
    include_candidates += [Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include/aarch64-linux-gnu"),
                           Path("/usr/include")]
    include_dir = next((path for path in include_candidates if (path / "NvInferRuntime.h").exists()), None)
    if include_dir is None:
        return None
    library_candidates = [root / "lib", root / "lib64"] if root else []
    library_candidates += [_pip_tensorrt_library_dir(), Path("/usr/lib/x86_64-linux-gnu"),
                           Path("/usr/lib/aarch64-linux-gnu")]
    library_dir = next((path for path in library_candidates if path and any(path.glob("libnvinfer.so*"))), None)
    return TensorRTLocation(include_dir, library_dir, tensorrt_header_version(include_dir))


def plugin_library(cuda_architectures: str | None = None, autoregister: bool = False) -> Path:
    """Path of the TensorRT plugin library, building it with CMake if needed.

    $RVRT_GDA_PLUGIN names a prebuilt library and wins. ``autoregister`` asks for the variant that
    registers itself when merely loaded (ctypes.CDLL, Polygraphy ``--plugins``); the default
    library is for ``IPluginRegistry.load_library`` and ``trtexec --dynamicPlugins``.
    Raises TensorRTNotFoundError with what to install when TensorRT headers are missing.
    """
    if os.environ.get("RVRT_GDA_PLUGIN") and not autoregister:
        path = Path(os.environ["RVRT_GDA_PLUGIN"])
        if not path.exists():
            raise PluginBuildError(f"RVRT_GDA_PLUGIN={path} does not exist.")
        return path
    tensorrt = find_tensorrt()
    if tensorrt is None:
        raise TensorRTNotFoundError(TENSORRT_HELP)
    cmake = shutil.which("cmake")
    if cmake is None:
        raise PluginBuildError("cmake not found on PATH: the TensorRT plugin is built with CMake >= 3.18.")
    architectures = cuda_architectures or os.environ.get("RVRT_CUDA_ARCHITECTURES") or DEFAULT_CUDA_ARCHITECTURES
    sources = [GDA_SOURCE_DIR / name for name in PLUGIN_SOURCES]
    build_dir = cache_dir() / f"gda-plugin-{_digest(sources, [str(tensorrt.include_dir), architectures])}"
    name = AUTOREGISTER_LIBRARY_NAME if autoregister else PLUGIN_LIBRARY_NAME
    target = build_dir / name
    if target.exists():
        return target
    configure = [cmake, "-S", str(GDA_SOURCE_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_CUDA_ARCHITECTURES={architectures}", f"-DTENSORRT_INCLUDE_DIR={tensorrt.include_dir}"]
    if tensorrt.library_dir:
        configure.append(f"-DTENSORRT_LIBRARY_DIR={tensorrt.library_dir}")
    for command in (configure, [cmake, "--build", str(build_dir), "--parallel"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise PluginBuildError(f"Building the GDA plugin failed:\n{' '.join(command)}\n"
                                   f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    if not target.exists():
        raise PluginBuildError(f"The build finished without {name}; the autoregistering variant needs "
                               f"libnvinfer (TENSORRT_ROOT/lib or a TensorRT pip wheel).")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rvrt_plugins.build", description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true",
                        help="build the CPU library only (fast kernel and twin; needs a C++ compiler)")
    parser.add_argument("--cuda-architectures", default=None,
                        help=f"CMake CUDA architectures for the plugin (default {DEFAULT_CUDA_ARCHITECTURES})")
    parser.add_argument("--autoregister", action="store_true",
                        help="build the variant that registers itself on load (for Polygraphy --plugins)")
    args = parser.parse_args(argv)
    if args.cpu:
        return print_built(cpu_library)
    return print_built(lambda: plugin_library(args.cuda_architectures, autoregister=args.autoregister))


def print_built(build) -> int:
    """For the build commands: print the path ``build()`` returns (status 0) or why it failed (status 1)."""
    try:
        print(build())
    except PluginBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
