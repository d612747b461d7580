"""The fused GDA CUDA kernel for PyTorch: the TensorRT plugin's kernel without TensorRT.

``librvrt_gda_cuda.so`` is built from ``plugins/gda/`` (``gda_kernel.cu``, ``gda_math.h`` and the
C entry point ``gda_kernel_entry.cpp``) with CMake and nvcc, on first use, for the GPU in this
machine (or the architectures asked for), and cached by a digest of its sources, the compiler and
the architectures. :func:`guided_deform_attn_cuda` launches it on PyTorch's current stream.

Where it cannot be built or loaded (no CUDA toolkit, no cmake), :class:`PluginBuildError` says
what is missing; ``torch.ops.rvrt.guided_deform_attn`` on CUDA then falls back to the PyTorch
reference with a warning (``rvrt.gda``). Command line: ``python -m rvrt_plugins.gda_cuda --help``.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from rvrt_plugins.build import GDA_SOURCE_DIR, PluginBuildError, _digest, cache_dir, print_built
from rvrt_plugins.gda_cpu import check_shapes

KERNEL_SOURCES = ("CMakeLists.txt", "gda_math.h", "gda_kernel.h", "gda_kernel.cu", "gda_kernel_entry.cpp")
LIBRARY_NAME = "librvrt_gda_cuda.so"
CUDA_ROOTS = (Path("/usr/local/cuda"),)
_ELEMENT_TYPES = {torch.float32: 0, torch.float16: 1}
_ERROR_BUFFER_SIZE = 256
# cudaError_t names meaning the library does not fit the driver or the GPU, not a bad call.
_UNUSABLE_HERE = ("cudaErrorInsufficientDriver", "cudaErrorCallRequiresNewerDriver", "cudaErrorNoKernelImageForDevice",
                  "cudaErrorUnsupportedPtxVersion")

NO_TOOLKIT_HELP = ("GDA on CUDA uses the PyTorch reference until then; to build the fused kernel, install the "
                   "CUDA toolkit (nvcc) or set CUDACXX to nvcc")


def find_nvcc() -> str:
    """$CUDACXX, else nvcc on PATH, in $CUDA_HOME/bin, $CUDA_PATH/bin or /usr/local/cuda/bin."""
    if os.environ.get("CUDACXX"):
        named = os.environ["CUDACXX"]
        found = shutil.which(named)
        if found is None:
            raise PluginBuildError(f"CUDACXX={named} is not an executable CUDA compiler: {NO_TOOLKIT_HELP}.")
        return found
    roots = [Path(os.environ[name]) for name in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(name)]
    for candidate in (shutil.which("nvcc"), *(root / "bin" / "nvcc" for root in [*roots, *CUDA_ROOTS])):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise PluginBuildError("No CUDA compiler: nvcc is not on PATH, in $CUDA_HOME/bin, $CUDA_PATH/bin or "
                           f"{', '.join(str(root / 'bin') for root in CUDA_ROOTS)}. {NO_TOOLKIT_HELP}.")


def device_architecture(device: torch.device | int | None = None) -> str:
    """CMake architecture of a CUDA device, e.g. '90' for compute capability 9.0."""
    if not torch.cuda.is_available():
        raise PluginBuildError("No CUDA GPU: pass the architectures to build for (e.g. '80;90') to compile only.")
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}{minor}"


def _compiler_identity(nvcc: str) -> str:
    result = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
    if result.returncode != 0:
        raise PluginBuildError(f"{nvcc} --version failed: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]


def library_path(architectures: str, source_dir: Path = GDA_SOURCE_DIR, nvcc: str | None = None) -> Path:
    """Where the library of these sources, compiler and architectures is cached (built or not)."""
    nvcc = nvcc or find_nvcc()
    sources = [source_dir / name for name in KERNEL_SOURCES]
    key = _digest(sources, [nvcc, _compiler_identity(nvcc), architectures])
    return cache_dir() / f"librvrt_gda_cuda-{key}.so"


def kernel_library(architectures: str | None = None, source_dir: Path = GDA_SOURCE_DIR) -> Path:
    """Path of librvrt_gda_cuda for ``architectures`` (CMake list such as '80;90'; default
    $RVRT_CUDA_ARCHITECTURES, else the current GPU's), building it first if not cached.

    $RVRT_GDA_CUDA_LIBRARY names a prebuilt library and wins. Raises PluginBuildError naming what
    is missing (nvcc, cmake, a GPU to build for) or the compiler's output."""
    if os.environ.get("RVRT_GDA_CUDA_LIBRARY"):
        prebuilt = Path(os.environ["RVRT_GDA_CUDA_LIBRARY"])
        if not prebuilt.is_file():
            raise PluginBuildError(f"RVRT_GDA_CUDA_LIBRARY={prebuilt} does not exist.")
        return prebuilt
    architectures = architectures or os.environ.get("RVRT_CUDA_ARCHITECTURES") or device_architecture()
    nvcc = find_nvcc()
    cmake = shutil.which("cmake")
    if cmake is None:
        raise PluginBuildError(f"cmake not found on PATH: the GDA CUDA kernel is built with CMake >= 3.18. "
                               f"{NO_TOOLKIT_HELP}.")
    target = library_path(architectures, source_dir, nvcc)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target, then rename: concurrent processes never load a partial file.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        build_dir = Path(scratch) / "build"
        configure = [cmake, "-S", str(source_dir), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                     "-DRVRT_GDA_KERNEL_ONLY=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}",
                     f"-DCMAKE_CUDA_ARCHITECTURES={architectures}"]
        compile_ = [cmake, "--build", str(build_dir), "--target", "rvrt_gda_cuda", "--parallel"]
        for command in (configure, compile_):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise PluginBuildError(f"Building the GDA CUDA kernel failed:\n{' '.join(command)}\n"
                                       f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        os.replace(build_dir / LIBRARY_NAME, target)
    return target


def load_library(path: Path) -> ctypes.CDLL:
    """The library at ``path`` with its entry point's signature declared."""
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:
        raise PluginBuildError(f"Loading the GDA CUDA kernel {path} failed: {error}") from error
    forward = library.rvrt_gda_cuda_forward
    forward.restype = ctypes.c_int32
    forward.argtypes = ([ctypes.c_int32] + [ctypes.c_void_p] * 4 + [ctypes.c_int32] * 10
                        + [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32])
    return library


@functools.lru_cache(maxsize=None)
def _library_for(architecture: str) -> ctypes.CDLL:
    return load_library(kernel_library(architecture))


def check_inputs(q: torch.Tensor, kv: torch.Tensor, offset: torch.Tensor, kernel_h: int, kernel_w: int, heads: int,
                 groups: int, clip: int) -> None:
    """Shapes as :func:`rvrt.gda.guided_deform_attn_reference` takes them (the CPU kernel's
    checks), one float dtype (float32 or float16), all on one CUDA device; raises ValueError
    saying which is wrong."""
    check_shapes(q.shape, kv.shape, offset.shape, kernel_h, kernel_w, heads, groups, clip)
    dtypes = (q.dtype, kv.dtype, offset.dtype)
    if len(set(dtypes)) != 1 or q.dtype not in _ELEMENT_TYPES:
        raise ValueError(f"GDA CUDA kernel: q, kv and offset must be all float32 or all float16, got "
                         f"{', '.join(str(dtype).removeprefix('torch.') for dtype in dtypes)}")
    devices = (q.device, kv.device, offset.device)
    if len(set(devices)) != 1 or q.device.type != "cuda":
        raise ValueError(f"GDA CUDA kernel: expects CUDA tensors on one device, got q on {q.device}, kv on "
                         f"{kv.device}, offset on {offset.device} (on the CPU use rvrt.gda's reference or "
                         f"rvrt_plugins.gda_cpu)")


def guided_deform_attn_cuda(q: torch.Tensor, kv: torch.Tensor, offset: torch.Tensor, kernel_h: int, kernel_w: int,
                            padding: int, heads: int, groups: int, clip: int) -> torch.Tensor:
    """GDA forward with the fused kernel on q's CUDA device, queued on its current stream.

    q: (B*clip, 1, C, H, W); kv: (B, clip, 2C, H, W); offset: (B*clip, clip*groups*kernel_h*kernel_w*2, H, W)
    as (dy, dx) pairs, all float32 or all float16 -> (B*clip, 1, C, H, W) of the same dtype. The
    head dimension C / heads must be at most 64. Raises ValueError for inputs the kernel cannot
    take and PluginBuildError where the library cannot be built or loaded."""
    check_inputs(q, kv, offset, kernel_h, kernel_w, heads, groups, clip)
    library = _library_for(device_architecture(q.device))
    q, kv, offset = (tensor.detach().contiguous() for tensor in (q, kv, offset))
    out = torch.empty_like(q)
    frames, _, channels, height, width = q.shape
    error = ctypes.create_string_buffer(_ERROR_BUFFER_SIZE)
    with torch.cuda.device(q.device):
        stream = torch.cuda.current_stream(q.device).cuda_stream
        status = library.rvrt_gda_cuda_forward(
            _ELEMENT_TYPES[q.dtype], q.data_ptr(), kv.data_ptr(), offset.data_ptr(), out.data_ptr(), frames, clip,
            channels, height, width, kernel_h, kernel_w, padding, heads, groups, stream, error, _ERROR_BUFFER_SIZE)
    if status != 0:
        raise launch_error(status, error.value.decode())
    return out


def launch_error(status: int, message: str) -> Exception:
    """The exception for a non-zero status of the entry point: ValueError for arguments,
    PluginBuildError where the library cannot run on this machine (its CUDA runtime needs a
    newer driver, or it holds no code for this GPU), so that callers fall back, else RuntimeError."""
    if status < 0:
        return ValueError(f"GDA CUDA kernel: {message}")
    if message.split(":")[0] in _UNUSABLE_HERE:
        return PluginBuildError(f"The GDA CUDA kernel cannot run on this machine ({message}): build it with a CUDA "
                                f"toolkit the driver supports (nvidia-smi shows its CUDA version; set CUDACXX to that "
                                f"toolkit's nvcc) for this GPU's architecture.")
    return RuntimeError(f"GDA CUDA kernel launch failed: {message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rvrt_plugins.gda_cuda", description=__doc__.split("\n")[0])
    parser.add_argument("--cuda-architectures", default=None,
                        help="CMake CUDA architectures, e.g. '80;90' (default: this machine's GPU)")
    args = parser.parse_args(argv)
    return print_built(lambda: kernel_library(args.cuda_architectures))


if __name__ == "__main__":
    sys.exit(main())
